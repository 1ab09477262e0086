"""Fitting procedures over sweeps of runs: the paper's two stages, free fits, bootstrap by run.

A `Sweep` is the runs along one factor (model size, pretraining tokens or PET size) of one task
and method. Runs at the same (X, D_f) form a point; the fit uses the mean of a point's runs
(the paper averages three runs per point, PAPER.md §2) with weight 1.

    two_stage (paper, §5):  stage 1  joint law over the model-size and pretraining sweeps with
                                     (A_X, alpha_X) per factor and the D_f part (beta, E) shared
                            stage 2  (beta, E) fixed, (A_X, alpha_X) refitted for every factor
    free:                   every factor's law fitted with all parameters free
    single:                 L = A D_f^-beta + E fitted for each factor value separately

Bootstrap intervals come from `bootstrap.py` (by run, shared by all sweeps of a setting).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from ft_scaling.scaling import bootstrap as boot_lib
from ft_scaling.scaling import fit, laws
from ft_scaling.scaling.bootstrap import BootstrapOptions
from ft_scaling.scaling.errors import ScalingInputError

HELD_OUT_RULES = ("paper", "largest_x", "largest_d", "none")
PROCEDURES = ("two_stage", "free", "single")
STAGE1_FACTORS = ("model_params", "pretrain_tokens")  # PET-size runs excluded (PAPER.md Fn2)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The runs of one factor sweep. Arrays are [runs]."""

    factor: str
    x: np.ndarray
    d_f: np.ndarray
    loss: np.ndarray
    run_id: np.ndarray  # identity of each run within its group, shared across sweeps

    def __post_init__(self):
        fit.check_positive_finite(
            **{self.factor: self.x, "finetune_examples": self.d_f, "loss": self.loss}
        )

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x [points], d_f [points], point index of every run [runs])."""
        pairs, index = np.unique(np.stack([self.x, self.d_f], 1), axis=0, return_inverse=True)
        return pairs[:, 0], pairs[:, 1], index.ravel()


def held_out_points(factor: str, x: np.ndarray, d_f: np.ndarray, rule: str) -> np.ndarray:
    """[points] bool: which points are held out from fitting under `rule`.

    'paper' is PAPER.md T1b's bold points: the largest D_f, plus the largest model size, the
    second-largest pretraining checkpoint (209B of 84..283B; 167B of 84..206B) or the largest
    PET size. 'largest_x' / 'largest_d' hold out one edge only; 'none' fits everything.
    """
    if rule not in HELD_OUT_RULES:
        raise ValueError(f"unknown held-out rule {rule!r}; known: {', '.join(HELD_OUT_RULES)}")
    values = np.unique(x)
    held_x = {"largest_x": values[-1], "paper": values[-1]}.get(rule)
    if rule == "paper" and factor == "pretrain_tokens" and len(values) > 2:
        held_x = values[-2]
    held = np.zeros(len(x), bool)
    if held_x is not None and len(values) > 1:
        held |= x == held_x
    if rule in ("paper", "largest_d"):
        held |= d_f == d_f.max()
    return held


@dataclasses.dataclass(frozen=True)
class Points:
    """Point averages of a sweep and the fitting/held-out split. Arrays are [points]."""

    x: np.ndarray
    d_f: np.ndarray
    loss: np.ndarray  # mean over the point's runs
    runs: np.ndarray  # number of runs averaged
    held_out: np.ndarray  # bool


def average_points(sweep: Sweep, rule: str) -> tuple[Points, np.ndarray]:
    """Averages runs per point; returns the points and each run's point index."""
    x, d_f, index = sweep.points()
    runs = np.bincount(index, minlength=len(x))
    loss = np.bincount(index, weights=sweep.loss, minlength=len(x)) / runs
    held = held_out_points(sweep.factor, x, d_f, rule)
    return Points(x=x, d_f=d_f, loss=loss, runs=runs, held_out=held), index


def deviation(law: laws.Law, params, points: Points, held_out: bool) -> float:
    """Mean absolute deviation of the law from the point means (paper's Delta_e / Delta_h)."""
    mask = points.held_out if held_out else ~points.held_out
    if not np.any(mask):
        return float("nan")
    predicted = law(points.x[mask], points.d_f[mask], params)
    return float(np.mean(np.abs(predicted - points.loss[mask])))


@dataclasses.dataclass(frozen=True)
class FactorFit:
    """One factor's fitted law, its errors and bootstrap intervals (all values unrounded)."""

    factor: str
    value: float | None  # the factor value of a single-factor curve; None for joint laws
    law: str
    params: dict[str, float]  # the law's natural parameters for this factor
    fit: fit.Fit  # the fit that produced them (stage 2 for the two-stage procedure)
    points: Points
    delta_e: float
    delta_h: float
    bootstrap: np.ndarray  # [replicates, law params] natural values; NaN where a refit failed
    intervals: dict[str, tuple[float, float]]

    @property
    def bootstrap_ok(self) -> int:
        return int(np.count_nonzero(np.all(np.isfinite(self.bootstrap), axis=1)))


