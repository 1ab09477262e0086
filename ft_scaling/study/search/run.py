"""Early-stopped Bayesian hyperparameter search: rank configs at a fraction of their budget.

    base     pretrain the base model once (or reuse `BaseModel.checkpoint`)
    explore  until `trials` trials are done: Optuna's TPE sampler (multivariate) proposes a
             config from the SearchSpace; it trains through the normal trainer for
             `early_fraction` of ITS steps, on the full run's schedule (`train.budget_fraction`),
             and reports its dev metric there (`trial.report`, so an Optuna pruner can stop it;
             pruned trials are not continued); TPE models this early metric
    continue the `top_k` best trials by early metric (or all: `full_budget_for='all'`) resume
             in their MODEL_DIR to the full budget, so the early steps are not paid twice and
             the result equals an uninterrupted run; final metric = best dev metric of the run
    report   `report.py`: trials, best config, Spearman(early, final), top-5 overlap
    packs    `Search.pack_trials` = K > 1: the startup trials' early phases and the
             continuations train in packs of K (packs.py), with the results of one by one

Every phase of every run is trained and recorded by the one run executor (study/execute.py):
a run raising an error is recorded as failed and the search goes on; a preempted trainer
(`execute.Preempted`) and KeyboardInterrupt stop the search, and a rerun continues it.

Why Optuna's TPE and not Vizier: both are maintained Bayesian optimisers; Optuna is pure Python
(Vizier's package brings gRPC and a service layer), its ask/tell interface lets a trial train
through our trainer instead of inside a callback, and its RDB storage (OUT/optuna.sqlite,
`load_if_exists`) keeps the optimiser's state across a kill.

Several workers (`--store=URL`): the trial rows and Optuna's state (its RDB storage) live in
one database that every worker shares. A worker holds a lease on each run it trains
(claims.holding), so two workers never train one MODEL_DIR; it asks for a trial only while
fewer than `trials` are done or running, and closes a surplus one it lost a race for untrained;
a RUNNING trial whose run's lease expired (its worker died) is recovered as below by any worker.

Resuming. Every trial is a run row in OUT/results.sqlite (kind 'trial'), keyed like study runs
by the hash of its portable config, and written before Optuna is told, so:
  * a run whose row holds a phase's metric is never trained for that phase again (a config
    proposed twice is one run);
  * a trial killed mid-training is still RUNNING in Optuna at restart: it is closed as FAIL and
    its config enqueued, so the next trial trains the same config in the same MODEL_DIR, which
    the trainer resumes from its last checkpoint;
  * a kill between writing the row and telling Optuna is repaired from the row.
"""

import logging
import os
import time

import optuna
from optuna.trial import TrialState

from ft_scaling import files
from ft_scaling.study import claims as claims_lib
from ft_scaling.study import execute
from ft_scaling.study import store as store_lib
from ft_scaling.study.search import config as search_config
from ft_scaling.study.search import progress as search_progress
from ft_scaling.study.search import workers
from ft_scaling.train import summary as summary_lib

log = logging.getLogger(__name__)

# trial.report steps are percent of a trial's budget: comparable across trials whose step
# counts differ (batch size and epochs are searched), as a pruner needs.
REPORT_STEPS = 100
PHASE_ENDS = ("finished", "paused")  # how an early phase may end


def open_study(
    search: search_config.Search, out_dir: str, storage_url: str | None = None
) -> optuna.Study:
    """The Optuna study in OUT/optuna.sqlite (or the shared database), created or loaded."""
    storage = storage_url or f"sqlite:///{os.path.abspath(os.path.join(out_dir, 'optuna.sqlite'))}"
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials)
        if search.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=storage,
        study_name=search.name,
        direction="minimize",
        sampler=sampler(search, 0),
        pruner=pruner,
        load_if_exists=True,
    )


def sampler(search: search_config.Search, position: int) -> optuna.samplers.TPESampler:
    """TPE (multivariate) seeded by the trial's position in the search.

    A sampler's only state is its random generator, so seeding it afresh per trial makes a
    proposal a function of (seed, position, history): a resumed search proposes what an
    uninterrupted one would have, rather than replaying the draws of its first trials.
    """
    return optuna.samplers.TPESampler(
        seed=search.seed + position,
        multivariate=True,
        n_startup_trials=search.startup_trials,
    )


