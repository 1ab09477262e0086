"""`ft-scaling fit`: fit scaling laws to a results table and write fit.json, summary.md, plots.

    ft-scaling fit runs/demo/results.csv --law multiplicative --factor model_params \
        --metric test_loss --group task,method --out runs/fit

Each group (by default a task and a method) is one setting: its factor sweeps are cut from the
table (`results_table.py`), fitted by the chosen procedure with bootstrap intervals
(`procedure.py`), analysed for saturation, and, across the groups that differ only in
`method`, compared for the critical finetuning data size (`analysis.py`).
"""

import argparse
import itertools
import os
import sys

import numpy as np

from ft_scaling.scaling import analysis, fit, laws, plots, procedure, report
from ft_scaling.scaling import results_table as tables
from ft_scaling.scaling.errors import ScalingInputError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ft-scaling fit", description=__doc__.split("\n")[0])
    parser.add_argument("results", help="results CSV (DESIGN.md §3 columns)")
    parser.add_argument("--law", default="multiplicative", choices=sorted(laws.LAWS))
    parser.add_argument(
        "--procedure",
        choices=procedure.PROCEDURES,
        help="default: two_stage for joint laws, single for --law single",
    )
    parser.add_argument(
        "--factor", default="all", help="comma-separated factors, or 'all' (those with >= 2 values)"
    )
    parser.add_argument("--metric", default="test_loss")
    parser.add_argument("--group", default="task,method", help="comma-separated columns")
    parser.add_argument("--held_out", default="paper", choices=procedure.HELD_OUT_RULES)
    parser.add_argument("--loss", default="huber", choices=("huber", "squared"))
    parser.add_argument("--delta", type=float, default=1e-3, help="Huber delta")
    parser.add_argument(
        "--residual",
        default="raw",
        choices=("raw", "log"),
        help="raw: L_hat - L (paper); log: log L_hat - log L (Chinchilla)",
    )
    parser.add_argument("--starts", type=int, default=500, help="initialisation grid size")
    parser.add_argument("--bootstrap", type=int, default=200, help="replicates (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--saturation_threshold",
        type=float,
        default=0.01,
        help="relative loss gain per doubling of D_f that counts as saturated",
    )
    parser.add_argument("--no_plots", action="store_true")
    parser.add_argument("--out", required=True, help="output directory")
    return parser.parse_args(argv)  # fmt: skip


def _saturations(setting: procedure.SettingFit, threshold: float) -> dict:
    """{factor key: [analysis.Saturation per factor value]}: fitted (with the bootstrap
    replicates' interval) and empirical saturation D_f."""
    result = {}
    for key, factor_fit in setting.factors.items():
        law, points = laws.get_law(factor_fit.law), factor_fit.points
        result[key] = []
        for value in np.unique(points.x):
            at = points.x == value
            measured = (points.d_f[at], points.loss[at])
            result[key].append(
                analysis.saturation(
                    law, factor_fit.params, value, threshold, factor_fit.bootstrap, measured
                )
            )
    return result


def _saturation_document(saturations: dict, threshold: float) -> dict:
    """fit.json's saturation entry: {factor key: {X (rounded, a label): values}}."""
    by_factor = {
        key: {f"{s.x:g}": _saturation_entry(s) for s in per_value}
        for key, per_value in saturations.items()
    }
    return {"threshold": threshold, "by_factor": by_factor}


def _saturation_entry(saturation: analysis.Saturation) -> dict:
    return {
        "x": saturation.x,
        "fitted": saturation.d_f,
        "status": saturation.status,
        "interval": list(saturation.interval),
        "bootstrap_ok": saturation.replicates,
        "empirical": saturation.empirical,
        "gain_at_largest": saturation.gain_at_largest,
    }


def _exponents(setting: procedure.SettingFit) -> dict:
    samples = {}
    for key, factor_fit in setting.factors.items():
        if factor_fit.value is None and "alpha" in factor_fit.params:
            samples[key] = factor_fit.bootstrap[:, list(factor_fit.params).index("alpha")]
    pairs = analysis.exponent_comparison(samples)
    return {f"P(alpha[{a}] > alpha[{b}])": p for (a, b), p in pairs.items()}


def _comparisons(fitted: list[tuple[dict, procedure.SettingFit]], args) -> list[dict]:
    """Critical D_f between every pair of methods of the same other group keys and factor."""
    if args.law == "single":
        return []
    by_rest: dict[tuple, dict[str, procedure.SettingFit]] = {}
    for group, setting in fitted:
        if "method" in group:
            rest = tuple((k, v) for k, v in group.items() if k != "method")
            by_rest.setdefault(rest, {})[group["method"]] = setting
    law = laws.get_law(args.law)
    out = []
    for rest, methods in by_rest.items():
        for (m1, s1), (m2, s2) in itertools.combinations(sorted(methods.items()), 2):
            for factor in sorted(set(s1.factors) & set(s2.factors)):
                f1, f2 = s1.factors[factor], s2.factors[factor]
                xs = np.unique(np.concatenate([f1.points.x, f2.points.x]))
                crossings = [analysis.critical_data_size(law, f1.params, f2.params, x) for x in xs]
                closed = (
                    analysis.closed_form_critical(f1.params, f2.params)
                    if args.law == "multiplicative" else (float("nan"),) * 2
                )  # fmt: skip
                out.append({
                    "group": dict(rest), "factor": factor, "pair": [m1, m2],
                    "closed_form": {"H": closed[0], "gamma": closed[1]},
                    "crossings": [
                        {"x": c.x, "roots": list(c.roots), "status": c.status} for c in crossings
                    ],
                    "_fits": {m1: f1, m2: f2}, "_crossings": crossings,
                })  # fmt: skip
    return out


