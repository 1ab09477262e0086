"""The training run: set up, restore or initialise, loop, finish. Configured by the run gins.

    setup    mesh + rules, model = method.wrap(Decoder(config)), optimizer, input stream
    restore  this run's latest checkpoint > INITIAL_CHECKPOINT_PATH (params only) > scratch
    loop     train_step; every LOG_EVERY: progress + metrics; every EVAL_EVERY: dev loss/PPL
             (the best checkpoint by dev PPL is kept); every SAVE_EVERY and on SIGTERM: save
    finish   last eval and save, operative gin config and summary.json in MODEL_DIR

Training stops at TRAIN_STEPS (this run's steps, not counting pretraining, unlike t5x) or after
MAX_EPOCHS passes over the train data, whichever comes first.
"""

import dataclasses
import json
import logging
import math
import os
import signal
import time

import jax
import numpy as np

import gin
from ft_scaling.data import subsets
from ft_scaling.methods import base
from ft_scaling.models import configs, decoder
from ft_scaling.train import (
    checkpoints,
    input_pipeline,
    metrics_io,
    optimizers,
    partitioning,
    summary,
    trainer,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


@dataclasses.dataclass
class Run:
    """Everything built in setup; the loop only reads it."""

    model_dir: str
    model: object
    method: base.Method
    mesh: object
    rules: tuple
    spec: input_pipeline.InputSpec
    eval_spec: input_pipeline.InputSpec
    total_steps: int
    schedule: object
    optimizer_settings: tuple
    fingerprint: dict
    initial_checkpoint_path: str | None


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    eval_every: int
    eval_batch_size: int
    save_every: int
    log_every: int
    keep_last: int
    keep_steps: tuple[int, ...]
    num_microbatches: int
    seed: int
    test_split: str | None
    budget_fraction: float = 1.0


@gin.configurable
def train(
    model_dir: str = gin.REQUIRED,
    task: str = gin.REQUIRED,
    feature_lengths: dict = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    learning_rate: float = gin.REQUIRED,
    model_config: configs.ModelConfig | None = None,
    method: base.Method | None = None,
    optimizer_kind: str = "adafactor",
    schedule_kind: str = "cosine",
    warmup_steps: int = 0,
    final_lr_fraction: float = 0.1,
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    max_epochs: float | None = None,
    num_microbatches: int = 1,
    pack: bool = False,
    seed: int = 0,
    finetune_examples: int | None = None,
    initial_checkpoint_path: str | None = None,
    eval_every: int = 100,
    eval_batch_size: int | None = None,
    save_every: int = 500,
    log_every: int = 10,
    keep_checkpoints: int = 2,
    keep_steps: tuple[int, ...] = (),
    test_split: str | None = None,
    eval_examples: int | None = None,
    budget_fraction: float = 1.0,
) -> summary.RunSummary:
    """Trains one model and returns its summary (also written to MODEL_DIR/summary.json).

    Args mirror the run gins' macros (t5x_configs/runs/*.gin): MODEL_DIR, MIXTURE_OR_TASK_NAME,
    TASK_FEATURE_LENGTHS, TRAIN_STEPS, BATCH_SIZE, LEARNING_RATE, METHOD, MAX_EPOCHS,
    INITIAL_CHECKPOINT_PATH, FINETUNE_EXAMPLES (a D_f subset of the train split), SEED, ...
    `budget_fraction` < 1 (early-stopped search) stops after that fraction of the steps, on the
    full run's schedule, evaluates, saves and returns status 'paused'; rerunning the same
    MODEL_DIR with a larger fraction continues from there, as an uninterrupted run would.
    """
    if not 0.0 < budget_fraction <= 1.0:
        raise ValueError(f"train.budget_fraction={budget_fraction} must lie in (0, 1]")
    partitioning.initialize_distributed()
    run = _setup(**locals())
    _write_operative_config(run.model_dir)
    start = time.time()
    settings = LoopSettings(
        eval_every,
        eval_batch_size or batch_size,
        save_every,
        log_every,
        keep_checkpoints,
        tuple(keep_steps),
        num_microbatches,
        seed,
        test_split,
        budget_fraction,
    )
    result = _train_loop(run, settings)
    result = result.replace(
        model_params=configs.param_count(model_config or configs.ModelConfig()),
        wall_time_s=time.time() - start,
    )
    _write_operative_config(run.model_dir)
    if jax.process_index() == 0:
        result.write(run.model_dir)
    return result


def _setup(
    model_dir,
    task,
    feature_lengths,
    train_steps,
    batch_size,
    learning_rate,
    model_config,
    method,
    optimizer_kind,
    schedule_kind,
    warmup_steps,
    final_lr_fraction,
    weight_decay,
    clip_norm,
    max_epochs,
    pack,
    seed,
    finetune_examples,
    initial_checkpoint_path,
    eval_batch_size,
    num_microbatches,
    eval_examples,
    **_,
) -> Run:
    """Builds and validates everything before any step; bad input fails here, by name."""
    model_config = model_config or configs.ModelConfig()
    method = method or base.Method()
    if train_steps <= 0:
        raise ValueError(f"TRAIN_STEPS={train_steps} must be positive")
    if batch_size % num_microbatches:
        raise ValueError(
            f"BATCH_SIZE={batch_size} is not a multiple of num_microbatches={num_microbatches}"
        )
    if initial_checkpoint_path and not os.path.isdir(initial_checkpoint_path):
        raise FileNotFoundError(f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} does not exist")
    input_pipeline.get_task(task)
    train_task = task
    if finetune_examples is not None:
        # D_f: a nested subset fixed by (seed, size); the paper averages runs over 3 seeds.
        train_task = subsets.register_finetune_subset(task, finetune_examples, seed)
    mesh = partitioning.make_mesh()
    rules = partitioning.logical_rules()
    partitioning.check_batch_divides(batch_size, mesh, rules)
    partitioning.check_batch_divides(eval_batch_size or batch_size, mesh, rules)
    method.validate(model_config, feature_lengths, pack)
    spec = input_pipeline.InputSpec(train_task, dict(feature_lengths), batch_size, pack, seed)
    eval_spec = dataclasses.replace(spec, task=task, pack=False)
    if eval_examples is not None:
        eval_spec = dataclasses.replace(eval_spec, max_examples=eval_examples)
    total_steps = train_steps
    if max_epochs is not None:
        epoch_steps = input_pipeline.batches_per_epoch(spec)
        total_steps = min(train_steps, max(1, math.ceil(max_epochs * epoch_steps)))
    schedule = optimizers.schedule(
        learning_rate, total_steps, schedule_kind, warmup_steps, final_lr_fraction
    )
    optimizer_settings = (optimizer_kind, weight_decay, clip_norm)
    fingerprint = {
        "model": dataclasses.asdict(model_config),
        "method": repr(method),
        "task": task,
        "feature_lengths": dict(feature_lengths),
        "batch_size": batch_size,
        "pack": pack,
        "seed": seed,
        "finetune_examples": finetune_examples,
        "learning_rate": learning_rate,
        "optimizer": optimizer_kind,
        "schedule": schedule_kind,
        "warmup_steps": warmup_steps,
        "initial_checkpoint_path": initial_checkpoint_path,
    }
    checkpoints.check_fingerprint(model_dir, json.loads(json.dumps(fingerprint)))
    model = method.wrap(decoder.Decoder(model_config))
    return Run(
        model_dir,
        model,
        method,
        mesh,
        rules,
        spec,
        eval_spec,
        total_steps,
        schedule,
        optimizer_settings,
        fingerprint,
        initial_checkpoint_path,
    )


def _restore_or_initialize(run: Run, store: checkpoints.CheckpointStore, seed: int):
    """(state, frozen, meta) following the restore order of train/checkpoints.py."""
    length = sum(run.spec.feature_lengths.values())
    rng = jax.random.PRNGKey(seed)
    params = trainer.init_params(run.model, jax.random.fold_in(rng, 1), length, run.mesh, run.rules)
    base_path = None
    if run.initial_checkpoint_path:
        base_params = _base_params(run.initial_checkpoint_path)
        params = checkpoints.initial_params(params, base_params, run.method.is_method_param)
        base_path = os.path.abspath(run.initial_checkpoint_path)
    after_restore = getattr(run.method, "after_restore", None)
    if after_restore is not None:
        params = after_restore(params, jax.random.fold_in(rng, 2))
    mask = run.method.trainable_mask(params)
    state, frozen = trainer.create_state(
        params,
        mask,
        run.optimizer_settings,
        jax.random.fold_in(rng, 3),
        run.mesh,
    )
    meta = {"step": 0, "data_position": 0, "base_checkpoint": base_path, "best_dev_loss": None}
    saved = _saved_tree(state, frozen, base_path)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), saved
    )
    restored = store.restore_latest(abstract)
    if restored is not None:
        tree, meta = restored
        state = trainer.TrainState(tree["step"], tree["params"], tree["opt_state"], tree["rng"])
        frozen = tree.get("frozen", frozen)
        log.info("resumed %s at step %d", run.model_dir, meta["step"])
    return state, frozen, meta


