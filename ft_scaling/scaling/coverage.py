"""How often the report's intervals hold the truth, measured on simulated studies of one design.

    studies    S results tables of one design (factor values x D_f values x runs per point),
               drawn from a known multiplicative law with noise on every run
    fits       each study fitted as the report fits it: point means, the held-out rule, summed
               Huber from the grid; all S in one batched L-BFGS solve (the points are the same,
               only the losses differ)
    intervals  the bootstrap drawn exactly as `procedure.fit_setting` draws it (parametric:
               `bootstrap.parametric_points`; by run: `resample_runs`, `replicate_points`),
               refitted from `replicate_starts` by `refit`, all S x B refits in one solve
    coverage   per quantity, the share of studies whose central interval holds the true value:
               alpha, beta, E, and the law at the farthest held-out point (largest X and D_f)

With one factor sweep, the paper's two stages reduce to the joint fit (stage 2 refits A and alpha
on the same points with the stage-1 beta and E, and lands on the same optimum), so the joint
fit's intervals are the report's; `coverage_test.py` checks one study against `fit_setting`.
"""

import dataclasses

import numpy as np

from ft_scaling.scaling import bootstrap, fit, laws, procedure
from ft_scaling.scaling.bootstrap import BootstrapOptions

QUANTITIES = ("alpha", "beta", "E", "held_out_loss")


@dataclasses.dataclass(frozen=True)
class Design:
    """A simulated study: one factor sweep of a multiplicative law with per-run noise.

    Attributes:
      factor_values: the factor's values (e.g. 5 model sizes spanning 16x).
      finetune_examples: the D_f values; every factor value is run at each.
      truth: the law's A, alpha, beta, E.
      runs_per_point: runs (seeds) averaged into a point, as the report averages them.
      noise: relative noise of one run (0.01: 1%).
      noise_kind: "multiplicative" (loss * exp(noise * N)) or "additive" (loss + noise * mean
        loss * N, the same size everywhere).
      factor: the factor's name, which decides the held-out rule's X ('paper').
    """

    factor_values: tuple[float, ...]
    finetune_examples: tuple[float, ...]
    truth: dict[str, float]
    runs_per_point: int = 1
    noise: float = 0.01
    noise_kind: str = "multiplicative"
    factor: str = "model_params"

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """(x [runs], d_f [runs]) of one study, runs of a point next to each other."""
        x, d_f = np.meshgrid(self.factor_values, self.finetune_examples, indexing="ij")
        return np.repeat(x.ravel(), self.runs_per_point), np.repeat(
            d_f.ravel(), self.runs_per_point
        )


def simulate(design: Design, studies: int, seed: int) -> list[procedure.Sweep]:
    """`studies` sweeps of `design`; study s draws its noise from default_rng((seed, s))."""
    x, d_f = design.runs()
    mean = laws.multiplicative(x, d_f, **design.truth)
    sweeps = []
    for study in range(studies):
        normal = np.random.default_rng((seed, study)).standard_normal(len(x))
        if design.noise_kind == "multiplicative":
            loss = mean * np.exp(design.noise * normal)
        elif design.noise_kind == "additive":
            loss = mean + design.noise * mean.mean() * normal
        else:
            raise ValueError(f"noise_kind must be multiplicative or additive: {design.noise_kind}")
        sweeps.append(procedure.Sweep(design.factor, x, d_f, loss, np.arange(len(x))))
    return sweeps


@dataclasses.dataclass(frozen=True)
class StudyFits:
    """The report's fits of S studies of one design and their bootstrap replicates."""

    names: tuple[str, ...]  # the law's parameters, the columns below
    estimates: np.ndarray  # [S, params] best fits, natural values
    samples: np.ndarray  # [S, replicates, params] refits, NaN where one failed
    points: procedure.Points  # of study 0 (x, d_f and held_out are those of every study)


