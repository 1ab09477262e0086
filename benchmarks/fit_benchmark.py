"""Scaling-law fitter speed: batched multi-start L-BFGS vs a plain per-start scipy loop.

    python benchmarks/fit_benchmark.py [--settings 12] [--starts 500] [--bootstrap 200]
                                       [--scipy_sample 300] [--scipy_full]

Workload: `--settings` settings, each a free 4-parameter multiplicative law fitted to its own
paper-like data (6 model sizes x 8 data sizes, 3 runs per point, 1% log-normal noise; the
paper's rule holds out the largest size and D_f, leaving a 5 x 7 fitting grid), from a
`--starts` grid, with `--bootstrap` replicates resampling runs. The vectorised path is exactly
what `ft-scaling fit` runs (`procedure.fit_setting`).

Reference: the same starts, one `scipy.optimize.minimize(method="L-BFGS-B")` call each, on the
same objective (same whitened coordinates, same summed Huber loss and exact gradient, matching
tolerances). Running it on the whole workload takes many minutes, so by default it is timed on
`--scipy_sample` grid starts and as many bootstrap starts of the first setting, and the total
is extrapolated from the measured cost per start (printed as such); `--scipy_full` runs it all.
"""

import argparse
import time

import numpy as np
from scipy import optimize

from ft_scaling.scaling import bootstrap, fit, laws, procedure

MODEL_SIZES = np.geomspace(1e9, 32e9, 6)
DATA_SIZES = np.geomspace(1e4, 10**7.5, 8)
RUNS_PER_POINT = 3


def make_settings(count: int, seed: int = 0) -> list[procedure.Sweep]:
    rng = np.random.default_rng(seed)
    x, d_f = (a.ravel() for a in np.meshgrid(MODEL_SIZES, DATA_SIZES, indexing="ij"))
    x, d_f = np.repeat(x, RUNS_PER_POINT), np.repeat(d_f, RUNS_PER_POINT)
    sweeps = []
    for _ in range(count):
        alpha, beta, e = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6), rng.uniform(0.5, 2.0)
        a = rng.uniform(1, 4) * e * MODEL_SIZES[0] ** alpha * DATA_SIZES[0] ** beta
        loss = laws.multiplicative(x, d_f, a, alpha, beta, e)
        loss *= np.exp(0.01 * rng.standard_normal(len(x)))
        sweeps.append(procedure.Sweep("model_params", x, d_f, loss, np.arange(len(x))))
    return sweeps


def run_vectorised(sweeps, options, boot) -> tuple[float, list[procedure.SettingFit]]:
    start = time.perf_counter()
    fits = [
        procedure.fit_setting({"model_params": s}, "multiplicative", "free", "paper", options, boot)
        for s in sweeps
    ]
    return time.perf_counter() - start, fits


def _scipy_loop(problem: fit.Problem, starts: np.ndarray, options: fit.FitOptions):
    """One scipy L-BFGS-B call per (replicate, start): (seconds, best loss per replicate)."""
    objective = fit.Objective(problem, options, starts.shape[1])
    tolerances = {"maxiter": options.optimizer.max_iter, "gtol": options.optimizer.gtol,
                  "ftol": options.optimizer.ftol}  # fmt: skip
    best = np.full(starts.shape[0], np.inf)
    begin = time.perf_counter()
    for replicate in range(starts.shape[0]):
        for index in range(starts.shape[1]):
            row = np.array([replicate * starts.shape[1] + index])
            fun = lambda z, row=row: tuple(v[0] for v in objective(z[None], row))
            z0 = starts[replicate, index] @ objective.whiten.T
            result = optimize.minimize(fun, z0, jac=True, method="L-BFGS-B", options=tolerances)
            best[replicate] = min(best[replicate], result.fun)
    return time.perf_counter() - begin, best


def run_scipy(sweep, setting_fit, options, boot, grid_sample, replicates):
    """Times scipy on part of the first setting's work; returns per-start costs and a check."""
    points, _ = procedure.average_points(sweep, "paper")
    law = laws.get_law("multiplicative")
    design = law.terms(np.log(points.x), np.log(points.d_f))
    weight = (~points.held_out).astype(float)
    problem = fit.make_problem(law.param_names, design, points.loss, weight)
    main = setting_fit.factors["model_params"].fit
    grid = main.starts.init[:: max(1, len(main.starts.init) // grid_sample)][:grid_sample]
    grid_seconds, scipy_best = _scipy_loop(problem, grid[None], options)
    # Bootstrap replicates: the same starts every replicate of the vectorised path uses.
    draws = bootstrap.resample_runs(sweep.run_id, sweep.run_id, replicates, boot.seed)
    _, index = procedure.average_points(sweep, "paper")
    values, weights = bootstrap.replicate_points(
        sweep.run_id, sweep.loss, index, points.runs, points.held_out, draws
    )
    starts = bootstrap.replicate_starts(main, boot)
    boot_problem = fit.make_problem(law.param_names, design, values, weights)
    every = np.broadcast_to(starts, (replicates,) + starts.shape)
    boot_seconds, _ = _scipy_loop(boot_problem, every, options)
    per_boot = boot_seconds / (replicates * len(starts))
    return grid_seconds / len(grid), per_boot, scipy_best[0], len(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", type=int, default=12)
    parser.add_argument("--starts", type=int, default=500)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--scipy_sample", type=int, default=300, help="grid starts timed")
    parser.add_argument("--scipy_full", action="store_true", help="run scipy on everything")
    args = parser.parse_args()
    options = fit.FitOptions(n_starts=args.starts)
    boot = procedure.BootstrapOptions(replicates=args.bootstrap)
    sweeps = make_settings(args.settings)
    seconds, fits = run_vectorised(sweeps, options, boot)
    grid_starts = len(fits[0].factors["model_params"].fit.starts.init)
    print(f"vectorised: {args.settings} settings x ({grid_starts}-start grid + {args.bootstrap} "
          f"bootstrap refits): {seconds:.2f} s")  # fmt: skip
    grid_sample = grid_starts if args.scipy_full else min(args.scipy_sample, grid_starts)
    replicates = args.bootstrap if args.scipy_full else max(1, grid_sample // 8)
    per_grid, per_boot, scipy_best, boot_starts = run_scipy(
        sweeps[0], fits[0], options, boot, grid_sample, replicates
    )
    ours = fits[0].factors["model_params"].fit.loss
    total_starts = args.settings * (
        grid_starts * per_grid + args.bootstrap * boot_starts * per_boot
    )
    kind = "measured" if args.scipy_full else "extrapolated"
    print(f"scipy per-start loop: {per_grid * 1e3:.2f} ms per grid start, "
          f"{per_boot * 1e3:.2f} ms per bootstrap start (timed on {grid_sample} grid starts and "
          f"{replicates} x {boot_starts} bootstrap starts of setting 0)")  # fmt: skip
    print(f"scipy total for the same work ({kind}): {total_starts:.1f} s")
    print(f"speed-up: {total_starts / seconds:.1f}x")
    print(f"check, setting 0 best loss: vectorised {ours:.12g}, scipy {scipy_best:.12g} "
          f"(on its {grid_sample} starts)")  # fmt: skip


if __name__ == "__main__":
    main()
