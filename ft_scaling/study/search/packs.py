"""A search's trials trained in packs (`Search.pack_trials` = K > 1; train/packed_loop.py).

    explore    the random startup trials are asked up to K at a time: each proposal seeded
               by its position in the search, as when asked one by one, so they are the same
               configs; their early phases train in packs, then each is recorded and told to
               Optuna in trial order, as one by one. The TPE trials after them stay one at a
               time: each is proposed from the results of all before it
    continue   the trials chosen for their full budget, set up and grouped by
               `packed_loop.pack_group` (one base, the same batch shape and method family:
               e.g. one group per searched BATCH_SIZE), resume from their early checkpoints
               in packs; each is recorded as it ends
    alone      a trial whose set-up fails is recorded as failed, naming its error; one that
               packs with no other trains alone, as one by one

A packed trial's directory, checkpoints and row are a solo trial's, so a killed packed search
resumes as an unpacked one does (run.py): its finished phases are read from the rows, every
other run restores its last checkpoint in its pack. One worker: packing trials of a search
shared through --store is refused before any step.
"""

import sys

from ft_scaling.study import execute, packed
from ft_scaling.study.search import config as search_config
from ft_scaling.study.search import run as search_run


def explore_startup(search, study, store, out_dir: str, progress, slots: int) -> None:
    """Asks, trains (in packs) and tells the startup trials not done yet."""
    while (done := search_run._done(study)) < min(search.startup_trials, search.trials):
        asked = []
        for position in range(done, min(done + slots, search.startup_trials, search.trials)):
            study.sampler = search_run.sampler(search, position)
            trial = study.ask()
            values = search.space.suggest(trial)  # before the next position's sampler
            run = search_config.trial_run(search, values, out_dir)
            trial.set_user_attr("run_id", run.run_id)
            progress.trial_started(position + 1, trial.number, values)
            asked.append((trial, run))
        rows = search_run.trial_rows(store)
        early = f"early_{search.metric}"
        untrained = {r.run_id: r for _, r in asked if rows.get(r.run_id, {}).get(early) is None}
        outcomes = train(list(untrained.values()), out_dir, search.early_fraction, slots)
        preempted = None
        with progress.packed(len(untrained)):
            for trial, run in asked:  # in trial order, as one by one (the pruner compares)
                try:
                    outcome = outcomes.get(run.run_id)
                    search_run._trial(search, study, trial, run, store, out_dir, progress, outcome)
                except execute.Preempted as err:  # saved; the other trials are told first
                    preempted = preempted or err
        if preempted:
            raise preempted


def continue_chosen(search, store, out_dir: str, progress, slots: int) -> None:
    """The full phase of every chosen trial not finished yet, in packs."""
    chosen = search_run.continued(search, search_run.trial_rows(store))
    todo = [(p, row) for p, row in enumerate(chosen, start=1) if row["status"] != "finished"]
    runs = {}
    for position, row in todo:
        runs[row["run_id"]] = search_run.continued_run(search, row, out_dir)
        progress.full_started(position, len(chosen), row)
    preempted = None

    def record(run, outcome) -> None:
        nonlocal preempted
        row = dict(search_run.trial_rows(store)[run.run_id])
        try:
            search_run.record_full(search, run, row, store, out_dir, progress, outcome)
        except execute.Preempted as err:  # saved; raised once the whole pack is saved
            preempted = preempted or err

    with progress.packed(min(slots, len(runs))):
        train(list(runs.values()), out_dir, 1.0, slots, record)
    if preempted:
        raise preempted


def train(runs: list, out_dir: str, budget_fraction: float, slots: int, done=None) -> dict:
    """Trains `runs` (sweep.Run) to `budget_fraction` of their steps, in packs of `slots`
    where they pack; done(run, summary | error) as each ends (default: collected).
    Returns run id -> outcome of the runs `done` was not given for."""
    from ft_scaling.train import loop  # imports JAX and the input pipeline

    outcomes = {}
    done = done or (lambda run, outcome: outcomes.__setitem__(run.run_id, outcome))
    prepared_runs = []
    for run in runs:
        try:
            execute.parse_run_gin(run, run.model_dir(out_dir), budget_fraction)
            prepared_runs.append((run, loop.prepared()))
        except Exception as err:  # noqa: BLE001  (recorded as the trial's failure, by name)
            done(run, err)
    groups, alone = packed.by_pack_group(prepared_runs)
    for number, members in enumerate(groups, start=1):
        sys.stderr.write(
            f"[search] pack group {number}/{len(groups)}: {len(members)} trials, "
            f"{slots} at a time\n"
        )
        packed.train_group(members, slots, done)
    for run in alone:
        try:
            outcome = execute.train_run(run, run.model_dir(out_dir), budget_fraction)
        except execute.Preempted:
            raise
        except Exception as err:  # noqa: BLE001  (recorded as the trial's failure)
            outcome = err
        done(run, outcome)
    return outcomes
