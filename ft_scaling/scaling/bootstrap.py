"""Bootstrap intervals: redraw the data (parametric, or by run), refit from warm starts.

Two ways to redraw a setting's data, `BootstrapOptions.method`:

    run (default)   runs redrawn with replacement (`resample_runs`, `replicate_points`)
    parametric      every fitting point's mean redrawn as fitted * exp(sigma * N(0, 1)), sigma
                    the RMS log residual of the main fits over the setting's fitting points with
                    the free parameters' degrees of freedom removed (`parametric_points`)

Measured coverage of 90% intervals on 100 simulated studies of the paper's design (5 model sizes
over 16x, 6 D_f over 1000x, alpha 0.03, beta 0.1, 1% noise, one run per point; see
`report.MEASURED_COVERAGE` and tests/scaling/coverage_test.py): by run 94-99% (wide for beta and
E: 20 points redrawn with replacement leave about 13 distinct ones, and the summed-Huber fit,
nearly least absolute deviations at delta 1e-3, swings more than between independent studies);
parametric 88-96%. But on the paper's own grids (three runs per point, two stages, three sweeps;
tests/scaling/paper_refit_test.py) the parametric 99% interval of the model-size alpha missed
the truth in 2 of 9 settings where by run missed none, so by run stays the default.

By run: runs are redrawn with replacement from the fitting runs of a whole setting, once per
replicate and shared by all its sweeps, so the paper's two stages see the same resample. A point's
replicate value is the mean of its redrawn runs and its weight the redraw count over its run
count (1 in expectation, as in the main fit). With one run per point this is the classical
pairs bootstrap; with the paper's three runs per point it also carries the seed noise.

Replicates are refitted from the best distinct optima of the main fit plus an evenly thinned
subset of its grid (`replicate_starts`) rather than from the whole grid: the grid's job, finding
the basin, is mostly done once, while the grid subset keeps replicates free to leave a basin
that only the original data favoured (e.g. E pushed to 0 when beta is small and E and A trade
off). All replicates of a setting then run as one batched L-BFGS solve.
"""

import dataclasses

import numpy as np

from ft_scaling.scaling import fit, laws, lbfgs


@dataclasses.dataclass(frozen=True)
class BootstrapOptions:
    """Bootstrap settings. `replicates=0` switches it off; `method` is one of METHODS."""

    replicates: int = 200
    warm_starts: int = 4  # distinct optima of the main fit that start every replicate
    grid_starts: int = 4  # plus this many grid points, evenly thinned from the main grid
    level: float = 0.95  # central percentile interval
    seed: int = 0
    method: str = "run"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"bootstrap method must be one of {METHODS}, got {self.method!r}")


METHODS = ("parametric", "run")


def parametric_points(fitted, held_out, loss, free_params: int, boot: "BootstrapOptions"):
    """Parametric replicate values and weights, both [replicates, points], of several parts.

    Args:
      fitted, held_out, loss: per part, [points] the main fit's law, held-out mask and the
        measured point means.
      free_params: parameters fitted to these points together (degrees of freedom removed).
      boot: replicates and seed.

    Returns:
      One (values, weights) per part; all weights 0 (every refit failed: no interval) when the
      points leave no degree of freedom to estimate the noise from.
    """
    fitting = ~np.concatenate(held_out)
    fitted_all = np.concatenate(fitted)
    log_residual = np.log(np.concatenate(loss) / fitted_all)[fitting]
    dof = len(log_residual) - free_params
    sigma = np.sqrt(np.sum(log_residual**2) / dof) if dof > 0 else 0.0
    noise = np.random.default_rng(boot.seed).standard_normal((boot.replicates, len(fitted_all)))
    values = fitted_all * np.exp(sigma * noise)
    weights = np.broadcast_to(fitting & (dof > 0), values.shape).astype(float)
    bounds = np.cumsum([len(f) for f in fitted])[:-1]
    return list(zip(np.split(values, bounds, 1), np.split(weights, bounds, 1), strict=True))


def resample_runs(
    fitting_runs: np.ndarray, all_runs: np.ndarray, replicates: int, seed: int
) -> dict[int, np.ndarray]:
    """Redraw counts {run id: [replicates]}: n draws from the n fitting runs; others get 0."""
    rng = np.random.default_rng(seed)
    unique = np.unique(fitting_runs)
    counts = rng.multinomial(len(unique), np.full(len(unique), 1.0 / len(unique)), replicates)
    draws = {int(r): np.zeros(replicates, int) for r in np.unique(all_runs)}
    draws.update({int(r): counts[:, i] for i, r in enumerate(unique)})
    return draws


