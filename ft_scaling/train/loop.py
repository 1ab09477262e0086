"""The training run: set up, restore or initialise, loop, finish. Configured by the run gins.

    setup    settings.RunSettings from the gin arguments, then settings.setup: mesh + rules
             (injected by the run gins), model = method.wrap(Decoder(config)), input specs
    restore  this run's latest checkpoint > INITIAL_CHECKPOINT_PATH (params only) > scratch
             (checkpoints.restore_or_initialize)
    loop     advance: the train step; every LOG_EVERY: progress + metrics
             evaluate and save: every EVAL_EVERY: dev loss/PPL (the best checkpoint by dev PPL
             is kept); every SAVE_EVERY and on SIGTERM: save
    finish   last eval and save, the test split with the best checkpoint; operative gin config
             and summary.json (`summary.RunSummary`) in MODEL_DIR

Training stops by one rule (`settings.StopRule`): at TRAIN_STEPS (this run's steps, not counting
pretraining, unlike t5x) or after MAX_EPOCHS passes over the train data, whichever comes first,
or after `budget_fraction` of those steps (status 'paused'), or on SIGTERM ('preempted').
"""

import contextvars
import dataclasses
import math
import time

import jax
import numpy as np

import gin
from ft_scaling import files
from ft_scaling.methods import base
from ft_scaling.models import configs
from ft_scaling.train import (
    checkpoint_steps,
    checkpoints,
    input_pipeline,
    losses,
    metrics_io,
    optimizers,
    partitioning,
    preemption,
    settings,
    summary,
    timings,
    trainer,
)


class NonFiniteLossError(FloatingPointError):
    pass


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
    mesh: jax.sharding.Mesh | None = None,
    rules: tuple | None = None,
) -> summary.RunSummary:
    """Trains one model and returns its summary (also written to MODEL_DIR/summary.json).

    Args mirror the run gins' macros (t5x_configs/runs/*.gin): MODEL_DIR, MIXTURE_OR_TASK_NAME,
    TASK_FEATURE_LENGTHS, TRAIN_STEPS, BATCH_SIZE, LEARNING_RATE, METHOD, MAX_EPOCHS,
    INITIAL_CHECKPOINT_PATH, FINETUNE_EXAMPLES (a D_f subset of the train split), SEED, ...
    `budget_fraction` < 1 (early-stopped search) stops after that fraction of the steps, on the
    full run's schedule, evaluates, saves and returns status 'paused'; rerunning the same
    MODEL_DIR with a larger fraction continues from there, as an uninterrupted run would.
    `mesh` and `rules` are injected by the run gins (`@partitioning.make_mesh()`,
    `@partitioning.logical_rules()`, as t5x injects its partitioner); None builds those.
    """
    settings.check_arguments(locals())  # first: locals() is exactly train's arguments here
    start, timer = time.time(), timings.PhaseTimer()
    with timer.phase("setup"):
        run_settings = settings.RunSettings(
            model_dir=model_dir,
            model_config=model_config or configs.ModelConfig(),
            method=method or base.Method(),
            spec=input_pipeline.InputSpec(task, dict(feature_lengths), batch_size, pack, seed),
            stop=settings.StopRule(train_steps, max_epochs, budget_fraction),
            schedule=settings.Schedule(
                learning_rate, schedule_kind, warmup_steps, final_lr_fraction
            ),
            optimizer=optimizers.OptimizerSettings(optimizer_kind, weight_decay, clip_norm),
            loop=settings.LoopSettings(
                eval_every=eval_every,
                eval_batch_size=eval_batch_size or batch_size,
                save_every=save_every,
                log_every=log_every,
                keep_last=keep_checkpoints,
                keep_steps=tuple(keep_steps),
                num_microbatches=num_microbatches,
                test_split=test_split,
            ),
            finetune_examples=finetune_examples,
            eval_examples=eval_examples,
            initial_checkpoint_path=initial_checkpoint_path,
        )
        mesh = partitioning.make_mesh() if mesh is None else mesh
        rules = partitioning.logical_rules() if rules is None else rules
        run = settings.setup(run_settings, mesh, rules)
    if _PREPARING.get():
        return Prepared(run, start, timer, files.operative_config_text())
    return _run(run, start, timer)


