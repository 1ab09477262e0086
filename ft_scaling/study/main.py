"""`ft-scaling study`: run a study and write its report; `ft-scaling study report DIR`.

ft-scaling study --gin_file=gin/studies/demo.gin --out=runs/demo [--preset=smoke]
                 [--worker_index=I --num_workers=N] [--gin.KEY=VALUE ...]
ft-scaling study report runs/demo
"""

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from ft_scaling.config import flags

PRESET_DIR = "gin/studies/presets"


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    bindings, rest = flags.split_gin_bindings(argv)
    parser = argparse.ArgumentParser(description="run a scaling study and write its report")
    flags.add_gin_flags(parser)
    parser.add_argument("--out", required=True, help="study directory (results, runs, report)")
    parser.add_argument("--preset", default=None, help=f"a gin file in {PRESET_DIR}/, by name")
    parser.add_argument("--worker_index", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--no_report", action="store_true", help="skip the report at the end")
    return parser.parse_args(rest), bindings


def _study_gin_files(args) -> list[str]:
    files = list(args.gin_file)
    if not files:
        raise SystemExit("ft-scaling study: give the study with --gin_file=gin/studies/<name>.gin")
    if args.preset:
        preset = os.path.join(PRESET_DIR, f"{args.preset}.gin")
        root = os.path.join(flags.REPO_ROOT, PRESET_DIR)
        if not os.path.exists(os.path.join(flags.REPO_ROOT, preset)):
            known = sorted(f[:-4] for f in os.listdir(root) if f.endswith(".gin"))
            raise SystemExit(f"ft-scaling study: unknown preset {args.preset!r}; known: {known}")
        files.append(preset)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "report":
        from ft_scaling.study import report

        if len(argv) != 2:
            raise SystemExit("usage: ft-scaling study report DIR")
        print(report.write_report(argv[1]))
        return 0
    args, bindings = _parse(argv)
    files = _study_gin_files(args)
    flags.parse_gin(files, bindings, args.gin_search_paths)
    from ft_scaling.study import report, runner, sweep

    study = sweep.Study()
    start = time.time()
    worker = runner.Worker(args.worker_index, args.num_workers)
    counts = runner.run_study(study, args.out, worker)
    print(f"study {study.name}: {counts} in {time.time() - start:.0f}s", file=sys.stderr)
    if not args.no_report and worker.count == 1:
        print(report.write_report(args.out))
    return 0 if counts["failed"] == 0 else 4