def run_search(
    search: search_config.Search,
    out_dir: str,
    store_url: str | None = None,
    claims: claims_lib.ClaimSettings | None = None,
) -> dict:
    """Runs (or continues) the search; returns counts of trials by outcome.

    Args:
      search, out_dir: the search and its directory.
      store_url: a database shared by several workers (module docstring); default: one.
      claims: leases of the runs a worker trains (with `store_url`).

    Raises:
      store.StoreError: the database cannot be reached or holds another study.
    """
    if store_url and search.pack_trials > 1:
        raise ValueError(
            f"Search.pack_trials={search.pack_trials} packs one worker's trials; a search "
            f"shared through --store trains each trial alone: set Search.pack_trials=1"
        )
    files.check_writable(out_dir)  # a bucket that cannot be written fails before training
    search_config.check_space(search, out_dir)
    search_config.write_settings(search, out_dir)
    shared = (claims or claims_lib.ClaimSettings()) if store_url else None
    identity = {"kind": "search", "name": search.name, **({"out": out_dir} if shared else {})}
    store = store_lib.ResultsStore(store_url or os.path.join(out_dir, "results.sqlite"), identity)
    try:
        # A full disk (a trial's MODEL_DIR, results.sqlite, Optuna's storage) stops the search
        # naming OUT; a rerun continues once space is freed.
        with files.naming_full_disk(out_dir, lambda: INTACT_ON_FULL_DISK):
            if store_url:
                store_lib.point_to(out_dir, store_url)
            return _search(search, out_dir, store, store_url, shared)
    finally:
        store.close()


INTACT_ON_FULL_DISK = "The trial rows recorded and each trial's last checkpoint are intact."


def _search(search, out_dir, store, store_url, shared) -> dict:
    """The phases of `run_search` (its docstring), on an open store."""
    continuations = search.trials if search.full_budget_for == "all" else search.top_k
    progress = search_progress.Progress(
        search.name, search.trials, min(continuations, search.trials)
    )
    _pretrain(search, out_dir, store, progress, shared)
    with claims_lib.holding(store, "optuna-storage", shared):  # one creates its tables
        study = open_study(search, out_dir, store_url)
    _recover(search, study, store, shared)
    if search.pack_trials > 1:
        from ft_scaling.study.search import packs

        packs.explore_startup(search, study, store, out_dir, progress, search.pack_trials)
    _explore(search, study, store, out_dir, progress, shared)
    if search.pack_trials > 1:
        packs.continue_chosen(search, store, out_dir, progress, search.pack_trials)
    else:
        _continue(search, store, out_dir, progress, shared)
    return counts(search, study, store)


def trial_rows(store: store_lib.ResultsStore) -> dict[str, dict]:
    """run id -> row of every trial run recorded so far."""
    return {row["run_id"]: row for row in store.rows(kind="trial")}


def _pretrain(search, out_dir, store, progress, shared=None) -> None:
    """Pretrains the base model unless it is recorded (by this or another worker); a failure
    stops the search (every trial starts from it), so nothing is recorded then."""
    run = search_config.pretrain_run(search, out_dir)
    if run is None or store.status(run.run_id) == "finished":
        return
    with claims_lib.holding(store, run.run_id, shared):
        if store.status(run.run_id) != "finished":  # not pretrained while this worker waited
            _pretrain_base(search, run, out_dir, store, progress)


def _pretrain_base(search, run, out_dir, store, progress) -> None:
    progress.say(f"pretraining {search.base_model.name} ({search.base_model.pretrain_steps} steps)")
    model_dir = run.model_dir(out_dir)

    def train() -> execute.Record:
        summary = execute.train_run(run, model_dir)
        row = {
            **run.record,
            "steps": summary.step,
            "dev_loss": summary.best_dev_loss,
            "run_dir": model_dir,
            "wall_time": summary.wall_time_s,
            "config_hash": run.run_id,
        }
        return execute.Record("finished", row)

    execute.execute(store, run.run_id, run.kind, train, failed_row=None)