_BASE_CACHE: dict = {}
BASE_CACHE_BYTES = 2 << 30


def _base_params(path: str) -> dict:
    """Params of an initial checkpoint, kept on the host for the next run that starts there.

    A study finetunes each base model dozens of times in one process; reading the checkpoint
    once saves a restore per run. Host numpy copies, so a donated train state never aliases
    them. Bases larger than BASE_CACHE_BYTES are read every time.
    """
    checkpoint_dir = (
        os.path.join(path, "checkpoints")
        if os.path.isdir(os.path.join(path, "checkpoints"))
        else path
    )
    key = (os.path.abspath(path), os.path.getmtime(checkpoint_dir))
    if key in _BASE_CACHE:
        return _BASE_CACHE[key]
    params, _ = checkpoints.load_params(path)
    params = jax.tree.map(np.asarray, params)
    if sum(x.nbytes for x in jax.tree.leaves(params)) <= BASE_CACHE_BYTES:
        if len(_BASE_CACHE) >= 4:  # the pretraining-data axis alternates a few checkpoints
            _BASE_CACHE.pop(next(iter(_BASE_CACHE)))
        _BASE_CACHE[key] = params
    return params


def _saved_tree(state, frozen, base_path):
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


def _train_loop(run: Run, cfg: LoopSettings):
    policy = checkpoints.RetentionPolicy(cfg.keep_last, True, cfg.keep_steps)
    store = checkpoints.CheckpointStore(run.model_dir, policy)
    state, frozen, meta = _restore_or_initialize(run, store, cfg.seed)
    train_fn, eval_fn = trainer.jit_steps(
        run.model,
        run.optimizer_settings,
        run.mesh,
        run.rules,
        state,
        frozen,
        cfg.num_microbatches,
    )
    batch_sharding = partitioning.batch_sharding(run.mesh, run.rules)
    writer = metrics_io.MetricsWriter(run.model_dir, enabled=jax.process_index() == 0)
    step = int(meta["step"])
    tokens_per_step = run.spec.batch_size * sum(run.spec.feature_lengths.values())
    progress = metrics_io.Progress(run.total_steps, step, tokens_per_step)
    batches = input_pipeline.train_batches(run.spec, position=int(meta["data_position"]))
    best = meta.get("best_dev_loss")
    preempted = _SigtermFlag()
    last_good = step
    compile_start, compile_time = time.time(), None

    def save(dev_loss=None):
        nonlocal last_good
        meta.update(step=step, data_position=step, best_dev_loss=best)
        store.save(step, _saved_tree(state, frozen, meta["base_checkpoint"]), dict(meta), dev_loss)
        last_good = step

    def evaluate():
        nonlocal best
        dev = _evaluate(
            eval_fn,
            state.params,
            frozen,
            run.eval_spec,
            "validation",
            cfg.eval_batch_size,
            batch_sharding,
        )
        writer.write(step, "validation", dev)
        if best is None or dev["loss"] < best:
            best = dev["loss"]
        return dev

    dev = None
    stop_step = max(1, math.ceil(cfg.budget_fraction * run.total_steps))
    while step < stop_step and not preempted.set:
        batch = partitioning.global_batch(next(batches), batch_sharding)
        learning_rate = np.float32(run.schedule(step))
        state, metrics = train_fn(state, frozen, batch, learning_rate)
        step += 1
        if compile_time is None:
            compile_time = time.time() - compile_start
        if step % cfg.log_every == 0 or step == run.total_steps:
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss} at step {step}; stopping. The last good checkpoint "
                    f"(step {last_good}) in {store.directory} is intact."
                )
            lr = float(learning_rate)
            speed = progress.update(step, loss, lr, enabled=jax.process_index() == 0)
            writer.write(
                step,
                "train",
                {
                    "loss": loss,
                    "learning_rate": lr,
                    "grad_norm": float(metrics["grad_norm"]),
                    **speed,
                },
            )
        previous_best = best
        dev = evaluate() if cfg.eval_every and step % cfg.eval_every == 0 else None
        improved = dev is not None and (previous_best is None or dev["loss"] < previous_best)
        due = (cfg.save_every and step % cfg.save_every == 0) or step in cfg.keep_steps
        if improved or due:  # a new best by dev loss is always kept (model selection)
            _check_finite(state, step, last_good, store)
            save(None if dev is None else dev["loss"])
    if preempted.set:
        _check_finite(state, step, last_good, store)
        save()
        store.close()
        return summary.RunSummary(
            "preempted", step, run.total_steps, checkpoint_dir=store.directory
        )
    if dev is None:  # the last step's evaluation, unless the loop just made it
        dev = evaluate()
    _check_finite(state, step, last_good, store)
    save(dev["loss"])
    finished = step >= run.total_steps
    result = summary.RunSummary(
        status="finished" if finished else "paused",
        step=step,
        total_steps=run.total_steps,
        final_dev_loss=dev["loss"],
        final_dev_ppl=dev["ppl"],
        best_dev_loss=best,
        best_dev_ppl=math.exp(best),
        best_step=store.best_step(),
        trainable_params=base.trainable_param_count(run.method, base.merge(state.params, frozen)),
        compile_time_s=compile_time,
        checkpoint_dir=store.directory,
    )
    if cfg.test_split and finished:
        best_params = _best_params(store, state, frozen, meta["base_checkpoint"])
        test = _evaluate(
            eval_fn,
            best_params,
            frozen,
            run.eval_spec,
            cfg.test_split,
            cfg.eval_batch_size,
            batch_sharding,
        )
        result = result.replace(
            test_loss=test["loss"], test_ppl=test["ppl"], test_tokens=test["target_tokens"]
        )
    store.close()
    return result


