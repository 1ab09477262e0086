"""The hyperparameters an early-stopped search samples, declared in gin.

A space maps a gin binding key (a macro such as `LEARNING_RATE`, or `configurable.param`) to a
distribution, written as a tuple whose first item names its kind:

    SearchSpace.params = {
        'LEARNING_RATE': ('log_uniform', 1e-3, 1e-1),   # float, sampled uniformly in log
        'WARMUP_STEPS':  ('int', 0, 8),                  # integer in [low, high]
        'BATCH_SIZE':    ('categorical', 8, 16, 32),     # one of the listed values
        'LORA_RANK':     ('log_int', 2, 16),             # integer, uniform in log
    }

Every sampled value becomes the binding `KEY = repr(value)` of the trial's run, after the
search's fixed bindings, so it overrides them. A malformed entry fails when the space is built,
naming the key and what is allowed; a key that is not a macro of the trial's gin files fails
before the first trial (`check_keys`), listing the macros that are.
"""

import dataclasses
import re
from collections.abc import Mapping

import gin

RANGE_KINDS = ("int", "log_int", "log_uniform", "uniform")
KINDS = (*RANGE_KINDS, "categorical")
CATEGORICAL_TYPES = (bool, int, float, str, type(None))  # what Optuna stores for a choice
_KEY = re.compile(r"^[A-Za-z_][\w.]*$")
_MACRO_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)\s*=", re.MULTILINE)


class SearchSpaceError(ValueError):
    """A malformed search space; the message names the key and the allowed values."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched hyperparameter: its binding key and distribution."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def suggest(self, trial):
        """Samples this parameter from an Optuna trial (or returns its fixed/enqueued value)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.key, self.low, self.high, log=self.kind == "log_int")
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log_uniform")


def parse_param(key: str, spec) -> Param:
    """Checks one space entry and returns it as a Param; raises SearchSpaceError by name."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise SearchSpaceError(
            f"search space key {key!r} is not a gin binding key (a macro such as "
            "'LEARNING_RATE' or 'configurable.param')"
        )
    if not isinstance(spec, tuple | list) or not spec or spec[0] not in KINDS:
        kind = spec[0] if isinstance(spec, tuple | list) and spec else spec
        raise SearchSpaceError(
            f"search space key {key!r}: unknown kind {kind!r}; allowed kinds: {', '.join(KINDS)} "
            "(written as ('log_uniform', low, high) or ('categorical', value, ...))"
        )
    kind, values = spec[0], tuple(spec[1:])
    if kind == "categorical":
        return _categorical(key, values)
    return _range(key, kind, values)


def _categorical(key: str, choices: tuple) -> Param:
    if not choices:
        raise SearchSpaceError(f"search space key {key!r}: 'categorical' needs at least 1 value")
    bad = [c for c in choices if not isinstance(c, CATEGORICAL_TYPES)]
    if bad:
        allowed = ", ".join(t.__name__ for t in CATEGORICAL_TYPES)
        raise SearchSpaceError(
            f"search space key {key!r}: choices {bad!r} are not allowed; a choice must be one "
            f"of: {allowed}"
        )
    if len(set(choices)) != len(choices):
        raise SearchSpaceError(f"search space key {key!r}: repeated choices in {choices!r}")
    return Param(key, "categorical", choices=choices)


def _range(key: str, kind: str, values: tuple) -> Param:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numbers:
        raise SearchSpaceError(
            f"search space key {key!r}: {kind!r} takes exactly (low, high) numbers, got {values!r}"
        )
    low, high = values
    if kind in ("int", "log_int") and not all(float(v).is_integer() for v in values):
        raise SearchSpaceError(f"search space key {key!r}: {kind!r} bounds must be integers")
    if not low < high:
        raise SearchSpaceError(f"search space key {key!r}: low={low} must be < high={high}")
    if kind.startswith("log") and low <= 0:
        raise SearchSpaceError(f"search space key {key!r}: {kind!r} needs low > 0, got {low}")
    if kind in ("int", "log_int"):
        return Param(key, kind, int(low), int(high))
    return Param(key, kind, float(low), float(high))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The searched hyperparameters: {binding key: (kind, ...)} as in the module docstring.

    Attributes:
      params: the space; checked when the SearchSpace is built.
    """

    params: Mapping[str, tuple]

    def __post_init__(self):
        if not self.params:
            raise SearchSpaceError("the search space is empty; set SearchSpace.params")
        self.parameters()  # fail at construction, not at the first trial

    def parameters(self) -> list[Param]:
        """The entries as Params, in sorted key order (so sampling order never depends on how
        the gin file lists them)."""
        return [parse_param(key, self.params[key]) for key in sorted(self.params)]

    def suggest(self, trial) -> dict:
        """{key: value} sampled for one Optuna trial."""
        return {p.key: p.suggest(trial) for p in self.parameters()}


def bindings(values: Mapping[str, object]) -> list[str]:
    """Gin bindings of sampled values, in key order: ['LEARNING_RATE = 0.0123', ...]."""
    return [f"{key} = {values[key]!r}" for key in sorted(values)]


def check_keys(space: SearchSpace, operative_config: str) -> None:
    """Every macro key of the space must be a macro of the trial's gin files.

    Args:
      space: the search space.
      operative_config: `gin.config_str()` after parsing the trial's files and fixed bindings.
        Keys with a dot (`configurable.param`) are left to gin, which names unknown ones.

    Raises:
      SearchSpaceError: naming the key and listing the macros that exist.
    """
    known = sorted(set(_MACRO_LINE.findall(operative_config)))
    for param in space.parameters():
        if "." not in param.key and param.key not in known:
            raise SearchSpaceError(
                f"search space key {param.key!r} is not a macro of the trial's gin files; "
                f"known macros: {', '.join(known)}"
            )
