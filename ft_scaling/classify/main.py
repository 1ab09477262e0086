"""`ft-scaling classify`: run a few-shot classification study, or rewrite its report.

ft-scaling classify study --gin_file=gin/classify/studies/translation_match.gin --out=runs/cls
                          [--methods=pbft_fmt,icl] [--gin.KEY=VALUE ...]
ft-scaling classify report runs/cls
"""

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from ft_scaling import files
from ft_scaling.config import flags

USAGE = (
    "usage: ft-scaling classify study --gin_file=FILE --out=DIR [--methods=A,B] [--gin.K=V]\n"
    "       ft-scaling classify report DIR\n"
)


def _parse_study(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    bindings, rest = flags.split_gin_bindings(argv)
    parser = argparse.ArgumentParser(
        prog="ft-scaling classify study", description="few-shot classification study"
    )
    flags.add_gin_flags(parser)
    parser.add_argument("--out", required=True, help="study directory (stages, results, report)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    parser.add_argument("--store", default=None, help="SQLAlchemy URL of the results store")
    return parser.parse_args(rest), bindings


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches `study` and `report`; returns the exit status (4 when a run failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] not in ("study", "report"):
        sys.stderr.write(USAGE)
        return 2
    if argv[0] == "report":
        if len(argv) != 2:
            sys.stderr.write(USAGE)
            return 2
        from ft_scaling.classify import report

        print(report.write(argv[1]))
        return 0
    args, bindings = _parse_study(argv[1:])
    if not args.gin_file:
        sys.stderr.write("ft-scaling classify study: give the study with --gin_file\n" + USAGE)
        return 2
    flags.parse_gin(args.gin_file, bindings, args.gin_search_paths)
    from ft_scaling.classify import report, study

    spec = study.ClassifyStudy()
    start = time.time()
    methods = args.methods.split(",") if args.methods else None
    counts = study.run_study(spec, args.out, methods, args.store)
    files.write_operative_config(args.out)  # OUT/config.gin: the bindings the study used
    print(f"classify study {spec.name}: {counts} in {time.time() - start:.0f}s", file=sys.stderr)
    print(report.write(args.out, spec))
    return 0 if counts["failed"] == 0 else 4
