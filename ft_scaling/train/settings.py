"""A training run's settings, typed and checked, and the setup that turns them into a `Run`.

    RunSettings
      spec          InputSpec: task, feature lengths, batch size, packing, seed
      stop          StopRule: TRAIN_STEPS, MAX_EPOCHS and the search's budget fraction
      schedule      Schedule: peak rate, kind, warmup, final fraction (length: from the StopRule)
      optimizer     optimizers.OptimizerSettings (hashable: part of the compiled step's key)
      loop          LoopSettings: eval/save/log cadence, retention, microbatches, test split
      fingerprint() what must match for a MODEL_DIR to resume (files.check_fingerprint)
    check_arguments(arguments)  types and ranges of `loop.train`'s arguments, named by macro
      (train/argument_checks.py)
    setup(settings, mesh, rules) -> Run: model, input specs, step counts and schedule, with
      every check done before the first step (bad input fails by name); writes nothing
    record(run)  writes the fingerprint, once the run has restored or initialised its state:
      a run failing before that leaves its MODEL_DIR as it was, open to the corrected command

`loop.train` builds the settings by keyword from its gin arguments; nothing here reads gin.

The schedule's length (TRAIN_STEPS, or fewer by MAX_EPOCHS) must match too: a finished run
rerun with another TRAIN_STEPS would otherwise continue on a new schedule and replace its
checkpoints and summary. The search's budget fraction need not: it only says where a call
stops on the same schedule.
"""

import dataclasses
import json
import math

import jax

from ft_scaling import files
from ft_scaling.data import subsets
from ft_scaling.methods import base
from ft_scaling.models import configs, decoder
from ft_scaling.models.hf import run_setup
from ft_scaling.train import argument_checks, input_pipeline, optimizers, partitioning, summary

check_arguments = argument_checks.check


@dataclasses.dataclass(frozen=True)
class StopRule:
    """The one stop rule: where the schedule ends and where this call stops training.

    The schedule spans TRAIN_STEPS (this run's steps, not counting pretraining, unlike t5x) or
    MAX_EPOCHS passes over the train data, whichever is fewer. A call stops after
    `budget_fraction` of it (an early-stopped search; 1: all of it).
    """

    train_steps: int
    max_epochs: float | None = None
    budget_fraction: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.budget_fraction <= 1.0:
            raise ValueError(f"train.budget_fraction={self.budget_fraction} must lie in (0, 1]")
        if self.train_steps <= 0:
            raise ValueError(f"TRAIN_STEPS={self.train_steps} must be positive")

    def steps(self, spec: input_pipeline.InputSpec) -> tuple[int, int]:
        """(total steps of the schedule, the step this call stops at) for the train `spec`."""
        epoch_steps = None if self.max_epochs is None else input_pipeline.batches_per_epoch(spec)
        total = self.total_steps(epoch_steps)
        return total, max(1, math.ceil(self.budget_fraction * total))

    def total_steps(self, epoch_steps: int | None) -> int:
        """The schedule's length given the full batches of one epoch (`study plan` calls it
        with the D_f subset's count, before any data exists); None: TRAIN_STEPS alone."""
        total = self.train_steps
        if self.max_epochs is not None and epoch_steps is not None:
            total = min(total, max(1, math.ceil(self.max_epochs * epoch_steps)))
        return total


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The learning-rate schedule; its length is the StopRule's total steps."""

    peak: float
    kind: str = "cosine"
    warmup_steps: int = 0
    final_fraction: float = 0.1

    def build(self, total_steps: int) -> optimizers.RateTable:
        schedule = optimizers.schedule(
            self.peak, total_steps, self.kind, self.warmup_steps, self.final_fraction
        )
        return optimizers.RateTable(schedule, total_steps)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How the loop evaluates, saves and logs (none of it changes what is trained)."""

    eval_every: int = 100  # 0: only at the end
    eval_batch_size: int = 32
    save_every: int = 500
    log_every: int = 10
    keep_last: int = 2
    keep_steps: tuple[int, ...] = ()  # always kept (the pretraining-data axis)
    num_microbatches: int = 1
    test_split: str | None = None  # evaluated with the best checkpoint of a finished run


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything a run is configured with; `loop.train` maps its gin arguments onto it."""

    model_dir: str
    model_config: configs.ModelConfig
    method: base.Method
    spec: input_pipeline.InputSpec  # the task as named (before the D_f subset)
    stop: StopRule
    schedule: Schedule
    optimizer: optimizers.OptimizerSettings
    loop: LoopSettings
    finetune_examples: int | None = None  # D_f: a nested subset of the train split
    eval_examples: int | None = None  # evaluate only the first examples of dev/test
    initial_checkpoint_path: str | None = None

    def __post_init__(self):
        if self.spec.batch_size % self.loop.num_microbatches:
            raise ValueError(
                f"BATCH_SIZE={self.spec.batch_size} is not a multiple of "
                f"num_microbatches={self.loop.num_microbatches}"
            )

    def fingerprint(self) -> dict:
        """What must match for a MODEL_DIR to resume; the keys of older run directories."""
        return {
            "model": dataclasses.asdict(self.model_config),
            "method": repr(self.method),
            "task": self.spec.task,
            "feature_lengths": dict(self.spec.feature_lengths),
            "batch_size": self.spec.batch_size,
            "pack": self.spec.pack,
            "seed": self.spec.seed,
            "finetune_examples": self.finetune_examples,
            "learning_rate": self.schedule.peak,
            "optimizer": self.optimizer.kind,
            "schedule": self.schedule.kind,
            "warmup_steps": self.schedule.warmup_steps,
            "initial_checkpoint_path": self.initial_checkpoint_path,
        }


