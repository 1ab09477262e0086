"""Per-run fixed cost of a study's finetuning runs: where each run's wall time goes.

    python benchmarks/run_fixed_cost.py --out=/tmp/fixed_cost                 # smoke demo, 6 runs
    python benchmarks/run_fixed_cost.py --out=/tmp/fixed_cost --runs=12 --json=/tmp/t.json

Expands the study (default: gin/studies/demo.gin with the smoke preset), trains the pretraining
run of the first finetuning runs' base model, then those finetuning runs one after another in
this process, through the study's own executor (`execute.train_run`), as `ft-scaling study`
does. Prints per run: the gin parse, wall time and its phases (`summary.TIMING_PHASES`), the
unattributed rest, the steps and the test loss (to check that a change kept the results).
Finetuning run directories are removed first, so every run trains; the pretraining run is
reused when it has finished.
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ft_scaling.config import flags  # noqa: E402
from ft_scaling.study import execute, sweep  # noqa: E402
from ft_scaling.train import summary as summary_lib  # noqa: E402


def _study(gin_files: list[str]) -> sweep.Study:
    flags.parse_gin(gin_files, [])
    return sweep.Study()


def _timed(run: sweep.Run, model_dir: str) -> tuple[summary_lib.RunSummary, float]:
    """(summary, seconds of the whole call: gin parse + loop.train)."""
    start = time.perf_counter()
    summary = execute.train_run(run, model_dir)
    return summary, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin_file", action="append", default=None)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", type=int, default=6, help="finetuning runs to time")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    gin_files = args.gin_file or ["gin/studies/demo.gin"]
    if args.preset:
        gin_files.append(f"gin/studies/presets/{args.preset}.gin")
    runs = sweep.expand(_study(gin_files), args.out)
    finetune = [r for r in runs if r.kind == "finetune"][: args.runs]
    by_id = {r.run_id: r for r in runs}
    base = by_id[finetune[0].depends_on]
    pretrained = summary_lib.read(base.model_dir(args.out))
    if pretrained is None or not pretrained.finished:
        execute.train_run(base, base.model_dir(args.out))
    out = []
    for run in finetune:
        if run.depends_on != base.run_id:
            continue  # another base model: not pretrained here
        shutil.rmtree(run.model_dir(args.out), ignore_errors=True)
        summary, call_s = _timed(run, run.model_dir(args.out))
        phases = summary.timings or {}
        other = summary.wall_time_s - sum(phases.values())
        out.append(
            {
                "run_id": run.run_id,
                "method": run.record["method"],
                "finetune_examples": run.record["finetune_examples"],
                "steps": summary.step,
                "best_step": summary.best_step,
                "dev_loss": summary.best_dev_loss,
                "test_loss": summary.test_loss,
                "call_s": call_s,
                "wall_s": summary.wall_time_s,
                **phases,
                "other": other,
            }
        )
    _print(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def _print(rows: list[dict]) -> None:
    names = ["call_s", "wall_s", *summary_lib.TIMING_PHASES, "other"]
    print("method D_f steps test_loss " + " ".join(names))
    for row in rows:
        cells = [row["method"], str(row["finetune_examples"]), str(row["steps"])]
        cells.append(f"{row['test_loss']:.6f}")
        cells += [f"{row[n]:.2f}" for n in names]
        print(" ".join(cells))
    later = rows[1:] or rows  # the first run also pays this process's compiles and caches
    means = {n: sum(r[n] for r in later) / len(later) for n in names}
    print("mean of runs 2..: " + " ".join(f"{n}={v:.2f}" for n, v in means.items()))


if __name__ == "__main__":
    main()
