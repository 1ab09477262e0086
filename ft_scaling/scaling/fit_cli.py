"""`ft-scaling fit`: fit scaling laws to a results table and write fit.json, summary.md, plots.

    ft-scaling fit runs/demo/results.csv --law multiplicative --factor model_params \
        --metric test_loss --group task,method --out runs/fit

Each group (by default a task and a method) is one setting: its factor sweeps are cut from the
table (`results_table.py`), fitted by the chosen procedure with bootstrap intervals
(`procedure.py`), analysed for saturation, and, across the groups that differ only in
`method`, compared for the critical finetuning data size (`analysis.py`). This module only
parses the flags: `table_fit.fit_table` fits, `report.write_outputs` writes.
"""

import argparse
import sys

from ft_scaling.scaling import bootstrap, fit, laws, procedure, report, table_fit
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
    parser.add_argument(
        "--bootstrap_method", default="run", choices=bootstrap.METHODS,
        help="redraw runs (run) or point means from the fitted law (parametric)",
    )  # fmt: skip
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


def options(args: argparse.Namespace) -> table_fit.TableFitOptions:
    """The flags as `table_fit.TableFitOptions`."""
    return table_fit.TableFitOptions(
        law=args.law,
        procedure=args.procedure,
        factors=None if args.factor == "all" else tuple(args.factor.split(",")),
        metric=args.metric,
        group=tuple(c for c in args.group.split(",") if c),
        held_out=args.held_out,
        fit=fit.FitOptions(
            loss=args.loss, delta=args.delta, residual=args.residual, n_starts=args.starts
        ),
        bootstrap=procedure.BootstrapOptions(
            replicates=args.bootstrap, seed=args.seed, method=args.bootstrap_method
        ),
        saturation_threshold=args.saturation_threshold,
    )


def run(args: argparse.Namespace) -> int:
    """Fits the table, writes OUT/fit.json, summary.md, starts.csv and the plots."""
    fit_options = options(args)
    result = table_fit.fit_table(tables.read_table(args.results), fit_options)
    config = report.config_summary(fit_options, args.results, plots=not args.no_plots)
    report.write_outputs(args.out, result, config, plots=not args.no_plots)
    print(f"wrote {args.out}/fit.json, summary.md, starts.csv ({len(result.settings)} settings)")
    if result.not_converged:
        print(f"warning: best fit did not converge for {result.not_converged}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `ft-scaling fit`; bad input exits 2 with the message on stderr."""
    args = parse_args(argv)
    try:
        return run(args)
    except (ScalingInputError, FileNotFoundError) as error:
        print(f"ft-scaling fit: error: {error}", file=sys.stderr)
        return 2