def fit_studies(
    sweeps: list[procedure.Sweep],
    held_out_rule: str,
    options: fit.FitOptions,
    boot: BootstrapOptions,
) -> StudyFits:
    """Fits every study (sweeps of equal points) and its bootstrap, batched."""
    law = laws.get_law("multiplicative")
    averaged = [procedure.average_points(s, held_out_rule) for s in sweeps]
    points, index = averaged[0]
    design = law.terms(np.log(points.x), np.log(points.d_f))
    target = np.stack([p.loss for p, _ in averaged])
    weight = np.broadcast_to((~points.held_out).astype(float), target.shape)
    problem = fit.make_problem(law.param_names, design, target, weight)
    mains = fit.fit_problems(law.param_names, problem, None, options)
    values, weights, starts = [], [], []
    for study, (sweep, main) in enumerate(zip(sweeps, mains, strict=True)):
        value, weight_r = _replicate_data(law, sweep, points, index, main, boot, target[study])
        values.append(value)
        weights.append(weight_r)
        starts.append(bootstrap.replicate_starts(main, boot))
    # A fit may have fewer distinct optima than `warm_starts`: repeat its first start (a
    # duplicate start reaches the same optimum, so the best refit is unchanged).
    width = max(len(s) for s in starts)
    padded = [np.concatenate([s, np.repeat(s[:1], width - len(s), axis=0)]) for s in starts]
    per_replicate = np.repeat(np.stack(padded), boot.replicates, axis=0)  # [S * B, starts, P]
    samples = bootstrap.refit(
        law.param_names, design, np.concatenate(values), np.concatenate(weights), {},
        per_replicate, options,
    )  # fmt: skip
    estimates = np.array([[m.params[n] for n in law.param_names] for m in mains])
    return StudyFits(law.param_names, estimates, samples.reshape(len(sweeps), boot.replicates, -1),
                     points)  # fmt: skip


def _replicate_data(law, sweep, points, index, main, boot, loss):
    """One study's replicate (values, weights) as `procedure.fit_setting` draws them."""
    if boot.method == "run":
        fitting = sweep.run_id[~points.held_out[index]]
        draws = bootstrap.resample_runs(fitting, sweep.run_id, boot.replicates, boot.seed)
        return bootstrap.replicate_points(
            sweep.run_id, sweep.loss, index, points.runs, points.held_out, draws
        )
    fitted = law(points.x, points.d_f, main.params)
    [pair] = bootstrap.parametric_points(
        [fitted], [points.held_out], [loss], len(law.param_names), boot
    )
    return pair


def farthest_held_out(points: procedure.Points) -> tuple[float, float]:
    """(x, d_f) of the held-out point with the largest X, then the largest D_f."""
    held = np.flatnonzero(points.held_out)
    if len(held) == 0:
        raise ValueError("no held-out points: the held-out rule left every point in the fit")
    best = held[np.lexsort((points.d_f[held], points.x[held]))[-1]]
    return float(points.x[best]), float(points.d_f[best])


def interval_bounds(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """[S] low and high central percentiles of [S, replicates] samples (NaN rows skipped)."""
    tail = 50.0 * (1.0 - level)
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail], axis=1)
    return low, high


def coverage(design: Design, fits: StudyFits, level: float) -> dict[str, float]:
    """Share of studies whose `level` interval holds the truth, per quantity in QUANTITIES."""
    law = laws.get_law("multiplicative")
    x, d_f = farthest_held_out(fits.points)
    replicate_params = {n: fits.samples[..., i] for i, n in enumerate(fits.names)}
    quantities = {n: replicate_params[n] for n in ("alpha", "beta", "E")}
    quantities["held_out_loss"] = law(x, d_f, replicate_params)
    truth = {n: design.truth[n] for n in ("alpha", "beta", "E")}
    truth["held_out_loss"] = float(law(x, d_f, design.truth))
    result = {}
    for name in QUANTITIES:
        low, high = interval_bounds(quantities[name], level)
        result[name] = float(np.mean((low <= truth[name]) & (truth[name] <= high)))
    return result
