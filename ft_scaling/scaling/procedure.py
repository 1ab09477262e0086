"""Fitting procedures over sweeps of runs: the paper's two stages, free fits, bootstrap by run.

A `Sweep` is the runs along one factor (model size, pretraining tokens or PET size) of one task
and method. Runs at the same (X, D_f) form a point; the fit uses the mean of a point's runs
(the paper averages three runs per point, PAPER.md §2) with weight 1.

    two_stage (paper, §5):  stage 1  joint law over the model-size and pretraining sweeps with
                                     (A_X, alpha_X) per factor and the D_f part (beta, E) shared
                            stage 2  (beta, E) fixed, (A_X, alpha_X) refitted for every factor
    free:                   every factor's law fitted with all parameters free
    single:                 L = A D_f^-beta + E fitted for each factor value separately

Bootstrap intervals come from `bootstrap.py` (parametric or by run; one redraw per replicate
shared by all sweeps of a setting, so the two stages see the same replicate data).
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
class Prediction:
    """The fitted law at one held-out point: measured mean, prediction and its interval."""

    x: float
    d_f: float
    measured: float
    predicted: float
    interval: tuple[float, float]  # bootstrap interval of the prediction (NaN without one)


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
    held_out: tuple[Prediction, ...] = ()  # every held-out point, in point order

    @property
    def farthest_held_out(self) -> Prediction | None:
        """The held-out prediction at the largest X, then the largest D_f (None without one)."""
        return max(self.held_out, key=lambda p: (p.x, p.d_f), default=None)

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
    if boot.replicates <= 0 or boot.method != "run":
        return None
    fitting = [p.sweep.run_id[~p.points.held_out[p.index]] for p in parts]
    every = [p.sweep.run_id for p in parts]
    return boot_lib.resample_runs(
        np.concatenate(fitting), np.concatenate(every), boot.replicates, boot.seed
    )


def _replicate_data(law, parts, fitted, free_params, boot):
    """{factor: (values, weights) [replicates, points]} of the setting's bootstrap, or None.

    `fitted` holds each part's main-fit params (the reported law); `free_params` counts the
    parameters the setting's main fits estimated from these points (for the noise estimate).
    """
    if boot.replicates <= 0:
        return None
    if boot.method == "run":
        draws = _draws(list(parts.values()), boot)
        return {
            factor: boot_lib.replicate_points(
                p.sweep.run_id, p.sweep.loss, p.index, p.points.runs, p.points.held_out, draws
            )
            for factor, p in parts.items()
        }
    pairs = boot_lib.parametric_points(
        [law(p.points.x, p.points.d_f, fitted[f]) for f, p in parts.items()],
        [p.points.held_out for p in parts.values()],
        [p.points.loss for p in parts.values()],
        free_params,
        boot,
    )
    return dict(zip(parts, pairs, strict=True))


def _main_fit(names, design, parts, fixed, options) -> fit.Fit:
    target = np.concatenate([p.points.loss for p in parts])
    weight = np.concatenate([~p.points.held_out for p in parts]).astype(float)
    problem = fit.make_problem(names, design, target, weight, fixed)
    return fit.fit_problem(names, problem, fixed, options)


def _refits(names, design, main, data, fixed_boot, options, boot) -> np.ndarray:
    """[replicates, names] bootstrap refits of `main` on per-part replicate `data`."""
    if data is None:
        return np.full((0, len(names)), np.nan)
    values = np.concatenate([v for v, _ in data], 1)
    weights = np.concatenate([w for _, w in data], 1)
    starts = boot_lib.replicate_starts(main, boot)
    return boot_lib.refit(names, design, values, weights, fixed_boot or {}, starts, options)


def _law_params(main: fit.Fit, names, factor: str) -> dict[str, float]:
    """The law's own parameters for `factor` out of a (possibly joint) fit's names."""
    return {laws.base_name(n): main.params[n] for n in _own_names(names, factor)}


def _own_names(names, factor: str) -> list[str]:
    return [n for n in names if n.endswith(f"[{factor}]") or "[" not in n]


def _factor_fit(law, factor, value, main, part, samples, names, boot) -> FactorFit:
    """Maps a fit's (possibly joint) parameter names onto the law's own names."""
    rename = {n: laws.base_name(n) for n in _own_names(names, factor)}
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
        held_out=_predictions(law, params, part.points, law_samples, boot.level),
    )


def _predictions(law, params, points: Points, samples, level) -> tuple[Prediction, ...]:
    """The law and its bootstrap interval at every held-out point."""
    held = points.held_out
    x, d_f = points.x[held], points.d_f[held]
    predicted = law(x, d_f, params)
    bounds = boot_lib.law_intervals(law, list(params), samples, x, d_f, level)
    return tuple(
        Prediction(float(a), float(b), float(m), float(p), (float(lo), float(hi)))
        for a, b, m, p, (lo, hi) in zip(x, d_f, points.loss[held], predicted, bounds, strict=True)
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
    stage1_factors = [f for f in STAGE1_FACTORS if f in parts]
    if not stage1_factors:
        raise ScalingInputError(
            f"the two-stage procedure needs a sweep of {' or '.join(STAGE1_FACTORS)}; "
            f"got {', '.join(parts)}"
        )
    stage1_parts = [parts[f] for f in stage1_factors]
    names, design = _design(law, stage1_parts, stage1_factors)
    stage1 = _main_fit(names, design, stage1_parts, None, options)
    shared = {p: stage1.params[p] for p in law.shared_params}
    stage2 = {}
    for factor in report:
        names2, design2 = _design(law, [parts[factor]], [factor])
        stage2[factor] = (names2, design2, _main_fit(names2, design2, [parts[factor]], shared,
                                                     options))  # fmt: skip
    # The parametric redraw centres on the reported law of each sweep (stage 2), or stage 1's
    # where a stage-1 sweep is not reported; shared parameters count once.
    fitted = {f: _law_params(stage1, names, f) for f in stage1_factors}
    fitted.update({f: _law_params(main, n, f) for f, (n, _, main) in stage2.items()})
    free = len(law.shared_params) + len(law.factor_params) * len(set(stage1_factors) | set(report))
    # Runs are redrawn from every sweep of the setting (as the recorded fits did); the
    # parametric redraw needs a fitted law, so only fitted sweeps.
    chosen = {f: parts[f] for f in dict.fromkeys([*stage1_factors, *report])}
    data = _replicate_data(law, parts if boot.method == "run" else chosen, fitted, free, boot)
    samples1 = _refits(names, design, stage1, data and [data[f] for f in stage1_factors], None,
                       options, boot)  # fmt: skip
    shared_boot = {p: samples1[:, names.index(p)] for p in law.shared_params}
    # Replicates whose stage 1 failed carry NaN into stage 2; hold them at the main fit and
    # mark them failed afterwards.
    failed = ~np.all(np.isfinite(samples1), axis=1)
    shared_boot = {p: np.where(failed, shared[p], v) for p, v in shared_boot.items()}
    results = {}
    for factor, (names2, design2, main) in stage2.items():
        samples = _refits(names2, design2, main, data and [data[factor]], shared_boot, options,
                          boot)  # fmt: skip
        samples[failed] = np.nan
        results[factor] = _factor_fit(law, factor, None, main, parts[factor], samples, names2,
                                      boot)  # fmt: skip
    return stage1, results


def _free(law, parts, options, boot) -> dict[str, FactorFit]:
    fits = {}
    for factor, part in parts.items():
        names, design = _design(law, [part], [factor])
        fits[factor] = (names, design, _main_fit(names, design, [part], None, options))
    fitted = {f: _law_params(main, n, f) for f, (n, _, main) in fits.items()}
    data = _replicate_data(law, parts, fitted, len(law.param_names) * len(parts), boot)
    results = {}
    for factor, (names, design, main) in fits.items():
        samples = _refits(names, design, main, data and [data[factor]], None, options, boot)
        results[factor] = _factor_fit(law, factor, None, main, parts[factor], samples, names,
                                      boot)  # fmt: skip
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
            design = law.terms(np.log(points.x), np.log(points.d_f))
            main = _main_fit(law.param_names, design, [part], None, options)
            data = _replicate_data(law, {factor: part}, {factor: main.params},
                                   len(law.param_names), boot)  # fmt: skip
            samples = _refits(law.param_names, design, main, data and [data[factor]], None,
                              options, boot)  # fmt: skip
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
