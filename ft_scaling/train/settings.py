"""A training run's settings, typed and checked, and the setup that turns them into a `Run`.

    RunSettings
      spec          InputSpec: task, feature lengths, batch size, packing, seed
      stop          StopRule: TRAIN_STEPS, MAX_EPOCHS and the search's budget fraction
      schedule      Schedule: peak rate, kind, warmup, final fraction (length: from the StopRule)
      optimizer     optimizers.OptimizerSettings (hashable: part of the compiled step's key)
      loop          LoopSettings: eval/save/log cadence, retention, microbatches, test split
      fingerprint() what must match for a MODEL_DIR to resume (files.check_fingerprint)
    setup(settings, mesh, rules) -> Run: model, input specs, step counts and schedule, with
      every check done before the first step (bad input fails by name)

`loop.train` builds the settings by keyword from its gin arguments; nothing here reads gin.
"""

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping

import jax

from ft_scaling import files
from ft_scaling.data import subsets
from ft_scaling.methods import base
from ft_scaling.models import configs, decoder
from ft_scaling.models.hf import run_setup
from ft_scaling.train import input_pipeline, optimizers, partitioning, summary

# --- Types and ranges of the run's arguments, named by the macro a run gin binds them to ------


def _integer(minimum: int):
    def check(value) -> bool:
        return (
            isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum
        )

    check.expected = f"an integer >= {minimum}"
    return check


def _real(minimum: float, open_below: bool = False, maximum: float = math.inf):
    def check(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        above = value > minimum if open_below else value >= minimum
        return math.isfinite(value) and above and value <= maximum

    bound = f"> {minimum}" if open_below else f">= {minimum}"
    check.expected = f"a finite number {bound}" + ("" if maximum == math.inf else f", <= {maximum}")
    return check


def _optional(inner):
    def check(value) -> bool:
        return value is None or inner(value)

    check.expected = f"None or {inner.expected}"
    return check


def _instance(kind, description: str):
    def check(value) -> bool:
        return isinstance(value, kind)

    check.expected = description
    return check


def _choice(allowed: tuple[str, ...]):
    def check(value) -> bool:
        return value in allowed

    check.expected = f"one of {allowed}"
    return check


def _feature_lengths(value) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and _integer(1)(v) for k, v in value.items())
    )


def _steps(value) -> bool:
    return isinstance(value, (list, tuple)) and all(_integer(1)(v) for v in value)


_feature_lengths.expected = "a dict of feature name -> integer length >= 1"
_steps.expected = "a list of integers >= 1"
_TEXT = _instance(str, "a string")

# train's argument -> (the macro the run gins bind it to, or None, and its check)
ARGUMENT_CHECKS = {
    "model_dir": ("MODEL_DIR", _TEXT),
    "task": ("MIXTURE_OR_TASK_NAME", _TEXT),
    "feature_lengths": ("TASK_FEATURE_LENGTHS", _feature_lengths),
    "train_steps": ("TRAIN_STEPS", _integer(1)),
    "batch_size": ("BATCH_SIZE", _integer(1)),
    "learning_rate": ("LEARNING_RATE", _real(0.0, open_below=True)),
    "model_config": (None, _instance(configs.ModelConfig, "a ModelConfig (@ModelConfig())")),
    "method": ("METHOD", _optional(_instance(base.Method, "a method (@lora.LoRA() ...)"))),
    "optimizer_kind": (None, _choice(optimizers.OPTIMIZERS)),
    "schedule_kind": (None, _choice(optimizers.SCHEDULES)),
    "warmup_steps": ("WARMUP_STEPS", _integer(0)),
    "final_lr_fraction": (None, _real(0.0, maximum=1.0)),
    "weight_decay": (None, _real(0.0)),
    "clip_norm": (None, _optional(_real(0.0))),
    "max_epochs": ("MAX_EPOCHS", _optional(_real(0.0, open_below=True))),
    "num_microbatches": (None, _integer(1)),
    "pack": ("PACK", _instance(bool, "True or False")),
    "seed": ("SEED", _integer(0)),
    "finetune_examples": ("FINETUNE_EXAMPLES", _optional(_integer(1))),
    "initial_checkpoint_path": ("INITIAL_CHECKPOINT_PATH", _optional(_TEXT)),
    "eval_every": ("EVAL_EVERY", _integer(0)),
    "eval_batch_size": (None, _optional(_integer(1))),
    "save_every": ("SAVE_EVERY", _integer(0)),
    "log_every": ("LOG_EVERY", _integer(1)),
    "keep_checkpoints": (None, _integer(1)),
    "keep_steps": (None, _steps),
    "test_split": ("TEST_SPLIT", _optional(_TEXT)),
    "eval_examples": (None, _optional(_integer(1))),
    "budget_fraction": (None, _real(0.0, open_below=True, maximum=1.0)),
}


def check_arguments(arguments: Mapping[str, object]) -> None:
    """Refuses a `loop.train` argument of the wrong type or out of range, naming its macro.

    Args:
      arguments: train's arguments by name (those ARGUMENT_CHECKS lists are checked).

    Raises:
      ValueError: 'TRAIN_STEPS (train.train_steps) = 2.5: expected an integer >= 1'.
    """
    for name, (macro, check) in ARGUMENT_CHECKS.items():
        if name in arguments and not check(arguments[name]):
            label = f"{macro} (train.{name})" if macro else f"train.{name}"
            raise ValueError(f"{label} = {arguments[name]!r}: expected {check.expected}")
    model_config = arguments.get("model_config")
    if isinstance(model_config, configs.ModelConfig):
        _check_model_integers(model_config)


def _check_model_integers(model_config: configs.ModelConfig) -> None:
    """ModelConfig's integer fields hold integers (2.5 layers would fail deep in the model)."""
    for field in dataclasses.fields(model_config):
        value = getattr(model_config, field.name)
        if field.type in (int, "int") and not _integer(0)(value):
            raise ValueError(f"ModelConfig.{field.name} = {value!r}: expected an integer >= 0")


# --- The settings --------------------------------------------------------------------------


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
        total = self.train_steps
        if self.max_epochs is not None:
            epoch_steps = input_pipeline.batches_per_epoch(spec)
            total = min(total, max(1, math.ceil(self.max_epochs * epoch_steps)))
        return total, max(1, math.ceil(self.budget_fraction * total))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The learning-rate schedule; its length is the StopRule's total steps."""

    peak: float
    kind: str = "cosine"
    warmup_steps: int = 0
    final_fraction: float = 0.1

    def build(self, total_steps: int):
        return optimizers.schedule(
            self.peak, total_steps, self.kind, self.warmup_steps, self.final_fraction
        )


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
