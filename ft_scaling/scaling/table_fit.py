"""Scaling laws fitted to a whole results table: the library call behind `ft-scaling fit`.

    table ({column: [rows]}, results_table.read_table / from_rows)
      -> groups (by default a task and a method): one setting each
           sweeps (results_table) -> procedure.fit_setting -> FittedSetting
             + saturation per factor value (fitted with its bootstrap interval, and measured)
             + P(alpha_a > alpha_b) between its factors over the bootstrap replicates
      -> across settings that differ only in `method`: MethodComparison per pair and factor
         (every crossing of the two laws at each measured X, and the paper's closed form)
      -> TableFit

Pure numerics on the table: no flags, no gin, no files, no plots. `fit_cli.py` parses flags into
`TableFitOptions` and writes what comes back (`report.write_outputs`); the study report calls
`fit_table` on its finished rows.
"""

import dataclasses
import itertools
from collections.abc import Mapping

import numpy as np

from ft_scaling.scaling import analysis, laws, procedure
from ft_scaling.scaling import results_table as tables
from ft_scaling.scaling.bootstrap import BootstrapOptions
from ft_scaling.scaling.errors import ScalingInputError
from ft_scaling.scaling.fit import FitOptions


@dataclasses.dataclass(frozen=True)
class TableFitOptions:
    """What to fit. Defaults are the paper's (and `ft-scaling fit`'s).

    Attributes:
      law: a name in `laws.LAWS` ("multiplicative", "additive", "single").
      procedure: one of `procedure.PROCEDURES`; None: two_stage for joint laws, single for
        the single-factor law (`resolved_procedure`).
      factors: the factors to report; None: every factor whose sweep takes >= 2 values. A
        requested factor with a single value in one setting skips that setting (`Skipped`).
      metric: the column fitted (e.g. "test_loss").
      group: columns whose values define a setting.
      held_out: one of `procedure.HELD_OUT_RULES`.
      fit: loss, residual and initialisation grid of every fit.
      bootstrap: bootstrap-by-run settings (replicates=0: off).
      saturation_threshold: the relative loss gain per doubling of D_f that counts as saturated.
    """

    law: str = "multiplicative"
    procedure: str | None = None
    factors: tuple[str, ...] | None = None
    metric: str = "test_loss"
    group: tuple[str, ...] = ("task", "method")
    held_out: str = "paper"
    fit: FitOptions = FitOptions()
    bootstrap: BootstrapOptions = BootstrapOptions()
    saturation_threshold: float = 0.01

    @property
    def resolved_procedure(self) -> str:
        return self.procedure or ("single" if self.law == "single" else "two_stage")


@dataclasses.dataclass(frozen=True)
class FittedSetting:
    """One setting's laws and what the paper asks of them.

    Attributes:
      group: {group column: value} naming the setting.
      fit: its fitted laws per factor (and the shared stage 1).
      saturation: {factor key (as in fit.factors): one analysis.Saturation per factor value}.
      exponent_comparison: {(factor a, factor b): P(alpha_a > alpha_b)} over the bootstrap
        replicates, between the factors of a joint law.
    """

    group: dict[str, str]
    fit: procedure.SettingFit
    saturation: dict[str, tuple[analysis.Saturation, ...]]
    exponent_comparison: dict[tuple[str, str], float]


