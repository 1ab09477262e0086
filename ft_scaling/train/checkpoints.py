"""Checkpoints: the one place that talks to orbax.

Restore order of a run (`restore_or_initialize` in train/loop.py follows it):
  1. this run's latest checkpoint in MODEL_DIR (full train state: trainable params, optimizer
     state, RNG, step, data position) -- a corrupt or partial latest one falls back to the
     previous with a warning;
  2. else INITIAL_CHECKPOINT_PATH: parameters only; leaves it lacks must be ones the finetuning
     method adds (initialised fresh), anything else missing or of another shape is an error;
  3. else scratch.

A checkpoint stores only the trainable split of the params plus a reference to the base it was
finetuned from (`meta['base_checkpoint']`), so a LoRA or prompt checkpoint of a large model is
small; `load_params` rebuilds the full tree by following that reference. Writes are atomic
(orbax finalises a step directory by rename), and the MODEL_DIR's fingerprint file guards against
resuming a different run in the same directory (a t5x trap, t5x#1067).
"""

import dataclasses
import json
import logging
import os

import jax
import orbax.checkpoint as ocp
from flax import traverse_util
from orbax.checkpoint import checkpoint_managers as policies

FINGERPRINT_FILE = "run_fingerprint.json"
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


def atomic_write_json(path: str, obj) -> None:
    """Writes JSON through a temp file in the same directory and os.replace (atomic on POSIX):
    a reader or a crash never sees half a file. The one JSON writer of the package."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
    os.replace(tmp, path)


def check_fingerprint(model_dir: str, fingerprint: dict) -> None:
    """Records the run's fingerprint, or refuses a MODEL_DIR that holds a different run."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, FINGERPRINT_FILE)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        differ = sorted(
            k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k)
        )
        if differ:
            details = "; ".join(
                f"{k}: saved {saved.get(k)!r}, now {fingerprint.get(k)!r}" for k in differ
            )
            raise CheckpointError(
                f"MODEL_DIR {model_dir} holds a run with another configuration ({details}). "
                "Use a new MODEL_DIR, or delete this one to start over."
            )
        return
    if jax.process_index() == 0:
        atomic_write_json(path, fingerprint)


class CheckpointStore:
    """Saves and restores a run's train state and metadata under MODEL_DIR/checkpoints."""

    def __init__(self, model_dir: str, policy: RetentionPolicy = RetentionPolicy()):
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy.orbax_policy(),
            enable_async_checkpointing=False,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, meta: dict, dev_loss: float | None = None) -> None:
        metrics = None if dev_loss is None else {"dev_loss": float(dev_loss)}
        if step in self._manager.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, metrics=metrics, force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, abstract_state):
        """(state, meta) of the newest readable checkpoint, or None when there is none."""
        for step in reversed(self.steps()):
            try:
                return self.restore(step, abstract_state)
            except CheckpointError:
                raise
            except Exception as err:  # a partial or corrupt step: fall back to the previous
                log.warning(
                    "checkpoint step %d in %s is unreadable (%s); trying the previous one",
                    step,
                    self.directory,
                    err,
                )
        return None

    def restore(self, step: int, abstract_state=None):
        state_args = ocp.args.StandardRestore(abstract_state)
        args = ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(step, args=args)
        except ValueError as err:
            if "shape" in str(err).lower() or "structure" in str(err).lower():
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} does not match this model: {err}"
                ) from err
            raise
        return restored.state, restored.meta

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
    path = os.path.abspath(path)
    parent, leaf = os.path.split(path)
    if leaf.isdigit() and os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent), int(leaf)
    if not os.path.isdir(os.path.join(path, "checkpoints")):
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
        state, meta = store.restore(step)
    finally:
        store.close()
    params = state["params"]
    if state.get("frozen") is not None:  # a method run trained from scratch keeps its frozen part
        params = overlay(state["frozen"], params)
    if meta.get("base_checkpoint"):
        base_params, _ = load_params(meta["base_checkpoint"], prefer_best=True)
        params = overlay(base_params, params)
    return params, meta


def overlay(base: dict, top: dict) -> dict:
    """`base` with every non-None leaf of `top` laid over it (same paths)."""
    flat = traverse_util.flatten_dict(base)
    for path, leaf in traverse_util.flatten_dict(top).items():
        if leaf is not None:
            flat[path] = leaf
    return traverse_util.unflatten_dict(flat)


def initial_params(fresh: dict, base: dict, is_method_param) -> dict:
    """Fresh params with every base leaf restored; checks shapes and what may stay fresh.

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
