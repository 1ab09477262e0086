"""Checkpoints: the one place that talks to orbax, and the restore order of a run.

Restore order (`restore_or_initialize` below implements it; train/loop.py calls it):
  1. this run's latest checkpoint in MODEL_DIR (full train state: trainable params, optimizer
     state, RNG, step, data position) -- a corrupt or partial latest one (unreadable data or
     tree metadata) falls back to the previous with a warning and is moved to
     MODEL_DIR/unreadable_checkpoints/, so the resumed run saves that step anew; a readable
     one of another model is an error naming the parameters and both shapes;
  2. else INITIAL_CHECKPOINT_PATH: parameters only; leaves it lacks must be ones the finetuning
     method adds (initialised fresh), anything else missing or of another shape is an error.
     A Hugging Face checkpoint (directory or hub id) is read by `models.hf.load_pretrained`,
     each device's slices straight onto their shardings;
  3. else scratch.

A checkpoint stores only the trainable split of the params plus a reference to the base it was
finetuned from (`meta['base_checkpoint']`), so a LoRA or prompt checkpoint of a large model is
small; `load_params` rebuilds the full tree by following that reference. Writes are atomic
(orbax finalises a step directory by rename), and the MODEL_DIR's fingerprint file
(`files.check_fingerprint`) guards against resuming a different run in the same directory (a
t5x trap, t5x#1067).
"""

import dataclasses
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from ft_scaling import files
from ft_scaling.models.hf import loading as hf_loading
from ft_scaling.models.hf import run_setup
from ft_scaling.train import checkpoint_steps, trainer

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run (named in the message)."""


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """Keep the last `keep_last` checkpoints plus the best one by dev loss."""

    keep_last: int = 2
    keep_best: bool = True
    keep_steps: tuple[int, ...] = ()  # always kept (e.g. pretraining-data axis checkpoints)

    def orbax_policy(self):
        kept = [policies.LatestN(n=self.keep_last)]
        if self.keep_steps:
            kept.append(policies.CustomSteps(steps=list(self.keep_steps)))
        if self.keep_best:
            # Orbax's BestN keeps the n highest metrics unless reverse=True (lower is better).
            kept.append(
                policies.BestN(
                    get_metric_fn=lambda m: m["dev_loss"],
                    reverse=True,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        return policies.AnyPreservationPolicy(kept)


class CheckpointStore:
    """Saves and restores a run's train state and metadata under MODEL_DIR/checkpoints."""

    def __init__(self, model_dir: str, policy: RetentionPolicy = RetentionPolicy()):
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy.orbax_policy(),
            # Without best_fn orbax neither writes a step's metrics nor ranks steps by them:
            # best_step() would be the latest step.
            best_fn=(lambda m: m["dev_loss"]) if policy.keep_best else None,
            best_mode="min",
            enable_async_checkpointing=False,
            create=False,  # made by the first save: a run failing before it leaves no trace
            cleanup_tmp_directories=True,
        )
        self.directory = str(files.path(files.absolute(model_dir)) / "checkpoints")  # or gs://
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, meta: dict, dev_loss: float | None = None) -> None:
        metrics = None if dev_loss is None else {"dev_loss": float(dev_loss)}
        if step in self._manager.all_steps():
            return
        checkpoint_steps.check_room(self.directory, step, state)  # a full disk, by name
        self._remove_unfinished(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, metrics=metrics, force=True)
        self._manager.wait_until_finished()

    def _remove_unfinished(self, step: int) -> None:
        """On gs://, orbax writes a step in place and commits it with a marker object last: a
        kill mid-save leaves the step's objects without it (not a step to orbax). They are
        deleted before the step is saved again, so no stale object mixes into the new one."""
        unfinished = files.path(self.directory) / str(step)
        if not files.is_remote(self.directory) or not unfinished.exists():
            return
        if jax.process_index() == 0:
            log.warning("deleting the unfinished checkpoint %s before saving it anew", unfinished)
            unfinished.rmtree()
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"unfinished checkpoint {step} deleted")

    def restore_latest(self, abstract_state):
        """(state, meta) of the newest readable checkpoint, or None when there is none.

        Unreadable newer steps are set aside once an older one (or none) is chosen; a readable
        step of another model raises CheckpointError.
        """
        unreadable = []
        for step in reversed(self.steps()):
            try:
                restored = self.restore(step, abstract_state)
            except CheckpointError:
                raise
            except Exception as err:  # a partial or corrupt step: fall back to the previous
                log.warning(
                    "checkpoint step %d in %s is unreadable (%s); trying the previous one",
                    step,
                    self.directory,
                    err,
                )
                unreadable.append(step)
                continue
            self._set_aside(unreadable)
            return restored
        self._set_aside(unreadable)
        return None

    def _set_aside(self, steps: list[int]) -> None:
        if steps:
            checkpoint_steps.set_aside(self.directory, steps)
            self._manager.reload()

    def restore(self, step: int, abstract_state=None):
        """(state, meta) of `step`, restored into `abstract_state`'s shapes and shardings.

        Raises:
          CheckpointError: the step is readable but holds another model (params named with
            both shapes); checked on its metadata first, as a failing orbax restore leaves
            its pending reads to print tracebacks from their threads.
          Exception: anything else (a corrupt step; `restore_latest` falls back on it).
        """
        saved = None
        if abstract_state is not None:
            saved = checkpoint_steps.tree_metadata(self.directory, step)
        if saved is not None:
            self._check_matches(step, saved, abstract_state)
        state_args = ocp.args.StandardRestore(abstract_state)
        args = ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(step, args=args)
        except ValueError as err:
            text = str(err).lower()
            if saved is None or ("shape" not in text and "structure" not in text):
                raise  # without readable tree metadata: corrupt, not another model
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not match this model: {err}"
            ) from err
        return restored.state, restored.meta

    def _check_matches(self, step: int, saved: dict, abstract_state) -> None:
        saved_params = saved.get("params") or {}
        differences = checkpoint_steps.param_differences(saved_params, abstract_state["params"])
        if differences:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not match this model: "
                f"{differences}"
            )

    def best_step(self) -> int | None:
        best = self._manager.best_step()
        return None if best is None else int(best)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def close(self) -> None:
        self._manager.close()