def _plot(fitted, comparisons, out_dir: str, saturations: list[dict]) -> list[str]:
    paths = []
    for (group, setting), saturation in zip(fitted, saturations, strict=True):
        label = "_".join(str(v) for v in group.values()) or "all"
        by_factor: dict[str, list] = {}
        marks: dict[str, list] = {}
        for key, factor_fit in setting.factors.items():
            by_factor.setdefault(factor_fit.factor, []).append(factor_fit)
            marks.setdefault(factor_fit.factor, []).extend(saturation[key])
        for factor, fits in by_factor.items():
            title = f"{', '.join(map(str, group.values()))}: {setting.law} law, {factor}"
            stem = os.path.join(out_dir, f"{label}_{factor}")
            paths += plots.plot_factor_fit(fits, title, stem, marks[factor])
    for c in comparisons:
        x_value = min(cr.x for cr in c["_crossings"])
        label = "_".join(str(v) for v in c["group"].values()) or "all"
        stem = os.path.join(out_dir, f"compare_{label}_{c['factor']}_{'_vs_'.join(c['pair'])}")
        crossings = {tuple(c["pair"]): c["_crossings"]}
        title = f"{label}: {c['pair'][0]} vs {c['pair'][1]} ({c['factor']})"
        paths += plots.plot_method_comparison(c["_fits"], x_value, crossings, title, stem)
    return paths


def run(args: argparse.Namespace) -> int:
    table = tables.read_table(args.results)
    factors = None if args.factor == "all" else args.factor.split(",")
    proc = args.procedure or ("single" if args.law == "single" else "two_stage")
    options = fit.FitOptions(
        loss=args.loss, delta=args.delta, residual=args.residual, n_starts=args.starts
    )
    boot = procedure.BootstrapOptions(replicates=args.bootstrap, seed=args.seed)
    fitted, skipped, documents, saturations = [], [], [], []
    for group, rows in tables.groups(table, [c for c in args.group.split(",") if c]):
        try:
            sweeps = tables.sweeps_for_rows(table, rows, factors, args.metric)
        except ScalingInputError as error:
            if factors is None or "single value" not in str(error):
                raise
            skipped.append({"group": group, "reason": str(error)})
            continue
        if proc == "two_stage":  # stage 1 always pools the model-size and pretraining sweeps
            sweeps = tables.sweeps_for_rows(table, rows, None, args.metric) | sweeps
        setting = procedure.fit_setting(
            sweeps, args.law, proc, args.held_out, options, boot, report=list(factors or sweeps)
        )
        fitted.append((group, setting))
        saturations.append(_saturations(setting, args.saturation_threshold))
        extra = {"saturation": _saturation_document(saturations[-1], args.saturation_threshold),
                 "exponent_comparison": _exponents(setting)}  # fmt: skip
        documents.append(report.setting_summary(group, setting, extra))
    if not fitted:
        raise ScalingInputError(f"nothing to fit: {skipped}")
    comparisons = _comparisons(fitted, args)
    os.makedirs(args.out, exist_ok=True)
    public = [{k: v for k, v in c.items() if not k.startswith("_")} for c in comparisons]
    config = {k: v for k, v in vars(args).items() if k != "out"} | {"procedure": proc}
    report.write_json(os.path.join(args.out, "fit.json"),
                      {"config": config, "settings": documents, "comparisons": public,
                       "skipped": skipped})  # fmt: skip
    with open(os.path.join(args.out, "summary.md"), "w") as handle:
        handle.write(report.markdown(fitted, public))
    report.write_starts(os.path.join(args.out, "starts.csv"), fitted)
    if not args.no_plots:
        _plot(fitted, comparisons, args.out, saturations)
    not_converged = [g for g, s in fitted for f in s.factors.values() if not f.fit.converged]
    print(f"wrote {args.out}/fit.json, summary.md, starts.csv ({len(fitted)} settings)")
    if not_converged:
        print(f"warning: best fit did not converge for {not_converged}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `ft-scaling fit`; bad input exits 2 with the message on stderr."""
    args = parse_args(argv)
    try:
        return run(args)
    except (ScalingInputError, FileNotFoundError) as error:
        print(f"ft-scaling fit: error: {error}", file=sys.stderr)
        return 2
