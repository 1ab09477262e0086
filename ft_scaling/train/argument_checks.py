"""Types and ranges of `loop.train`'s arguments, checked before anything else runs.

Each argument has the macro the run gins bind it to (t5x_configs/runs/*.gin) and a check; a bad
value fails naming both, what it got and what is allowed, e.g.
    TRAIN_STEPS (train.train_steps) = 2.5: expected an integer >= 1
Gin passes whatever a binding says (`--gin.TRAIN_STEPS=2.5` is a float, `'abc'` a string), so
without this a float step count trains "step 3/2.5" and a string fails deep inside with a
TypeError. `settings.check_arguments` is `check` here.
"""

import dataclasses
import math
import numbers
from collections.abc import Mapping

import gin
from ft_scaling.methods import base
from ft_scaling.models import configs
from ft_scaling.train import optimizers


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


def check(arguments: Mapping[str, object]) -> None:
    """Refuses a `loop.train` argument of the wrong type or out of range, naming its macro.

    Args:
      arguments: train's arguments by name (those ARGUMENT_CHECKS lists are checked).

    Raises:
      ValueError: 'TRAIN_STEPS (train.train_steps) = 2.5: expected an integer >= 1'.
    """
    for name, (macro, check) in ARGUMENT_CHECKS.items():
        if name not in arguments or check(arguments[name]):
            continue
        label = f"{macro} (train.{name})" if macro else f"train.{name}"
        if arguments[name] is gin.REQUIRED:  # a `%gin.REQUIRED` macro the command did not set
            flag = f"--gin.{macro or 'train.' + name}=..."
            raise ValueError(f"{label} is required: set it ({flag}), {check.expected}")
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