def _checkpoint_location(path: str) -> tuple[str, int | None]:
    """A MODEL_DIR (best, else latest step) or a MODEL_DIR/checkpoints/<step> directory."""
    path = files.absolute(path)  # a local path or gs://
    location = files.path(path)
    if location.name.isdigit() and location.parent.name == "checkpoints":
        return str(location.parent.parent), int(location.name)
    if not (location / "checkpoints").is_dir():
        raise CheckpointError(f"no checkpoints under {path} (expected {path}/checkpoints/<step>)")
    return path, None


def load_params(path: str, prefer_best: bool = True) -> tuple[dict, dict]:
    """Full params (host numpy/jax arrays, unsharded) and meta of a checkpoint.

    Args:
      path: a MODEL_DIR or one step directory `MODEL_DIR/checkpoints/<step>`.
      prefer_best: for a MODEL_DIR, use the best checkpoint by dev loss when one is recorded.

    Returns:
      (params, meta); for a finetuned method checkpoint the base checkpoint it refers to is
      loaded first and the trainable leaves are laid over it.
    """
    model_dir, step = _checkpoint_location(path)
    store = CheckpointStore(model_dir)
    try:
        if step is None:
            step = (store.best_step() if prefer_best else None) or store.latest_step()
        if step is None:
            raise CheckpointError(f"no finished checkpoint under {model_dir}")
        state, meta = store.restore(step, _on_this_host(store.directory, step))
    finally:
        store.close()
    params = state["params"]
    if state.get("frozen") is not None:  # a method run trained from scratch keeps its frozen part
        params = overlay(state["frozen"], params)
    if meta.get("base_checkpoint"):
        params = overlay(_base_of(meta["base_checkpoint"]), params)
    return params, meta