@dataclasses.dataclass(frozen=True)
class Run:
    """What setup builds from the settings; the loop only reads it."""

    settings: RunSettings
    model: object  # method.wrap(Decoder(model_config))
    mesh: jax.sharding.Mesh
    rules: tuple
    spec: input_pipeline.InputSpec  # train batches: the D_f subset when FINETUNE_EXAMPLES is set
    eval_spec: input_pipeline.InputSpec  # dev and test: the whole task, unpacked
    total_steps: int  # the schedule's length
    stop_step: int  # where this call stops
    schedule: object  # step -> learning rate


def setup(run_settings: RunSettings, mesh, rules) -> Run:
    """Builds and checks everything before any step; bad input fails here, by name.

    Nothing is written: `record` writes the fingerprint once the state is restored.
    """
    initial = run_settings.initial_checkpoint_path
    hf_base = run_setup.base_directory(initial)  # a Hugging Face checkpoint (dir or hub id)
    if initial and not hf_base and not files.path(initial).is_dir():
        raise FileNotFoundError(f"INITIAL_CHECKPOINT_PATH {initial} does not exist")
    spec, eval_spec = _input_specs(run_settings)
    for batch_size in (spec.batch_size, run_settings.loop.eval_batch_size):
        partitioning.check_batch_divides(batch_size, mesh, rules)
    model_config, method = run_settings.model_config, run_settings.method
    method.validate(model_config, spec.feature_lengths, spec.pack)
    if hf_base:  # the checkpoint's architecture and tokenizer (hf.gin sets both), or an error
        run_setup.check_run(hf_base, model_config, spec.task)
    total_steps, stop_step = run_settings.stop.steps(spec)
    schedule = run_settings.schedule.build(total_steps)
    _check_resumable(run_settings, total_steps)
    return Run(
        settings=run_settings,
        model=method.wrap(decoder.Decoder(model_config)),
        mesh=mesh,
        rules=rules,
        spec=spec,
        eval_spec=eval_spec,
        total_steps=total_steps,
        stop_step=stop_step,
        schedule=schedule,
    )