@dataclasses.dataclass
class Prepared:
    """A run set up (every check done) but not trained: what `prepared()` returns for a pack
    (train/packed_loop.py), whose runs train after other runs' gin configs were parsed."""

    run: settings.Run
    start: float
    timer: timings.PhaseTimer
    operative_config: str | None = None  # the run's gin bindings as text (gin is global
    # state, parsed anew for each run of a pack); None: gin's current operative config

    def open(self) -> "_Loop":
        """The run's loop, restored or initialised, its fingerprint and config written."""
        with self.timer.phase("setup"):
            training = _Loop(self.run, self.timer)  # restores: a bad base fails here
            settings.record(self.run)  # only now: a failed restore left MODEL_DIR as it was
            _write_operative_config(self.run.settings.model_dir, self.operative_config)
        return training

    def finalize(self, result: summary.RunSummary) -> summary.RunSummary:
        """The summary with sizes and timings, written with the config into MODEL_DIR."""
        result = result.replace(
            model_params=configs.param_count(self.run.settings.model_config),
            wall_time_s=time.time() - self.start,
            timings=self.timer.seconds(),
        )
        _write_operative_config(self.run.settings.model_dir, self.operative_config)
        if jax.process_index() == 0:
            result.write(self.run.settings.model_dir)
        return result


_PREPARING = contextvars.ContextVar("preparing", default=False)


def prepared() -> Prepared:
    """`train()` under the parsed gin config, stopped before training: the set-up run."""
    token = _PREPARING.set(True)
    try:
        return train()
    finally:
        _PREPARING.reset(token)


def _run(run: settings.Run, start: float, timer: timings.PhaseTimer) -> summary.RunSummary:
    """Trains a set-up run; writes its fingerprint, operative config and summary.json."""
    model_dir, training, prepared_run = run.settings.model_dir, None, Prepared(run, start, timer)
    # A full disk stops the run naming MODEL_DIR and its last good checkpoint (a rerun resumes).
    with files.naming_full_disk(model_dir, lambda: _kept(training, model_dir)):
        training = prepared_run.open()
        # The config is written again at the end: with the configurables the run called.
        return prepared_run.finalize(training.execute())


