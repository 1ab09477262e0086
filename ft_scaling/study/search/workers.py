"""Several workers on one search (`--store=URL`): which trials are abandoned, which surplus.

Optuna's ask/tell keeps no heartbeat of its own here, so a trial's liveness is a lease its
worker holds (study/claims.py, key `trial_key`) from just after asking until Optuna is told,
also while it waits for another worker training the same config.
"""

import time

import optuna
from optuna.trial import TrialState


def running(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def trial_key(number: int) -> str:
    """The claim key of a trial's lease in the store (run ids are hex hashes: no clash)."""
    return f"trial#{number}"


def stale(trial, store, shared) -> bool:
    """Whether a RUNNING trial was left by a kill: all are for one worker (`shared` None); for
    several, one without a live lease, asked for over a lease ago (a trial just asked for
    has not taken its lease yet).

    Args:
      trial: a RUNNING FrozenTrial.
      store: the shared results store (its run leases).
      shared: the workers' claims.ClaimSettings, or None for a store of one worker.
    """
    if shared is None:
        return True
    age = time.time() - trial.datetime_start.timestamp()
    return age > shared.lease_s and not store.lease_live(trial_key(trial.number))


def surplus(search, study: optuna.Study, trial) -> bool:
    """Closes `trial` untrained (FAIL without an 'error': not counted) when the trials asked
    for before it already fill the budget: another worker asked at the same moment.

    Returns:
      Whether it was closed.
    """
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    before = sum(
        t.number < trial.number and (t.state in counted or "error" in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )
    if before < search.trials:
        return False
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    return True