def _best_params(store, state, frozen, base_path):
    """Trainable params of the best checkpoint by dev loss (the paper's model selection)."""
    best = store.best_step()
    if best is None or best == store.latest_step():
        return state.params
    saved = _saved_tree(state, frozen, base_path)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), saved
    )
    tree, _ = store.restore(best, abstract)
    return tree["params"]


def _check_finite(state, step, last_good, store):
    finite = all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(state.params))
    if not finite:
        raise NonFiniteLossError(
            f"parameters are not finite at step {step}; not saving. The last good checkpoint "
            f"(step {last_good}) in {store.directory} is intact."
        )


def _evaluate(eval_fn, params, frozen, spec, split, batch_size, sharding) -> dict:
    """Token-level loss and PPL over a whole split, summed exactly on host."""
    loss_sum, tokens = 0.0, 0.0
    for batch in input_pipeline.eval_batches(spec, split, batch_size):
        out = eval_fn(params, frozen, partitioning.global_batch(batch, sharding))
        loss_sum += float(out["loss_sum"])
        tokens += float(out["target_tokens"])
    if tokens == 0:
        raise ValueError(f"{split} split of {spec.task!r} has no target tokens")
    loss = loss_sum / tokens
    return {"loss": loss, "ppl": math.exp(loss), "target_tokens": tokens}


class _SigtermFlag:
    """Turns SIGTERM (preemption) into a flag the loop checks: save, then stop cleanly."""

    def __init__(self):
        self.set = False
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: preemption is then the caller's business
            pass

    def _handle(self, signum, frame):
        del signum, frame
        self.set = True


def _write_operative_config(model_dir: str) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(model_dir, "config.gin")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(gin.operative_config_str())
    os.replace(tmp, path)
