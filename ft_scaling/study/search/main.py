"""`ft-scaling search`: run (or continue) an early-stopped search and write its report.

ft-scaling search --gin_file=gin/searches/demo.gin --out=runs/search_demo [--gin.KEY=VALUE ...]
                  [--store=postgresql://USER:PASSWORD@HOST/DB [--lease_seconds=S]]
ft-scaling search report runs/search_demo

--store: several workers (same command on several machines) share one search: its trial rows
and Optuna's storage live in that database (run.py). Without it: OUT/results.sqlite and
OUT/optuna.sqlite, one worker.

Exit status: 0 when done, 3 when training was preempted (SIGTERM; rerun the same command to
continue), 4 when no trial produced a metric.
"""

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from ft_scaling.config import flags

EXIT_PREEMPTED = 3
EXIT_NOTHING = 4


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    bindings, rest = flags.split_gin_bindings(argv)
    parser = argparse.ArgumentParser(
        prog="ft-scaling search", description="early-stopped hyperparameter search (Optuna TPE)"
    )
    flags.add_gin_flags(parser)
    parser.add_argument("--out", required=True, help="search directory (trials, runs, report)")
    parser.add_argument("--no_report", action="store_true", help="skip the report at the end")
    parser.add_argument("--store", default=None, help="SQLAlchemy URL shared by workers")
    parser.add_argument("--lease_seconds", type=float, default=180.0, help="run lease")
    return parser.parse_args(rest), bindings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ft-scaling search`; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    # Our progress lines say what Optuna's INFO lines would, with the metric and an ETA.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from ft_scaling.study import claims as claims_lib
    from ft_scaling.study import execute
    from ft_scaling.study.search import config as search_config
    from ft_scaling.study.search import report as search_report
    from ft_scaling.study.search import run as search_run

    if argv and argv[0] == "report":
        if len(argv) != 2:
            raise SystemExit("usage: ft-scaling search report DIR")
        print(search_report.write_report(argv[1]))
        return 0
    args, bindings = _parse(argv)
    if not args.gin_file:
        raise SystemExit(
            "ft-scaling search: give the search with --gin_file=gin/searches/<name>.gin"
        )
    flags.parse_gin(args.gin_file, bindings, args.gin_search_paths)
    config = search_config.Search()
    start = time.time()
    try:
        claims = claims_lib.ClaimSettings(args.lease_seconds, min(5.0, args.lease_seconds / 4))
        counts = search_run.run_search(config, args.out, args.store, claims)
    except execute.Preempted as err:
        print(f"ft-scaling search: {err}; rerun the same command to continue", file=sys.stderr)
        return EXIT_PREEMPTED
    print(f"search {config.name}: {counts} in {time.time() - start:.0f}s", file=sys.stderr)
    if not args.no_report:
        print(search_report.write_report(args.out))
    return 0 if counts["complete"] + counts["pruned"] else EXIT_NOTHING
