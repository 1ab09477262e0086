"""`ft-scaling study`: run a study and write its report; `ft-scaling study report DIR`.

ft-scaling study --gin_file=gin/studies/demo.gin --out=runs/demo [--preset=smoke]
                 [--store=postgresql://USER:PASSWORD@HOST/DB [--lease_seconds=S]]
                 [--worker_index=I --num_workers=N] [--gin.KEY=VALUE ...]
ft-scaling study report runs/demo
ft-scaling study plan --gin_file=gin/studies/paper_wmt14_ende.gin [--out=plan.md]
                 (runs, tokens, FLOPs, chip-hours, storage, launch command; study/plan.py)

--store: a results store every worker shares (a SQLAlchemy URL); each worker claims the next
runnable run from it (study/claims.py). Without it the store is OUT/results.sqlite, and
--worker_index/--num_workers split the runs by index (OUT/results_w<i>of<N>.sqlite each).
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
    parser.add_argument("--store", default=None, help="SQLAlchemy URL of a shared store")
    parser.add_argument("--lease_seconds", type=float, default=180.0, help="claim lease")
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
    if argv and argv[0] == "plan":
        from ft_scaling.study import plan

        return plan.main(argv[1:])
    args, bindings = _parse(argv)
    files = _study_gin_files(args)
    flags.parse_gin(files, bindings, args.gin_search_paths)
    from ft_scaling.study import claims as claims_lib
    from ft_scaling.study import report, runner, sweep

    study = sweep.Study()
    start = time.time()
    worker = runner.Worker(args.worker_index, args.num_workers)
    if args.store and worker.count > 1:
        raise SystemExit("ft-scaling study: --store workers claim runs; drop --num_workers")
    # Poll for a claimable run a few times per lease: a dead worker's run is taken soon after.
    poll_s = min(5.0, args.lease_seconds / 4)
    claims = claims_lib.ClaimSettings(lease_s=args.lease_seconds, poll_s=poll_s)
    counts = runner.run_study(study, args.out, worker, store_url=args.store, claims=claims)
    print(f"study {study.name}: {counts} in {time.time() - start:.0f}s", file=sys.stderr)
    # A claiming worker returns once every run has its row, so each can write the report.
    if not args.no_report and worker.count == 1:
        print(report.write_report(args.out))
    return 0 if counts["failed"] == 0 else 4