def replicate_points(run_id, loss, index, runs_per_point, held_out, draws):
    """Per-replicate point values and weights, both [replicates, points].

    Args:
      run_id: [runs] run ids of a sweep; loss: [runs] their losses.
      index: [runs] point of each run; runs_per_point: [points] runs averaged in the main fit.
      held_out: [points] bool; held-out points get weight 0.
      draws: from `resample_runs`.
    """
    counts = np.stack([draws[int(r)] for r in run_id], axis=1)  # [replicates, runs]
    shape = (counts.shape[0], len(runs_per_point))
    total, drawn = np.zeros(shape), np.zeros(shape)
    np.add.at(total.T, index, (counts * loss).T)
    np.add.at(drawn.T, index, counts.T)
    value = np.where(drawn > 0, total / np.maximum(drawn, 1), 1.0)  # 1.0: placeholder, weight 0
    weight = np.where(held_out, 0.0, drawn / runs_per_point)
    return value, weight


def warm_starts(result: fit.Fit, count: int) -> np.ndarray:
    """Up to `count` distinct optima of a fit (converged first, best first): [starts, P]."""
    starts = result.starts
    ok = np.isin(starts.status, [lbfgs.STATUS_NAMES[s] for s in lbfgs.CONVERGED_STATUSES])
    order = np.lexsort((np.where(np.isfinite(starts.loss), starts.loss, np.inf), ~ok))
    chosen: list[np.ndarray] = []
    for i in order:
        candidate = starts.final[i]
        if all(np.max(np.abs(candidate - c)) > 1e-3 for c in chosen):
            chosen.append(candidate)
        if len(chosen) == count:
            break
    return np.stack(chosen)


def replicate_starts(result: fit.Fit, boot: BootstrapOptions) -> np.ndarray:
    """Starts of every replicate: distinct optima of `result` and a thinned grid, [S, P]."""
    grid = result.starts.init
    thinned = grid[np.linspace(0, len(grid) - 1, min(boot.grid_starts, len(grid))).astype(int)]
    return np.concatenate([warm_starts(result, boot.warm_starts), thinned])


def identifiable(problem: fit.Problem) -> np.ndarray:
    """[replicates] bool: a replicate's positive-weight points determine every free parameter."""
    # log D_l has no design column (it enters through the rectifier); the rest must have rank.
    linear = [i for i, n in enumerate(problem.names) if laws.base_name(n) != laws.PRE_LEARNED]
    mask = np.repeat((problem.weight > 0)[:, None, :], problem.design.shape[0], axis=1)
    stacked = problem.design[None][..., linear] * mask[..., None]  # [replicates, terms, points, P]
    flat = stacked.reshape(len(mask), -1, len(linear))
    return np.linalg.matrix_rank(flat) == len(linear)


def refit(names, design, values, weights, fixed, starts, options) -> np.ndarray:
    """Refits every replicate; returns [replicates, names] natural values, NaN where it failed.

    Args:
      names: all parameter names of `design` (free and fixed).
      design: [terms, points, names].
      values, weights: [replicates, points] from `replicate_points`.
      fixed: name -> [replicates] natural values held fixed (may be empty).
      starts: [S, free params] warm starts in fitted coordinates.
      options: fit options.
    """
    problem = fit.make_problem(names, design, values, weights, fixed)
    solution = fit.solve(problem, starts, options)
    best = solution.best()
    rows = np.arange(len(best))
    free_values = fit.natural(problem.names, solution.theta[rows, best])
    ok = np.isin(solution.status[rows, best], lbfgs.CONVERGED_STATUSES) & identifiable(problem)
    result = np.empty((len(best), len(names)))
    for column, name in enumerate(names):
        if name in problem.names:
            result[:, column] = free_values[:, problem.names.index(name)]
        else:
            result[:, column] = fixed[name]
    result[~ok] = np.nan
    return result


def intervals(names, samples: np.ndarray, level: float) -> dict[str, tuple[float, float]]:
    """Central percentile intervals per parameter over the successful replicates."""
    ok = np.all(np.isfinite(samples), axis=1)
    if np.count_nonzero(ok) < 2:
        return {n: (float("nan"), float("nan")) for n in names}
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(samples[ok], [tail, 100.0 - tail], axis=0)
    return {n: (float(lo), float(hi)) for n, lo, hi in zip(names, low, high, strict=True)}


def law_intervals(law, names, samples: np.ndarray, x, d_f, level: float) -> np.ndarray:
    """[points, 2] central percentile intervals of the law's value at (x, d_f) [points] over
    the successful replicates' laws (NaN with fewer than two)."""
    ok = samples[np.all(np.isfinite(samples), axis=1)]
    x, d_f = np.asarray(x, np.float64), np.asarray(d_f, np.float64)
    if len(ok) < 2:
        return np.full((len(x), 2), np.nan)
    values = law(x[None, :], d_f[None, :], {n: ok[:, i, None] for i, n in enumerate(names)})
    tail = 50.0 * (1.0 - level)
    return np.percentile(values, [tail, 100.0 - tail], axis=0).T