def record(run: Run) -> None:
    """Writes the run's fingerprint into MODEL_DIR (first process only), unless it is there."""
    model_dir = run.settings.model_dir
    fingerprint = _fingerprint(run.settings, run.total_steps)
    files.check_fingerprint(
        model_dir,
        _as_saved(fingerprint, files.read_fingerprint(model_dir)),
        write=jax.process_index() == 0,
        optional=(TOTAL_STEPS_KEY,),
    )


TOTAL_STEPS_KEY = "total_steps"


def _fingerprint(run_settings: RunSettings, total_steps: int) -> dict:
    return {**run_settings.fingerprint(), TOTAL_STEPS_KEY: total_steps}


def _check_resumable(run_settings: RunSettings, total_steps: int) -> None:
    """Refuses a MODEL_DIR that holds another run: other settings, or another schedule length.

    The length is compared with the fingerprint's, or, for a directory written before the
    fingerprint recorded it, with its summary.json's.
    """
    model_dir = run_settings.model_dir
    saved = files.read_fingerprint(model_dir)
    # The length is left to the check below, whose message names TRAIN_STEPS.
    fingerprint = _as_saved(run_settings.fingerprint(), saved)
    files.check_fingerprint(model_dir, fingerprint, write=False, optional=(TOTAL_STEPS_KEY,))
    recorded = (saved or {}).get(TOTAL_STEPS_KEY)
    if recorded is None:
        previous = summary.read(model_dir)
        recorded = None if previous is None else previous.total_steps
    if recorded is not None and recorded != total_steps:
        stop = run_settings.stop
        raise files.FingerprintError(
            f"MODEL_DIR {model_dir} holds a run of {recorded} steps; this command's "
            f"TRAIN_STEPS={stop.train_steps} (MAX_EPOCHS={stop.max_epochs}) gives "
            f"{total_steps}: resuming would continue on another learning-rate schedule and "
            "replace its checkpoints and summary. Use a new MODEL_DIR, or the run's TRAIN_STEPS "
            "and MAX_EPOCHS."
        )


def _as_saved(fingerprint: dict, saved: dict | None) -> dict:
    """The fingerprint without the ModelConfig fields an older directory's lacks while they
    hold their defaults (fields added since cannot have differed)."""
    if not saved or not isinstance(saved.get("model"), dict):
        return fingerprint
    defaults = {f.name: _as_json(f.default) for f in dataclasses.fields(configs.ModelConfig)}
    model = {
        key: value
        for key, value in fingerprint["model"].items()
        if key in saved["model"] or _as_json(value) != defaults.get(key)
    }
    return {**fingerprint, "model": model}


def _as_json(value):
    return json.loads(json.dumps(value))


def _input_specs(run_settings: RunSettings) -> tuple[input_pipeline.InputSpec, ...]:
    """(train spec, eval spec): training reads the D_f subset, evaluation the whole task."""
    spec = run_settings.spec
    task = input_pipeline.get_task(spec.task)  # an unknown name fails here, listing the known
    _check_feature_keys(spec, set(task.output_features))
    eval_spec = dataclasses.replace(spec, pack=False, max_examples=run_settings.eval_examples)
    if run_settings.finetune_examples is None:
        return spec, eval_spec
    # D_f: a nested subset fixed by (seed, size); the paper averages runs over 3 seeds.
    subset = subsets.register_finetune_subset(spec.task, run_settings.finetune_examples, spec.seed)
    return dataclasses.replace(spec, task=subset), eval_spec


def _check_feature_keys(spec: input_pipeline.InputSpec, features: set[str]) -> None:
    """TASK_FEATURE_LENGTHS must name the features the task's converter reads, no others."""
    expected = {"inputs", "targets"} if "inputs" in features else {"targets"}
    if set(spec.feature_lengths) != expected:
        raise ValueError(
            f"TASK_FEATURE_LENGTHS={dict(spec.feature_lengths)}: task {spec.task!r} (features "
            f"{sorted(features)}) needs lengths for exactly {sorted(expected)}"
        )