def _on_this_host(directory: str, step: int):
    """The saved tree's shapes and dtypes, every array whole on this process's first device;
    None (orbax's saved shardings) when its metadata is unreadable. Restoring into the saved
    shardings fails on another topology: a base saved by one host, read by every host of a
    pod, names devices that are not the other hosts' ("the Array has no addressable shards")."""
    saved = checkpoint_steps.tree_metadata(directory, step)
    if saved is None:
        return None
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    is_array = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local) if is_array(m) else m,
        saved,
        is_leaf=is_array,
    )


def _base_of(path: str) -> dict:
    """Full params of a checkpoint's base: ours, or an imported Hugging Face directory."""
    if run_setup.is_hf_directory(path):
        return hf_loading.load_pretrained(path)[1]
    return load_params(path, prefer_best=True)[0]


def overlay(base: dict, top: dict) -> dict:
    """`base` with every non-None leaf of `top` laid over it (same paths)."""
    flat = traverse_util.flatten_dict(base)
    for path, leaf in traverse_util.flatten_dict(top).items():
        if leaf is not None:
            flat[path] = leaf
    return traverse_util.unflatten_dict(flat)


def params_from_base(model, rng, sequence_length: int, mesh, rules, base: dict, method) -> dict:
    """A run's params from a base checkpoint's: the leaves the base lacks (the method's) drawn
    fresh, as a full init would draw them, for a fraction of its compile (trainer.init_params);
    checked as `initial_params` checks."""
    abstract = trainer.abstract_on_mesh(model, sequence_length, mesh, rules)
    in_base = traverse_util.flatten_dict(base)
    fresh_paths = [p for p in traverse_util.flatten_dict(abstract) if p not in in_base]
    fresh = trainer.init_params(model, rng, sequence_length, mesh, rules, fresh_paths)
    return initial_params(overlay(abstract, fresh), base, method.is_method_param)


def initial_params(fresh: dict, base: dict, is_method_param) -> dict:
    """Fresh params with every base leaf restored; checks shapes and what may stay fresh.

    A leaf of `fresh` that the base has may be a jax.ShapeDtypeStruct on its sharding (only
    its shape, dtype and sharding are read); one the base lacks must be an array.

    Raises:
      CheckpointError naming the first path that is missing from the base without being a
      method parameter, has another shape, or exists only in the base.
    """
    fresh_flat = traverse_util.flatten_dict(fresh)
    base_flat = traverse_util.flatten_dict(base)
    extra = sorted("/".join(p) for p in base_flat if p not in fresh_flat)
    if extra:
        raise CheckpointError(f"initial checkpoint has params this model lacks: {extra[:5]}")
    out = {}
    for path, leaf in fresh_flat.items():
        name = "/".join(path)
        if path not in base_flat:
            if not is_method_param(path):
                raise CheckpointError(f"initial checkpoint lacks param {name}")
            out[path] = leaf
            continue
        if tuple(base_flat[path].shape) != tuple(leaf.shape):
            raise CheckpointError(
                f"initial checkpoint param {name} has shape {tuple(base_flat[path].shape)}, "
                f"the model expects {tuple(leaf.shape)}"
            )
        out[path] = jax.device_put(base_flat[path].astype(leaf.dtype), leaf.sharding)
    return traverse_util.unflatten_dict(out)


# --- The restore order of a run (the module docstring) --------------------------------------


def restore_or_initialize(
    store: CheckpointStore,
    *,
    model,
    method,
    optimizer,
    sequence_length: int,
    seed: int,
    initial_checkpoint_path: str | None,
    mesh,
    rules,
) -> tuple:
    """(train state, frozen params, meta) of a run, following the restore order.

    Args:
      store: this run's checkpoints (order 1).
      model, method: the method-wrapped decoder and its method (mask, `after_restore`).
      optimizer: the run's `optimizers.OptimizerSettings`.
      sequence_length: of the init batch (the sum of the feature lengths).
      seed: params, method init and the step RNG fold 1, 2 and 3 into PRNGKey(seed).
      initial_checkpoint_path: the base checkpoint (order 2), or None (scratch, order 3).
      mesh, rules: where the state lives.

    Returns:
      (state, frozen, meta); meta holds step, data_position, base_checkpoint, best_dev_loss.
    """
    state, frozen, base_path = _initial_state(
        model, method, optimizer, sequence_length, seed, initial_checkpoint_path, mesh, rules
    )
    meta = {"step": 0, "data_position": 0, "base_checkpoint": base_path, "best_dev_loss": None}
    restored = store.restore_latest(_abstract(saved_tree(state, frozen, base_path)))
    if restored is None:
        return state, frozen, meta
    tree, meta = restored
    state = trainer.TrainState(tree["step"], tree["params"], tree["opt_state"], tree["rng"])
    log.info("resumed %s at step %d", store.directory, meta["step"])
    return state, tree.get("frozen", frozen), meta


