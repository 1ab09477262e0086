"""Bootstrap by run: redraw runs (not points), rebuild point means, refit from warm starts.

Runs are redrawn with replacement from the fitting runs of a whole setting, once per replicate
and shared by all its sweeps, so the paper's two stages see the same resample. A point's
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

from ft_scaling.scaling import fit, lbfgs


@dataclasses.dataclass(frozen=True)
class BootstrapOptions:
    """Bootstrap by run. `replicates=0` switches it off."""

    replicates: int = 200
    warm_starts: int = 4  # distinct optima of the main fit that start every replicate
    grid_starts: int = 4  # plus this many grid points, evenly thinned from the main grid
    level: float = 0.95  # central percentile interval
    seed: int = 0


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
    mask = np.repeat((problem.weight > 0)[:, None, :], problem.design.shape[0], axis=1)
    stacked = problem.design[None] * mask[..., None]  # [replicates, terms, points, P]
    flat = stacked.reshape(len(mask), -1, problem.design.shape[-1])
    return np.linalg.matrix_rank(flat) == problem.design.shape[-1]


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