@dataclasses.dataclass(frozen=True)
class SettingFit:
    """All fits of one setting (a task and method): per factor, plus the shared stage 1."""

    procedure: str
    law: str
    held_out_rule: str
    options: fit.FitOptions
    stage1: fit.Fit | None
    factors: dict[str, FactorFit]


@dataclasses.dataclass(frozen=True)
class _Part:
    """A sweep's points inside a (possibly joint) design."""

    sweep: Sweep
    points: Points
    index: np.ndarray  # [runs] point of each run


def _draws(parts, boot: BootstrapOptions):
    if boot.replicates <= 0:
        return None
    fitting = [p.sweep.run_id[~p.points.held_out[p.index]] for p in parts]
    every = [p.sweep.run_id for p in parts]
    return boot_lib.resample_runs(
        np.concatenate(fitting), np.concatenate(every), boot.replicates, boot.seed
    )


def _replicate_data(parts, draws):
    pairs = [
        boot_lib.replicate_points(
            p.sweep.run_id, p.sweep.loss, p.index, p.points.runs, p.points.held_out, draws
        )
        for p in parts
    ]
    return np.concatenate([v for v, _ in pairs], 1), np.concatenate([w for _, w in pairs], 1)


def _fit_part(names, design, parts, fixed, fixed_boot, draws, options, boot):
    """Main fit of a design over `parts`, plus its bootstrap refits ([replicates, names])."""
    target = np.concatenate([p.points.loss for p in parts])
    weight = np.concatenate([~p.points.held_out for p in parts]).astype(float)
    problem = fit.make_problem(names, design, target, weight, fixed)
    main = fit.fit_problem(names, problem, fixed, options)
    if draws is None:
        return main, np.full((0, len(names)), np.nan)
    values, weights = _replicate_data(parts, draws)
    starts = boot_lib.replicate_starts(main, boot)
    return main, boot_lib.refit(names, design, values, weights, fixed_boot or {}, starts, options)


def _factor_fit(law, factor, value, main, part, samples, names, boot) -> FactorFit:
    """Maps a fit's (possibly joint) parameter names onto the law's own names."""
    rename = {n: laws.base_name(n) for n in names if n.endswith(f"[{factor}]") or "[" not in n}
    columns = [names.index(n) for n in rename]
    params = {rename[n]: main.params[n] for n in rename}
    law_samples = samples[:, columns]
    return FactorFit(
        factor=factor,
        value=value,
        law=law.name,
        params=params,
        fit=main,
        points=part.points,
        delta_e=deviation(law, params, part.points, held_out=False),
        delta_h=deviation(law, params, part.points, held_out=True),
        bootstrap=law_samples,
        intervals=boot_lib.intervals(list(params), law_samples, boot.level),
    )


def _check_sweep(part: _Part, free: int) -> None:
    fitting = int(np.count_nonzero(~part.points.held_out))
    if len(np.unique(part.points.x)) < 2 and part.sweep.factor != "finetune_examples":
        raise ScalingInputError(
            f"factor {part.sweep.factor} takes a single value "
            f"({part.points.x[0]:g}); a law in it needs at least two"
        )
    if fitting < free:
        raise ScalingInputError(
            f"{part.sweep.factor}: {fitting} fitting points for {free} parameters"
        )


def _design(law, parts, factors):
    return laws.joint_design(
        law,
        [np.log(p.points.x) for p in parts],
        [np.log(p.points.d_f) for p in parts],
        factors,
    )


def _two_stage(law, parts, options, boot, report) -> tuple[fit.Fit, dict[str, FactorFit]]:
    draws = _draws(list(parts.values()), boot)
    stage1_factors = [f for f in STAGE1_FACTORS if f in parts]
    if not stage1_factors:
        raise ScalingInputError(
            f"the two-stage procedure needs a sweep of {' or '.join(STAGE1_FACTORS)}; "
            f"got {', '.join(parts)}"
        )
    stage1_parts = [parts[f] for f in stage1_factors]
    names, design = _design(law, stage1_parts, stage1_factors)
    stage1, samples1 = _fit_part(names, design, stage1_parts, None, None, draws, options, boot)
    shared = {p: stage1.params[p] for p in law.shared_params}
    shared_boot = {p: samples1[:, names.index(p)] for p in law.shared_params}
    # Replicates whose stage 1 failed carry NaN into stage 2; hold them at the main fit and
    # mark them failed afterwards.
    failed = ~np.all(np.isfinite(samples1), axis=1)
    shared_boot = {p: np.where(failed, shared[p], v) for p, v in shared_boot.items()}
    results = {}
    for factor in report:
        part = parts[factor]
        names2, design2 = _design(law, [part], [factor])
        main, samples = _fit_part(
            names2, design2, [part], shared, shared_boot, draws, options, boot
        )
        samples[failed] = np.nan
        results[factor] = _factor_fit(law, factor, None, main, part, samples, names2, boot)
    return stage1, results