def _done(study: optuna.Study) -> int:
    """Trials that count towards `Search.trials`: complete, pruned, or failed in training
    (not those closed because a kill interrupted them; their config runs again)."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
    return len(finished) + len(failed)


def _recover(search, study: optuna.Study, store, shared=None) -> None:
    """Closes the trials a kill left RUNNING: told from their row if it was written, else
    failed and enqueued again (the same config, hence the same MODEL_DIR to resume)."""
    rows = trial_rows(store)
    for trial in workers.running(study):
        if not workers.stale(trial, store, shared):
            continue
        row = rows.get(trial.user_attrs.get("run_id"), {})
        early = row.get(f"early_{search.metric}")
        if early is not None and row.get("pruned"):
            study.tell(trial.number, state=TrialState.PRUNED)
        elif early is not None:
            study.tell(trial.number, early)
        else:
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"resumes_trial": trial.number})
            log.warning("trial %d was interrupted; its config runs again", trial.number)


def _explore(search, study, store, out_dir, progress, shared=None) -> None:
    while (done := _done(study)) < search.trials:
        if shared is not None and _wait_for_others(search, study, store, shared):
            continue
        # Several workers seed by the trials asked so far: at once, they draw other configs.
        position = done if shared is None else len(study.get_trials(deepcopy=False))
        study.sampler = sampler(search, position)
        trial = study.ask()
        # The trial's lease, held until Optuna is told: without one it looks abandoned.
        with claims_lib.holding(store, workers.trial_key(trial.number), shared):
            if shared is not None and workers.surplus(search, study, trial):
                continue
            values = search.space.suggest(trial)
            run = search_config.trial_run(search, values, out_dir)
            trial.set_user_attr("run_id", run.run_id)
            progress.trial_started(done + 1, trial.number, values)
            with claims_lib.holding(store, run.run_id, shared):  # one worker per MODEL_DIR
                _trial(search, study, trial, run, store, out_dir, progress)


def _trial(search, study, trial, run, store, out_dir, progress, outcome=None) -> None:
    """The early phase of one asked trial, recorded, then told to Optuna. `outcome`: what a
    pack trained for it (packs.py), a summary or the error that ended it; None trains here."""
    record, trained = _early_phase(search, run, trial.number, store, out_dir, outcome)
    if record.status == "failed":  # recorded; the search goes on (TPE ignores it)
        trial.set_user_attr("error", record.error.splitlines()[0][:500])
        study.tell(trial, state=TrialState.FAIL)
        progress.trial_failed(trial.number, record.error)
        return
    row = {**record.row, "run_id": run.run_id, "status": record.status}
    _tell_early(search, study, trial, row, store)
    progress.trial_done(trial.number, row, search.metric, trained)


def _wait_for_others(search, study, store, shared) -> bool:
    """With the budget taken by trials done and running elsewhere: waits a poll (recovering
    a dead worker's trial) and says so; else False (this worker asks for a trial)."""
    _recover(search, study, store, shared)
    if _done(study) + len(workers.running(study)) < search.trials:
        return False
    time.sleep(shared.poll_s)
    return True


def _early_phase(search, run, number, store, out_dir, outcome=None) -> tuple[execute.Record, bool]:
    """(record, trained): the run's record after its early phase, trained (or its pack's
    `outcome` taken) only if its row has no early metric yet; the trial number joins the row's
    `trials` either way."""
    before = trial_rows(store).get(run.run_id)
    trained = before is None or before.get(f"early_{search.metric}") is None
    model_dir = run.model_dir(out_dir)

    def train() -> execute.Record:
        row = before
        if trained and outcome is None:
            summary = execute.train_run(run, model_dir, search.early_fraction)
        elif trained:
            summary = execute.outcome_summary(outcome, f"run {run.run_id}", PHASE_ENDS)
        if trained:
            row = _early_row(run, summary, model_dir)
        row = {**row, "trials": sorted({*row.get("trials", []), number})}
        return execute.Record(row["status"], _stored(row))

    failed = _stored(before or {**run.record, "run_dir": model_dir})
    record = execute.execute(
        store, run.run_id, "trial", train, failed, propagate=(execute.Preempted,)
    )
    return record, trained


def _early_row(run, summary: summary_lib.RunSummary, model_dir: str) -> dict:
    row = {**run.record, **_early_fields(summary), "run_dir": model_dir}
    row.update(config_hash=run.run_id, status="early", trials=[])
    if summary.finished:  # a budget so small the early phase is all of it
        row.update(_final_fields(summary), status="finished")
    return row


def _stored(row: dict) -> dict:
    """A row as the store keeps it (its id, kind and status are columns of their own)."""
    return {k: v for k, v in row.items() if k not in ("run_id", "kind", "status", "error")}


def _early_fields(summary: summary_lib.RunSummary) -> dict:
    return {
        "early_step": summary.step,
        "total_steps": summary.total_steps,
        "early_dev_loss": summary.final_dev_loss,
        "early_dev_ppl": summary.final_dev_ppl,
        "early_wall_time": summary.wall_time_s,
        "early_compile_time": summary.compile_time_s,
        "trainable_params": summary.trainable_params,
    }


def _final_fields(summary: summary_lib.RunSummary) -> dict:
    return {
        "steps": summary.step,
        "best_step": summary.best_step,
        "final_dev_loss": summary.best_dev_loss,
        "final_dev_ppl": summary.best_dev_ppl,
        "last_dev_loss": summary.final_dev_loss,
        "last_dev_ppl": summary.final_dev_ppl,
        "test_loss": summary.test_loss,
        "test_ppl": summary.test_ppl,
        "final_wall_time": summary.wall_time_s,
    }


def _tell_early(search, study, trial, row, store) -> None:
    value = row[f"early_{search.metric}"]
    trial.report(value, step=round(REPORT_STEPS * search.early_fraction))
    if trial.should_prune():
        row["pruned"] = True
        store.record(row["config_hash"], "trial", row["status"], _stored(row))
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, value)