def _initial_state(model, method, optimizer, sequence_length, seed, base_path, mesh, rules):
    """(state, frozen, absolute base path) from INITIAL_CHECKPOINT_PATH, else from scratch.

    Built even when this run has a checkpoint: the frozen split (which a method checkpoint
    does not store) comes from here, and so does the abstract tree, with its shardings, that
    the checkpoint is restored into.
    """
    rng = jax.random.PRNGKey(seed)
    init_rng = jax.random.fold_in(rng, 1)
    if base_path:
        hf_dir = run_setup.base_directory(base_path)  # None unless a Hugging Face checkpoint
        base = hf_loading.load_pretrained(hf_dir, mesh, rules)[1] if hf_dir else None
        base = _base_params(base_path) if base is None else base
        params = params_from_base(model, init_rng, sequence_length, mesh, rules, base, method)
        base_path = hf_dir or files.absolute(base_path)
    else:
        params = trainer.init_params(model, init_rng, sequence_length, mesh, rules)
    after_restore = getattr(method, "after_restore", None)
    if after_restore is not None:
        params = after_restore(params, jax.random.fold_in(rng, 2))
    mask = method.trainable_mask(params)
    state, frozen = trainer.create_state(params, mask, optimizer, jax.random.fold_in(rng, 3), mesh)
    return state, frozen, base_path or None


def saved_tree(state, frozen, base_path: str | None) -> dict:
    """What a checkpoint holds: the train state, plus frozen params when no base has them."""
    tree = {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "rng": state.rng,
    }
    if base_path is None and jax.tree.leaves(frozen):
        tree["frozen"] = frozen
    return tree


def best_params(store: CheckpointStore, state, frozen, base_path: str | None):
    """Trainable params of the best checkpoint by dev loss (the paper's model selection)."""
    best = store.best_step()
    if best is None or best == store.latest_step():
        return state.params
    tree, _ = store.restore(best, _abstract(saved_tree(state, frozen, base_path)))
    return tree["params"]


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _modified(path: str) -> float | None:
    """When a local checkpoint directory last changed (a new step); None on gs://, where a
    committed step never changes and a base is read only once its run has finished."""
    if files.is_remote(path):
        return None
    checkpoints = os.path.join(path, "checkpoints")
    return os.path.getmtime(checkpoints if os.path.isdir(checkpoints) else path)


_BASE_CACHE: dict = {}
BASE_CACHE_BYTES = 2 << 30


def _base_params(path: str) -> dict:
    """Params of an initial checkpoint, kept on the host for the next run that starts there.

    A study finetunes each base model dozens of times in one process; reading the checkpoint
    once saves a restore per run. Host numpy copies, so a donated train state never aliases
    them. Bases larger than BASE_CACHE_BYTES are read every time.
    """
    key = (files.absolute(path), _modified(path))
    if key in _BASE_CACHE:
        return _BASE_CACHE[key]
    params, _ = load_params(path)
    params = jax.tree.map(np.asarray, params)
    if sum(x.nbytes for x in jax.tree.leaves(params)) <= BASE_CACHE_BYTES:
        if len(_BASE_CACHE) >= 4:  # the pretraining-data axis alternates a few checkpoints
            _BASE_CACHE.pop(next(iter(_BASE_CACHE)))
        _BASE_CACHE[key] = params
    return params