class _Loop:
    """One call's training of a run: restore, then step / evaluate and save, then finish."""

    def __init__(self, run: settings.Run, timer: timings.PhaseTimer):
        self.run, self.cfg, self.timer = run, run.settings.loop, timer
        policy = checkpoints.RetentionPolicy(self.cfg.keep_last, True, self.cfg.keep_steps)
        self.store = checkpoints.CheckpointStore(run.settings.model_dir, policy)
        try:
            self.state, self.frozen, self.meta = checkpoints.restore_or_initialize(
                self.store,
                model=run.model,
                method=run.settings.method,
                optimizer=run.settings.optimizer,
                sequence_length=sum(run.spec.feature_lengths.values()),
                seed=run.spec.seed,
                initial_checkpoint_path=run.settings.initial_checkpoint_path,
                mesh=run.mesh,
                rules=run.rules,
            )
        except BaseException:
            self.store.close()  # its threads would otherwise outlive the error
            raise
        self.train_fn, self.eval_fn = trainer.jit_steps(
            losses.LMLoss(run.model),
            run.settings.optimizer,
            run.mesh,
            run.rules,
            self.state,
            self.frozen,
            self.cfg.num_microbatches,
        )
        self.batch_sharding = partitioning.batch_sharding(run.mesh, run.rules)
        self.step = int(self.meta["step"])
        # Rows past the restored step are replayed by this call: the log is cut back to it.
        self.writer = metrics_io.MetricsWriter(
            run.settings.model_dir, enabled=jax.process_index() == 0, resume_step=self.step
        )
        self.best = self.meta.get("best_dev_loss")
        tokens_per_step = run.spec.batch_size * sum(run.spec.feature_lengths.values())
        self.progress = metrics_io.Progress(run.total_steps, self.step, tokens_per_step)
        self.compile_time = None  # the first step's seconds: compiled then, unless cached

    def execute(self) -> summary.RunSummary:
        """Trains to the stop step (or SIGTERM), then finishes; the summary of this call."""
        try:
            position = int(self.meta["data_position"])
            with self.timer.phase("input"):
                batches = input_pipeline.train_batches(self.run.spec, position=position)
            preempted, dev = preemption.SigtermFlag(), None
            while self.step < self.run.stop_step and not preempted.set:
                with self.timer.phase("input"):
                    batch = partitioning.global_batch(next(batches), self.batch_sharding)
                self.advance(batch)
                dev = self.evaluate_and_save()
            if preempted.set:
                self.save()
                return summary.RunSummary(
                    "preempted",
                    self.step,
                    self.run.total_steps,
                    checkpoint_dir=self.store.directory,
                )
            return self.finish(dev)
        finally:
            with self.timer.phase("checkpoint"):
                self.store.close()

    def advance(self, batch) -> None:
        """One optimizer step; every LOG_EVERY steps (and the last) its metrics."""
        with self.timer.phase("train"):  # compiling moves to 'compile' (timings.py)
            started = time.perf_counter()
            learning_rate = np.float32(self.run.schedule(self.step))
            self.state, metrics = self.train_fn(self.state, self.frozen, batch, learning_rate)
            self.step += 1
            if self.compile_time is None:  # the first call returns once compiled and dispatched
                self.compile_time = time.perf_counter() - started
            if self.step % self.cfg.log_every == 0 or self.step == self.run.total_steps:
                self._log(metrics, learning_rate)  # its float() waits for the step

    def _log(self, metrics: dict, learning_rate) -> None:
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss} at step {self.step}; stopping. {self.kept()}")
        lr = float(learning_rate)
        speed = self.progress.update(self.step, loss, lr, enabled=jax.process_index() == 0)
        row = {"loss": loss, "learning_rate": lr, "grad_norm": float(metrics["grad_norm"])}
        self.writer.write(self.step, "train", {**row, **speed})

    def evaluate_and_save(self) -> dict | None:
        """Dev loss every EVAL_EVERY steps; a checkpoint on a new best, and when one is due."""
        dev, improved = self.evaluate() if self.eval_due() else (None, False)
        if improved or self.save_due():  # a new best by dev loss is always kept (model selection)
            self.save(None if dev is None else dev["loss"])
        return dev

    def eval_due(self) -> bool:
        return bool(self.cfg.eval_every and self.step % self.cfg.eval_every == 0)

    def save_due(self) -> bool:
        cfg = self.cfg
        return (
            bool(cfg.save_every and self.step % cfg.save_every == 0) or self.step in cfg.keep_steps
        )

    def evaluate(self) -> tuple[dict, bool]:
        """(dev metrics, whether they are a new best) of the current params."""
        with self.timer.phase("train"):
            timings.sync(self.state)  # the steps dispatched so far are train time
        with self.timer.phase("eval"):
            dev = self._split_metrics(self.state.params, "validation", "eval")
        return dev, self.note_dev(dev)

    def note_dev(self, dev: dict) -> bool:
        """Logs dev metrics of this step; whether they are a new best."""
        self.writer.write(self.step, "validation", dev)
        improved = self.best is None or dev["loss"] < self.best
        if improved:
            self.best = dev["loss"]
        return improved

    def save(self, dev_loss: float | None = None) -> None:
        """Checkpoints the state (unless this step is saved already); never non-finite params."""
        with self.timer.phase("train"):
            timings.sync(self.state)
        with self.timer.phase("checkpoint"):
            self._save(dev_loss)

    def _save(self, dev_loss: float | None) -> None:
        finite = all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(self.state.params))
        if not finite:
            raise NonFiniteLossError(
                f"parameters are not finite at step {self.step}; not saving. {self.kept()}"
            )
        self.meta.update(step=self.step, data_position=self.step, best_dev_loss=self.best)
        tree = checkpoints.saved_tree(self.state, self.frozen, self.meta["base_checkpoint"])
        self.store.save(self.step, tree, dict(self.meta), dev_loss)

    def kept(self) -> str:
        """What a stopped run leaves to resume from, for its error message."""
        return checkpoint_steps.kept_message(self.store)

    def finish(self, dev: dict | None) -> summary.RunSummary:
        """Last evaluation (unless the last step made it) and save; test of a finished run."""
        if dev is None:
            dev, _ = self.evaluate()
        result = self.close(dev)
        if not self.tests(result):
            return result
        return with_test(
            result, self._split_metrics(self.best_params(), self.cfg.test_split, "test")
        )

    def close(self, dev: dict) -> summary.RunSummary:
        """Saves the state (dev: this step's) and returns the summary, before any test."""
        self.save(dev["loss"])
        finished = self.step >= self.run.total_steps
        params = base.merge(self.state.params, self.frozen)
        return summary.RunSummary(
            status="finished" if finished else "paused",
            step=self.step,
            total_steps=self.run.total_steps,
            final_dev_loss=dev["loss"],
            final_dev_ppl=dev["ppl"],
            best_dev_loss=self.best,
            best_dev_ppl=math.exp(self.best),
            best_step=self.store.best_step(),
            trainable_params=base.trainable_param_count(self.run.settings.method, params),
            compile_time_s=self.compile_time,
            checkpoint_dir=self.store.directory,
        )

    def tests(self, result: summary.RunSummary) -> bool:
        """Whether the run is evaluated on the test split now (finished, and it has one)."""
        return result.status == "finished" and bool(self.cfg.test_split)

    def best_params(self):
        """Trainable params of the best checkpoint by dev loss (the paper's model selection)."""
        with self.timer.phase("checkpoint"):
            base_path = self.meta["base_checkpoint"]
            return checkpoints.best_params(self.store, self.state, self.frozen, base_path)

    def _split_metrics(self, params, split: str, phase: str) -> dict:
        """Token-level loss and PPL over a whole split, summed exactly on host; timed as
        `phase` (its batches as input)."""
        loss_sum, tokens, spec = 0.0, 0.0, self.run.eval_spec
        with self.timer.phase("input"):
            batches = input_pipeline.eval_batches(spec, split, self.cfg.eval_batch_size)
        for batch in batches:
            with self.timer.phase("input"):
                batch = partitioning.global_batch(batch, self.batch_sharding)
            with self.timer.phase(phase):
                out = self.eval_fn(params, self.frozen, batch)
                loss_sum += float(out["loss_sum"])
                tokens += float(out["target_tokens"])
        if tokens == 0:
            raise ValueError(f"{split} split of {spec.task!r} has no target tokens")
        loss = loss_sum / tokens
        return {"loss": loss, "ppl": math.exp(loss), "target_tokens": tokens}


def with_test(result: summary.RunSummary, test: dict) -> summary.RunSummary:
    return result.replace(
        test_loss=test["loss"], test_ppl=test["ppl"], test_tokens=test["target_tokens"]
    )


def _kept(training, model_dir: str) -> str:
    """What a stopped run leaves to resume from, also when its loop never started."""
    if training is not None:
        return training.kept()
    store = checkpoints.CheckpointStore(model_dir)
    try:
        return checkpoint_steps.kept_message(store)
    finally:
        store.close()


def _write_operative_config(model_dir: str, text: str | None = None) -> None:
    if jax.process_index() == 0:  # one writer per pod
        files.write_operative_config(model_dir, text)