def continued(search, rows: dict[str, dict]) -> list[dict]:
    """Rows that go to the full budget: by early metric, all or the top_k (pruned excluded)."""
    key = f"early_{search.metric}"
    ranked = sorted(
        (r for r in rows.values() if r.get(key) is not None and not r.get("pruned")),
        key=lambda r: (r[key], r["run_id"]),
    )
    return ranked if search.full_budget_for == "all" else ranked[: search.top_k]


def _continue(search, store, out_dir, progress, shared=None) -> None:
    """Resumes the chosen runs to their full budget; with several workers, each takes the
    runs no other holds, and waits until all of them are done."""
    chosen = continued(search, trial_rows(store))
    pending = [(position, row["run_id"]) for position, row in enumerate(chosen, start=1)]
    while pending:
        held_elsewhere = []
        for position, run_id in pending:
            with claims_lib.holding(store, run_id, shared, wait=False) as held:
                if held:
                    row = trial_rows(store)[run_id]  # as recorded now, maybe by another worker
                    _continue_one(search, row, position, len(chosen), store, out_dir, progress)
                else:
                    held_elsewhere.append((position, run_id))
        pending = held_elsewhere
        if pending:
            time.sleep(shared.poll_s)


def continued_run(search, row: dict, out_dir: str):
    """The run a trial's row continues (its config, checked against the row's id)."""
    run = search_config.trial_run(search, row["params"], out_dir)
    if run.run_id != row["run_id"]:
        raise RuntimeError(f"run {row['run_id']} no longer matches its config: {row['params']}")
    return run


def _continue_one(search, row, position, total, store, out_dir, progress) -> None:
    if row["status"] == "finished":
        return
    run = continued_run(search, row, out_dir)
    progress.full_started(position, total, row)
    record_full(search, run, row, store, out_dir, progress)


def record_full(search, run, row, store, out_dir, progress, outcome=None) -> None:
    """The full phase of a continued trial, trained here (or its pack's `outcome` taken),
    recorded and reported."""
    record = _full_phase(run, row, store, out_dir, outcome)
    if record.status == "failed":  # recorded; its early result stays; a rerun retries it
        progress.trial_failed(row["trials"][0], record.error)
        return
    progress.full_done({**row, **record.row}, search.metric)


def _full_phase(run, row: dict, store, out_dir: str, outcome=None) -> execute.Record:
    """Resumes a run from its early phase to its full budget (or takes its pack's `outcome`)
    and records it."""

    def train() -> execute.Record:
        if outcome is None:
            summary = execute.train_run(run, run.model_dir(out_dir))
        else:
            summary = execute.outcome_summary(outcome, f"run {run.run_id}")
        return execute.Record("finished", _stored({**row, **_final_fields(summary)}))

    return execute.execute(
        store, run.run_id, "trial", train, _stored(row), propagate=(execute.Preempted,)
    )


def counts(search, study: optuna.Study, store) -> dict:
    """Trials by Optuna state, and runs by how far they trained."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    rows = trial_rows(store).values()
    return {
        "trials": _done(study),
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": sum(r["status"] == "failed" for r in rows),
        "full_budget": sum(r["status"] == "finished" for r in rows),
        "wanted_full_budget": len(continued(search, {r["run_id"]: r for r in rows})),
    }
