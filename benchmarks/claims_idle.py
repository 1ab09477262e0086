"""Idle worker time of a study: runs claimed from the store vs run i mod P (no training).

    python benchmarks/claims_idle.py [--workers 4] [--study gin/studies/paper_wmt14_ende.gin]
                                     [--draws 20]

Two simulated studies, each run costing from 1 to 100 (pretraining 100):
  paper    a real study's plan (sweep.expand: 5 pretraining runs, then 1260 finetuning runs
           that each need one of them); a finetuning run costs (model factor 1, 2, 4, 8, 16
           for 1b ... 16b) x (D_f factor from 1 to 6.25, geometric in the rank of its D_f)
  random   4 pretraining runs, then 96 finetuning runs (run i needs pretraining i mod 4) with
           costs drawn log-uniformly from 1 to 100; the mean over `--draws` seeded draws

    mod P    worker w trains runs i with i mod P == w in plan order (sweep.assigned), waiting
             for a run's pretraining to finish on whichever worker has it
    claims   a free worker claims the next runnable run from a real store (store.claim, on a
             temporary SQLite file, with a simulated clock), as study/claims.py does

Idle fraction = 1 - (sum of run costs) / (workers x makespan): the share of paid worker-time
in which a worker trains nothing, waiting for a dependency or for the slowest worker.
"""

import argparse
import dataclasses
import heapq
import os
import tempfile

import numpy as np

from ft_scaling.config import flags
from ft_scaling.study import store as store_lib
from ft_scaling.study import sweep

PAPER_STUDY = "gin/studies/paper_wmt14_ende.gin"
MODEL_FACTOR = {"1b": 1, "2b": 2, "4b": 4, "8b": 8, "16b": 16}
PRETRAIN_COST = 100.0
MAX_DF_FACTOR = 6.25  # 16 x 6.25 = 100: finetuning costs span 1 ... 100


@dataclasses.dataclass(frozen=True)
class Schedule:
    makespan: float
    work: float
    workers: int

    @property
    def idle_fraction(self) -> float:
        return 1.0 - self.work / (self.workers * self.makespan)


def plan(study_gin: str = PAPER_STUDY) -> list[sweep.Run]:
    flags.parse_gin([study_gin], [])
    return sweep.expand(sweep.Study(), "/study")


def costs(runs: list[sweep.Run]) -> dict[str, float]:
    """run_id -> simulated cost (module docstring)."""
    grid = sorted({r.record["finetune_examples"] for r in runs if r.kind == "finetune"})
    out = {}
    for run in runs:
        if run.kind == "pretrain":
            out[run.run_id] = PRETRAIN_COST
            continue
        rank = grid.index(run.record["finetune_examples"]) / max(len(grid) - 1, 1)
        out[run.run_id] = MODEL_FACTOR[run.record["model_name"]] * MAX_DF_FACTOR**rank
    return out


def random_study(seed: int, finetune_runs: int = 96, pretrain_runs: int = 4):
    """(runs, costs) of the 'random' study (module docstring), drawn from `seed`."""
    rng = np.random.default_rng(seed)
    runs = [sweep.Run(f"pre{p}", "pretrain", (), (), {}) for p in range(pretrain_runs)]
    runs += [
        sweep.Run(f"ft{i:04d}", "finetune", (), (), {}, depends_on=f"pre{i % pretrain_runs}")
        for i in range(finetune_runs)
    ]
    drawn = np.exp(rng.uniform(0.0, np.log(100.0), finetune_runs))
    cost = {r.run_id: PRETRAIN_COST for r in runs[:pretrain_runs]}
    cost.update({r.run_id: float(c) for r, c in zip(runs[pretrain_runs:], drawn, strict=True)})
    return runs, cost


def mod_p(runs: list[sweep.Run], cost: dict[str, float], workers: int) -> Schedule:
    """Each worker's share in plan order; a run starts once its dependency has finished."""
    finish, clock = {}, [0.0] * workers
    owner = {r.run_id: w for w in range(workers) for r in sweep.assigned(runs, w, workers)}
    for run in runs:  # dependencies come earlier in the plan, so their finish is known
        worker = owner[run.run_id]
        start = max(clock[worker], finish.get(run.depends_on, 0.0))
        clock[worker] = finish[run.run_id] = start + cost[run.run_id]
    return Schedule(max(clock), sum(cost.values()), workers)


def claims(runs: list[sweep.Run], cost: dict[str, float], workers: int) -> Schedule:
    """Free workers claim from a real store; time moves from one run's end to the next."""
    with tempfile.TemporaryDirectory() as tmp:
        store = store_lib.ResultsStore(os.path.join(tmp, "results.sqlite"))
        store.add_plan([(r.run_id, r.depends_on) for r in runs])
        running, free, now, makespan = [], list(range(workers)), 0.0, 0.0
        while True:
            waiting = []
            for worker in free:
                run_id = store.claim(f"w{worker}", lease_s=1e12, since=-1.0, now=now)
                if run_id is None:
                    waiting.append(worker)
                else:
                    heapq.heappush(running, (now + cost[run_id], worker, run_id))
            if not running:
                break
            now, worker, run_id = heapq.heappop(running)
            store.record(run_id, "simulated", "finished", {})
            free, makespan = [*waiting, worker], max(makespan, now)
        assert store.remaining(-1.0) == 0, "runs left unclaimed"
        store.close()
    return Schedule(makespan, sum(cost.values()), workers)


def compare(studies, workers: int) -> dict[str, float]:
    """Mean idle fraction of each policy over `studies` [(runs, costs)]."""
    idle = {"mod P": [], "claims": []}
    for runs, cost in studies:
        idle["mod P"].append(mod_p(runs, cost, workers).idle_fraction)
        idle["claims"].append(claims(runs, cost, workers).idle_fraction)
    return {name: float(np.mean(values)) for name, values in idle.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--study", default=PAPER_STUDY)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    runs = plan(args.study)
    scenarios = {
        f"paper ({len(runs)} runs)": [(runs, costs(runs))],
        f"random (100 runs, {args.draws} draws)": [random_study(s) for s in range(args.draws)],
    }
    print(f"idle share of worker-time, {args.workers} workers, run costs 1 .. 100")
    for name, studies in scenarios.items():
        idle = compare(studies, args.workers)
        ratio = idle["mod P"] / idle["claims"]
        print(
            f"{name:>28}: mod P {idle['mod P']:6.1%}  claims {idle['claims']:6.1%}  "
            f"ratio {ratio:.1f}x"
        )


if __name__ == "__main__":
    main()