@dataclasses.dataclass(frozen=True)
class MethodComparison:
    """Where one method's fitted law crosses another's (the critical finetuning data size).

    Attributes:
      group: the settings' group values other than `method`.
      factor: the factor whose laws are compared.
      pair: (method 1, method 2), sorted; method 1 is the paper's "A" in "A vs B".
      fits: {method: its FactorFit of `factor`}.
      crossings: one analysis.Crossing per factor value measured by either method.
      closed_form: the paper's (H, gamma) of D_f^c = H X^gamma (NaN unless multiplicative).
    """

    group: dict[str, str]
    factor: str
    pair: tuple[str, str]
    fits: dict[str, procedure.FactorFit]
    crossings: tuple[analysis.Crossing, ...]
    closed_form: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A setting left out: a requested factor takes a single value in it."""

    group: dict[str, str]
    reason: str


@dataclasses.dataclass(frozen=True)
class TableFit:
    """Everything fitted from one results table (values unrounded)."""

    options: TableFitOptions
    settings: tuple[FittedSetting, ...]
    comparisons: tuple[MethodComparison, ...]
    skipped: tuple[Skipped, ...]

    @property
    def not_converged(self) -> list[dict[str, str]]:
        """Groups of every factor fit whose best start did not converge (one per factor)."""
        return [
            s.group for s in self.settings for f in s.fit.factors.values() if not f.fit.converged
        ]


def fit_table(table: Mapping[str, np.ndarray], options: TableFitOptions) -> TableFit:
    """Fits every setting of a results table and compares its methods.

    Args:
      table: {column: [rows] array of cells}, from `results_table.read_table` or `from_rows`.
      options: what to fit.

    Returns:
      The settings in sorted group order, the method comparisons and the skipped settings.

    Raises:
      ScalingInputError: a missing column, a bad value, too few points, or nothing to fit.
    """
    settings, skipped = [], []
    for group, rows in tables.groups(table, options.group):
        sweeps = _setting_sweeps(table, rows, options)
        if isinstance(sweeps, str):
            skipped.append(Skipped(group, sweeps))
            continue
        settings.append(_fit_setting(group, sweeps, options))
    if not settings:
        reasons = [{"group": s.group, "reason": s.reason} for s in skipped]
        raise ScalingInputError(f"nothing to fit: {reasons}")
    comparisons = tuple(_comparisons(settings, options.law))
    return TableFit(options, tuple(settings), comparisons, tuple(skipped))


def _setting_sweeps(table, rows, options: TableFitOptions) -> dict[str, procedure.Sweep] | str:
    """The sweeps one setting is fitted on, or why it is skipped."""
    factors, metric = options.factors, options.metric
    try:
        sweeps = tables.sweeps_for_rows(table, rows, factors, metric)
    except ScalingInputError as error:
        if factors is None or "single value" not in str(error):
            raise
        return str(error)
    if options.resolved_procedure == "two_stage":  # stage 1 always pools both sweeps it can
        sweeps = tables.sweeps_for_rows(table, rows, None, metric) | sweeps
    return sweeps


def _fit_setting(group: dict, sweeps: dict, options: TableFitOptions) -> FittedSetting:
    setting = procedure.fit_setting(
        sweeps,
        options.law,
        options.resolved_procedure,
        options.held_out,
        options.fit,
        options.bootstrap,
        report=list(options.factors or sweeps),
    )
    saturation = _saturations(setting, options.saturation_threshold)
    return FittedSetting(group, setting, saturation, _exponents(setting))


def _saturations(setting: procedure.SettingFit, threshold: float) -> dict:
    """{factor key: (analysis.Saturation per factor value)}: fitted (with the bootstrap
    replicates' interval) and empirical saturation D_f."""
    result = {}
    for key, factor_fit in setting.factors.items():
        law, points = laws.get_law(factor_fit.law), factor_fit.points
        per_value = []
        for value in np.unique(points.x):
            at = points.x == value
            measured = (points.d_f[at], points.loss[at])
            per_value.append(
                analysis.saturation(
                    law, factor_fit.params, value, threshold, factor_fit.bootstrap, measured
                )
            )
        result[key] = tuple(per_value)
    return result


def _exponents(setting: procedure.SettingFit) -> dict[tuple[str, str], float]:
    """P(alpha_a > alpha_b) between the joint-law factors, over paired bootstrap replicates;
    an alpha these runs do not identify (`analysis.exponent_identified`) is not ranked."""
    samples = {}
    for key, factor_fit in setting.factors.items():
        alpha = factor_fit.intervals.get("alpha")
        if alpha is not None and analysis.exponent_identified(alpha) is False:
            continue
        if factor_fit.value is None and "alpha" in factor_fit.params:
            samples[key] = factor_fit.bootstrap[:, list(factor_fit.params).index("alpha")]
    return analysis.exponent_comparison(samples)


def _comparisons(settings: list[FittedSetting], law_name: str) -> list[MethodComparison]:
    """Critical D_f between every pair of methods of the same other group values and factor."""
    if law_name == "single":
        return []
    by_rest: dict[tuple, dict[str, procedure.SettingFit]] = {}
    for setting in settings:
        if "method" in setting.group:
            rest = tuple((k, v) for k, v in setting.group.items() if k != "method")
            by_rest.setdefault(rest, {})[setting.group["method"]] = setting.fit
    out = []
    for rest, methods in by_rest.items():
        for (m1, s1), (m2, s2) in itertools.combinations(sorted(methods.items()), 2):
            for factor in sorted(set(s1.factors) & set(s2.factors)):
                out.append(_compare(dict(rest), factor, (m1, s1), (m2, s2), law_name))
    return out


def _compare(rest: dict, factor: str, first, second, law_name: str) -> MethodComparison:
    (m1, s1), (m2, s2) = first, second
    f1, f2 = s1.factors[factor], s2.factors[factor]
    law = laws.get_law(law_name)
    xs = np.unique(np.concatenate([f1.points.x, f2.points.x]))
    crossings = tuple(analysis.critical_data_size(law, f1.params, f2.params, x) for x in xs)
    closed = (
        analysis.closed_form_critical(f1.params, f2.params)
        if law_name == "multiplicative"
        else (float("nan"), float("nan"))
    )
    return MethodComparison(rest, factor, (m1, m2), {m1: f1, m2: f2}, crossings, closed)
