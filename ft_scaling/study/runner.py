"""Runs a study's runs in order on this machine (or this worker's share), resumably.

    plan      expand the study (sweep.py); the leader writes plan.json and report_settings.json
    for run in assigned runs:             pretraining first, then finetuning
        finished in the store?  -> skip
        depends on another run? -> wait until its summary.json says finished
        execute (execute.py)    -> gin run through loop.train: a checkpoint in its dir is
                                   resumed bit-identically; test PPL of the best dev checkpoint;
                                   generation metrics when the study asks for them
                                -> one row, recorded atomically; raised? recorded as failed
                                   with its error, and the study goes on

Killing the study at any moment loses at most the run in flight (and not even that: its
checkpoints remain); running the same command again continues where it stopped.

Two ways to share a study between workers:
  --store=URL    every worker claims runs from one store (study/claims.py): no idle worker
                 while runs are left, a dead worker's run reclaimed after its lease; with
                 Study.pack_runs = K a worker claims packs of runs (study/claimed_packs.py)
  --worker_index/--num_workers   without a database: run i goes to worker i mod P, each worker
                 writes its own OUT/results_w<i>of<P>.sqlite
"""

import dataclasses
import logging
import math
import os
import sys
import time

import jax

from ft_scaling import files
from ft_scaling.study import claimed_packs, execute, generation, packed, suites, sweep
from ft_scaling.study import claims as claims_lib
from ft_scaling.study import store as store_lib
from ft_scaling.train import summary as summary_lib

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
    entries = [
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
    files.atomic_write_json(files.path(out_dir) / "plan.json", entries)


def plan(study: sweep.Study, out_dir: str, leader: bool = True) -> list[sweep.Run]:
    """Every run of the study; the leader also writes plan.json and report_settings.json."""
    runs = sweep.expand(study, out_dir)
    # Every suite revision the runs start from exists and is complete, or nothing runs.
    suites.check_complete(sweep.suite_checkpoints(study))
    if leader:
        write_plan(runs, out_dir)
        settings = {"held_out": study.held_out, "bootstrap": study.report_bootstrap}
        files.atomic_write_json(files.path(out_dir) / "report_settings.json", settings)
    return runs


@dataclasses.dataclass(frozen=True)
class _Execution:
    """What executing a run of the study needs besides the run itself."""

    out_dir: str
    store: object
    by_id: dict[str, sweep.Run]
    dependency_timeout_s: float
    generation_metrics: generation.GenerationMetrics | None

    def execute(self, run: sweep.Run, dependency_failed: bool | None = None) -> execute.Record:
        """Waits for the run's dependency, trains it, records its row (or its failure).

        `dependency_failed` (claimed runs): the store already says whether the dependency
        finished, so there is nothing to wait for; True fails the run, naming it.
        """
        model_dir = run.model_dir(self.out_dir)

        def train() -> execute.Record:
            if dependency_failed:
                raise RuntimeError(f"run {run.depends_on} this run depends on has failed")
            if run.depends_on and dependency_failed is None:
                _wait_for(self.by_id[run.depends_on], self.out_dir, self.dependency_timeout_s)
            summary = execute.train_run(run, model_dir)
            return execute.Record(
                "finished", _row(run, summary, model_dir, self.generation_metrics)
            )

        failed = {**run.record, "run_dir": model_dir}
        return execute.execute(self.store, run.run_id, run.kind, train, failed)

    def prepare(self, run: sweep.Run, claimed: bool = False):
        """The run set up for a pack (`loop.prepared`: its dependency finished, its gin parsed
        and checked); None when that failed, recorded as the run's failure.

        `claimed` (a candidate of a pack of claimed runs, whose dependency has a row): neither
        waits nor records; a run that fails here trains alone when claimed, failing there."""
        try:
            if run.depends_on and not claimed:
                _wait_for(self.by_id[run.depends_on], self.out_dir, self.dependency_timeout_s)
            execute.parse_run_gin(run, run.model_dir(self.out_dir))
            from ft_scaling.train import loop  # imports JAX and the input pipeline

            return loop.prepared()
        except Exception as err:  # noqa: BLE001  (recorded with its traceback, as execute does)
            if claimed:
                log.info("run %s does not set up for a pack (it trains alone): %s", run.run_id, err)
            else:
                self.record(run, err)
            return None

    def record(self, run: sweep.Run, outcome) -> "execute.Record":  # (the module)
        """Records a packed run's end: its summary (checked as `execute.train_run` checks it)
        or the error that ended it. Raises execute.Preempted for a preempted run."""
        model_dir = run.model_dir(self.out_dir)

        def train() -> execute.Record:
            summary = execute.outcome_summary(outcome, f"run {run.run_id}")
            if self.generation_metrics is not None:  # decoding reads the run's gin config
                execute.parse_run_gin(run, model_dir)
            row = _row(run, summary, model_dir, self.generation_metrics)
            return execute.Record("finished", row)

        failed = {**run.record, "run_dir": model_dir}
        propagate = (execute.Preempted,)
        return execute.execute(self.store, run.run_id, run.kind, train, failed, propagate)


def run_study(
    study: sweep.Study,
    out_dir: str,
    worker: Worker = Worker(),
    dependency_timeout_s: float = 6 * 3600,
    store_url: str | None = None,
    claims: claims_lib.ClaimSettings | None = None,
) -> dict:
    """Runs this worker's share of the study in `out_dir` (local or gs://): claimed from the
    store at `store_url` that every worker shares (`claims`: lease, polling), else run i mod P
    of `worker`; returns counts of runs. Raises store.StoreError before any training when
    the store cannot be reached or holds another study."""
    files.check_writable(out_dir)  # a bucket that cannot be written fails before training
    # On a multi-host pod every host trains every run (the hosts form one mesh); only the
    # first talks to the store and writes the plan.
    from ft_scaling.train import partitioning

    partitioning.initialize_distributed()
    leader = jax.process_index() == 0
    location = store_url or worker.store_path(out_dir)
    store = _open_store(study, out_dir, location, leader, shared=store_url is not None)
    # A full disk stops the study (every later run would fail too), naming OUT; a rerun
    # continues once space is freed.
    try:
        with files.naming_full_disk(out_dir, lambda: INTACT_ON_FULL_DISK):
            runs = plan(study, out_dir, leader)
            by_id = {r.run_id: r for r in runs}
            execution = _Execution(
                out_dir, store, by_id, dependency_timeout_s, study.generation_metrics
            )
            if store_url is None:
                mine = sweep.assigned(runs, worker.index, worker.count)
                if study.pack_runs > 1:
                    return packed.run_packed(study.name, mine, execution, study.pack_runs)
                return _run_all(study.name, mine, execution)
            settings = claims or claims_lib.ClaimSettings()
            if study.pack_runs > 1:
                return claimed_packs.run_claimed_packed(
                    study.name, runs, store, execution, settings, leader, study.pack_runs
                )
            return claims_lib.run_claimed(
                study.name, runs, store, execution.execute, settings, leader
            )
    finally:
        store.close()


INTACT_ON_FULL_DISK = "The rows in its results store and each run's last checkpoint are intact."


def _open_store(study: sweep.Study, out_dir: str, location: str, leader: bool, shared: bool):
    """The leader's store (checked to be this study's), or what the other hosts of a pod see;
    every host learns whether the leader could open it, so none trains when it could not."""
    identity = {"kind": "study", "name": study.name}
    if shared:  # workers sharing a database must also share the directory of their runs
        identity["out"] = str(out_dir)
    store, error = None, None
    try:
        if leader:
            store = store_lib.ResultsStore(location, identity)
            if shared:
                store_lib.point_to(out_dir, location)
    except store_lib.StoreError as err:
        error = err
    (opened,) = claims_lib.agree([int(error is None)])
    if error is not None:
        raise error
    if not opened:
        raise store_lib.StoreError(f"process 0 could not open the results store of {out_dir}")
    if leader:
        return store
    return _FollowerStore() if shared else _ReadOnlyStore(location)


def _run_all(name: str, mine: list[sweep.Run], execution: _Execution) -> dict:
    counts = {"finished": 0, "failed": 0, "skipped": 0, "total": len(mine)}
    started, done_now, finetuning = time.time(), 0, [0, 0.0]  # runs, seconds
    for position, run in enumerate(mine, start=1):
        if execution.store.status(run.run_id) == "finished":
            counts["skipped"] += 1
            continue
        run_started = time.time()
        eta = _eta(started, done_now, len(mine) - position + 1)
        sys.stderr.write(
            f"[study {name}] run {position}/{len(mine)} {_describe(run)} (ETA {eta})\n"
        )
        counts[execution.execute(run).status] += 1
        done_now += 1
        if run.kind == "finetune":
            finetuning[0] += 1
            finetuning[1] += time.time() - run_started
    packed.finetuning_rate(name, finetuning[0], finetuning[1], "one by one")
    return counts


class _FollowerStore:
    """A store for the other hosts of a pod whose process 0 claims runs: they write nothing."""

    def record(self, *args, **kwargs):
        del args, kwargs

    def close(self):
        pass


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


def _wait_for(dependency: sweep.Run, out_dir: str, timeout_s: float) -> None:
    """Blocks until another run (maybe another worker's) has finished; its summary says so."""
    model_dir = dependency.model_dir(out_dir)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        summary = summary_lib.read(model_dir)
        if summary is not None and summary.finished:
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


def _row(
    run: sweep.Run,
    summary: summary_lib.RunSummary,
    model_dir: str,
    generation_metrics: generation.GenerationMetrics | None,
) -> dict:
    """The results row of a finished run (DESIGN.md §3); decodes test examples if asked to."""
    row = {
        **run.record,
        "model_params": summary.model_params,
        "trainable_params": summary.trainable_params,
        "steps": summary.step,
        "dev_loss": summary.best_dev_loss,
        "test_loss": summary.test_loss,
        "test_ppl": summary.test_ppl,
        "run_dir": model_dir,
        "wall_time": summary.wall_time_s,
        "config_hash": run.run_id,
        **summary.timing_columns(),
    }
    if run.kind != "finetune":
        return row
    if not math.isfinite(row["test_loss"] or float("nan")):
        raise RuntimeError(f"run {run.run_id} produced no finite test loss")
    if generation_metrics is not None:  # under the run's gin config, still parsed
        row.update(generation.measure(model_dir, generation_metrics))
    return row
