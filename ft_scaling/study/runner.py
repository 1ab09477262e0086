"""Runs a study's runs in order on this machine (or this worker's share), resumably.

    for run in assigned runs:             pretraining first, then finetuning
        finished in the store?  -> skip
        checkpoint in its dir?  -> the trainer resumes it bit-identically
        train, evaluate test PPL with the best dev checkpoint, record one row (atomically)
        raised?                 -> recorded as failed with its error; the study goes on

Killing the study at any moment loses at most the run in flight (and not even that: its
checkpoints remain); running the same command again continues where it stopped.
"""

import dataclasses
import json
import logging
import math
import os
import sys
import time
import traceback

import jax

from ft_scaling.config import flags
from ft_scaling.study import store as store_lib
from ft_scaling.study import sweep
from ft_scaling.train import checkpoints

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Worker:
    index: int = 0
    count: int = 1

    def store_path(self, out_dir: str) -> str:
        if self.count == 1:
            return os.path.join(out_dir, "results.sqlite")
        return os.path.join(out_dir, f"results_w{self.index}of{self.count}.sqlite")


def write_plan(runs: list[sweep.Run], out_dir: str) -> None:
    """The expanded study, for people and for other workers (same content from every worker)."""
    plan = [
        {
            "run_id": r.run_id,
            "kind": r.kind,
            "gin_files": list(r.gin_files),
            "bindings": list(r.bindings),
            "record": dict(r.record),
            "depends_on": r.depends_on,
        }
        for r in runs
    ]
    checkpoints.atomic_write_json(os.path.join(out_dir, "plan.json"), plan)


def run_study(
    study: sweep.Study,
    out_dir: str,
    worker: Worker = Worker(),
    dependency_timeout_s: float = 6 * 3600,
) -> dict:
    """Runs this worker's share of the study; returns counts of finished/failed/skipped runs."""
    os.makedirs(out_dir, exist_ok=True)
    # On a multi-host pod every host trains every run (the hosts form one mesh); only the
    # first writes the plan and the store.
    from ft_scaling.train import partitioning

    partitioning.initialize_distributed()
    leader = jax.process_index() == 0
    runs = sweep.expand(study, out_dir)
    if leader:
        write_plan(runs, out_dir)
        settings = {"held_out": study.held_out, "bootstrap": study.report_bootstrap}
        checkpoints.atomic_write_json(os.path.join(out_dir, "report_settings.json"), settings)
    mine = sweep.assigned(runs, worker.index, worker.count)
    path = worker.store_path(out_dir)
    store = store_lib.ResultsStore(path) if leader else _ReadOnlyStore(path)
    by_id = {r.run_id: r for r in runs}
    counts = {"finished": 0, "failed": 0, "skipped": 0, "total": len(mine)}
    started, done_now = time.time(), 0
    for position, run in enumerate(mine, start=1):
        if store.status(run.run_id) == "finished":
            counts["skipped"] += 1
            continue
        eta = _eta(started, done_now, len(mine) - position + 1)
        sys.stderr.write(
            f"[study {study.name}] run {position}/{len(mine)} {_describe(run)} (ETA {eta})\n"
        )
        status = _execute(run, by_id, out_dir, store, dependency_timeout_s)
        counts[status] += 1
        done_now += 1
    store.close()
    return counts


class _ReadOnlyStore:
    """The store as other hosts of a pod see it: they read what is finished (so they skip
    exactly what the leader skips) and write nothing."""

    def __init__(self, path: str):
        self._store = store_lib.ResultsStore(path)

    def status(self, run_id):
        return self._store.status(run_id)

    def record(self, *args, **kwargs):
        del args, kwargs

    def close(self):
        self._store.close()


def _eta(started: float, done: int, remaining: int) -> str:
    if done == 0:
        return "?"
    seconds = int((time.time() - started) / done * remaining)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _describe(run: sweep.Run) -> str:
    r = run.record
    if run.kind == "pretrain":
        return f"pretrain {r['model_name']}"
    size = "" if r.get("pet_size") is None else f"[{r['pet_size']}]"
    return (
        f"finetune {r['model_name']}@{r['pretrain_tokens']} {r['method']}{size} "
        f"D_f={r['finetune_examples']} seed={r['seed']}"
    )


def _execute(run, by_id, out_dir, store, dependency_timeout_s) -> str:
    model_dir = run.model_dir(out_dir)
    try:
        if run.depends_on:
            _wait_for(by_id[run.depends_on], out_dir, dependency_timeout_s)
        summary, model_params = _train(run, model_dir)
        row = _row(run, summary, model_params, model_dir)
        store.record(run.run_id, run.kind, "finished", row)
        return "finished"
    except KeyboardInterrupt:
        raise
    except Exception as err:  # recorded, reported at the end; the study goes on
        message = f"{type(err).__name__}: {err}"
        log.error("run %s failed: %s", run.run_id, message)
        tail = traceback.format_exc()[-4000:]
        store.record(
            run.run_id,
            run.kind,
            "failed",
            {**run.record, "run_dir": model_dir},
            f"{message}\n{tail}",
        )
        return "failed"


def _wait_for(dependency: sweep.Run, out_dir: str, timeout_s: float) -> None:
    """Blocks until another run (maybe another worker's) has finished; its summary says so."""
    path = os.path.join(dependency.model_dir(out_dir), "summary.json")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                if json.load(f).get("status") == "finished":
                    return
        if _failed_elsewhere(dependency.run_id, out_dir):
            raise RuntimeError(f"run {dependency.run_id} this run depends on has failed")
        time.sleep(2.0)
    raise TimeoutError(f"run {dependency.run_id} did not finish within {timeout_s:.0f}s")


def _failed_elsewhere(run_id: str, out_dir: str) -> bool:
    for other in store_lib.open_all(out_dir):
        failed = other.status(run_id) == "failed"
        other.close()
        if failed:
            return True
    return False


def _train(run: sweep.Run, model_dir: str) -> tuple[dict, int]:
    flags.parse_gin(run.gin_files, [*run.bindings, f"MODEL_DIR={model_dir!r}"])
    from ft_scaling.models import configs
    from ft_scaling.train import loop

    model_params = configs.param_count(configs.ModelConfig())
    summary = loop.train()
    if summary.get("status") != "finished":
        raise RuntimeError(f"training stopped with status {summary.get('status')!r}")
    return summary, model_params


def _row(run: sweep.Run, summary: dict, model_params: int, model_dir: str) -> dict:
    row = {
        **run.record,
        "model_params": model_params,
        "trainable_params": summary["trainable_params"],
        "steps": summary["step"],
        "dev_loss": summary["best_dev_loss"],
        "test_loss": summary.get("test_loss"),
        "test_ppl": summary.get("test_ppl"),
        "run_dir": model_dir,
        "wall_time": summary["wall_time_s"],
        "config_hash": run.run_id,
    }
    for key in ("bleu", "rouge"):
        if key in summary:
            row[key] = summary[key]
    if run.kind == "finetune" and not math.isfinite(row["test_loss"] or float("nan")):
        raise RuntimeError(f"run {run.run_id} produced no finite test loss")
    return row