def _free(law, parts, options, boot) -> dict[str, FactorFit]:
    draws = _draws(list(parts.values()), boot)
    results = {}
    for factor, part in parts.items():
        names, design = _design(law, [part], [factor])
        main, samples = _fit_part(names, design, [part], None, None, draws, options, boot)
        results[factor] = _factor_fit(law, factor, None, main, part, samples, names, boot)
    return results


def _single(law, sweeps, rule, options, boot) -> dict[str, FactorFit]:
    """One single-factor curve per factor value; only the D_f part of `rule` applies."""
    d_rule = "largest_d" if rule in ("paper", "largest_d") else "none"
    results = {}
    for factor, sweep in sweeps.items():
        for value in np.unique(sweep.x):
            keep = sweep.x == value
            sub = dataclasses.replace(
                sweep,
                x=sweep.x[keep],
                d_f=sweep.d_f[keep],
                loss=sweep.loss[keep],
                run_id=sweep.run_id[keep],
            )
            points, index = average_points(sub, d_rule)
            part = _Part(sub, points, index)
            _check_sweep(
                dataclasses.replace(
                    part, sweep=dataclasses.replace(sub, factor="finetune_examples")
                ),
                len(law.param_names),
            )
            draws = _draws([part], boot)
            design = law.terms(np.log(points.x), np.log(points.d_f))
            main, samples = _fit_part(
                law.param_names, design, [part], None, None, draws, options, boot
            )
            key = f"{factor}={value:g}"
            results[key] = _factor_fit(
                law, factor, float(value), main, part, samples, law.param_names, boot
            )
    return results


def fit_setting(
    sweeps: dict[str, Sweep],
    law: str = "multiplicative",
    procedure: str = "two_stage",
    held_out_rule: str = "paper",
    options: fit.FitOptions | None = None,
    bootstrap: BootstrapOptions | None = None,
    report: Sequence[str] | None = None,
) -> SettingFit:
    """Fits one setting (a task and a method) by `procedure`.

    Args:
      sweeps: factor name -> its runs ("model_params", "pretrain_tokens", "trainable_params").
      law: "multiplicative" (paper), "additive" or "single".
      procedure: "two_stage" (paper; joint law), "free" (joint law, per factor) or "single"
        (one curve per factor value; requires law "single").
      held_out_rule: one of HELD_OUT_RULES.
      options: loss, residual and optimiser settings.
      bootstrap: bootstrap-by-run settings.

    Returns:
      The setting's fits, errors and intervals.
    """
    options = options or fit.FitOptions()
    bootstrap = bootstrap or BootstrapOptions()
    law_obj = laws.get_law(law)
    _check_request(sweeps, law, procedure, report)
    if procedure == "single":
        chosen = {f: sweeps[f] for f in report or sweeps}
        factors = _single(law_obj, chosen, held_out_rule, options, bootstrap)
        return SettingFit(procedure, law, held_out_rule, options, None, factors)
    parts = {}
    for factor, sweep in sweeps.items():
        points, index = average_points(sweep, held_out_rule)
        parts[factor] = _Part(sweep, points, index)
        _check_sweep(parts[factor], len(law_obj.factor_params))
    stage1, factors = _joint(law_obj, parts, procedure, options, bootstrap, report)
    return SettingFit(procedure, law, held_out_rule, options, stage1, factors)


def _joint(law, parts, procedure, options, boot, report) -> tuple[fit.Fit | None, dict]:
    """(stage 1 or None, {factor: FactorFit}) of a joint law by 'two_stage' or 'free'."""
    if procedure == "two_stage":
        return _two_stage(law, parts, options, boot, report or list(parts))
    for part in parts.values():
        _check_sweep(part, len(law.param_names))
    chosen = {f: parts[f] for f in report or parts}
    return None, _free(law, chosen, options, boot)


def _check_request(sweeps: dict, law: str, procedure: str, report) -> None:
    """Refuses an unknown procedure, a law it cannot fit, or a reported factor with no sweep."""
    if procedure not in PROCEDURES:
        raise ValueError(f"unknown procedure {procedure!r}; known: {', '.join(PROCEDURES)}")
    if (procedure == "single") != (law == "single"):
        raise ValueError("the single-factor law goes with procedure 'single' and only with it")
    if not sweeps:
        raise ScalingInputError("no sweeps to fit")
    if report and not set(report) <= set(sweeps):
        raise ScalingInputError(f"no sweep for {sorted(set(report) - set(sweeps))}")
