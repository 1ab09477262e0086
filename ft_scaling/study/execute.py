"""One run, executed and recorded: the path every orchestrator (study, search, classify) takes.

    execute(store, run_id, kind, train, failed_row)
      train()            the run's own callable: trains it (or resumes it, or finds it done)
                         and returns the Record to keep: its status ('finished', or a search
                         trial's 'early') and its results row
      returned           store.record(run_id, kind, status, row), the row in one transaction
      raised Exception   store.record(run_id, kind, 'failed', failed_row, message + traceback);
                         the orchestrator goes on with its next run. With failed_row=None
                         nothing is recorded and the error propagates (a stage every later
                         run needs, such as a search's base model)
      KeyboardInterrupt  and the `propagate` exceptions (a search's Preempted): propagate
                         unrecorded, so a rerun continues the run from its checkpoints
      a full disk        (files.DiskFullError, or any error saying so) propagates unrecorded
                         too: every later run would fail the same way, and once space is
                         freed a rerun continues this one from its checkpoints

    train_run(run, model_dir, budget_fraction)      the train callable of a gin run
      flags.parse_gin(run.gin_files, run.bindings + MODEL_DIR) -> loop.train() -> RunSummary,
      checked: 'finished' (or 'paused' below the full budget) is returned; 'preempted' raises
      Preempted (its checkpoint is saved)
    outcome_summary(outcome, what)                  a packed run's summary or error, checked
                                                    as train_run checks its own

A classification run (classify/run.py) is not a gin run; it hands `execute` its own callable.
"""

import dataclasses
import logging
import traceback
from collections.abc import Callable, Mapping

from ft_scaling import files
from ft_scaling.config import flags
from ft_scaling.train import summary as summary_lib

log = logging.getLogger(__name__)

TRACEBACK_CHARS = 4000  # the end of a failed run's traceback, kept in its row


class Preempted(RuntimeError):
    """Training was preempted (SIGTERM); its checkpoint is saved and a rerun continues it."""


@dataclasses.dataclass(frozen=True)
class Record:
    """What the results store keeps of one run.

    Attributes:
      status: 'finished', 'failed', or an orchestrator's own ('early': a search trial stopped
        at its early budget).
      row: the results row (JSON-serialisable).
      error: for a failed run, its error message and the end of its traceback.
    """

    status: str
    row: Mapping[str, object]
    error: str | None = None


def execute(
    store,
    run_id: str,
    kind: str,
    train: Callable[[], Record],
    failed_row: Mapping[str, object] | None,
    propagate: tuple[type[BaseException], ...] = (),
) -> Record:
    """Runs `train` and records its outcome; see the module docstring.

    Args:
      store: a results store (`store.ResultsStore` or anything with its `record`).
      run_id, kind: the run's key and kind in the store.
      train: trains the run and returns the Record to keep.
      failed_row: the row recorded when `train` raises; None lets the error propagate.
      propagate: further exceptions that propagate unrecorded, like KeyboardInterrupt.

    Returns:
      The Record written: train's, or a 'failed' one whose `error` holds the message.
    """
    try:
        record = train()
    except (KeyboardInterrupt, *propagate):
        raise
    except Exception as err:  # recorded with its traceback; the orchestrator goes on
        if failed_row is None or files.is_disk_full(err):
            raise
        message = f"{type(err).__name__}: {err}"
        log.error("run %s failed: %s", run_id, message)
        tail = traceback.format_exc()[-TRACEBACK_CHARS:]
        record = Record("failed", dict(failed_row), f"{message}\n{tail}")
    store.record(run_id, kind, record.status, dict(record.row), record.error)
    return record


def check_status(
    summary: summary_lib.RunSummary, what: str, allowed: tuple[str, ...] = ("finished",)
) -> summary_lib.RunSummary:
    """Returns `summary` if its status is allowed.

    Raises:
      Preempted: the run was preempted (its checkpoint is saved).
      RuntimeError: another status outside `allowed`.
    """
    if summary.status == "preempted" and "preempted" not in allowed:
        raise Preempted(f"{what} was preempted at step {summary.step}")
    if summary.status not in allowed:
        raise RuntimeError(f"{what} stopped with status {summary.status!r}")
    return summary


def outcome_summary(
    outcome, what: str, allowed: tuple[str, ...] = ("finished",)
) -> summary_lib.RunSummary:
    """A packed run's outcome (train/packed_loop.py hands over a summary or the error that
    ended the run) as `train_run` would have returned it: the error raised, or the summary
    checked by `check_status`."""
    if isinstance(outcome, BaseException):
        raise outcome
    return check_status(outcome, what, allowed)


def train_run(run, model_dir: str, budget_fraction: float = 1.0) -> summary_lib.RunSummary:
    """Trains a gin run (or resumes it) through `loop.train`; returns its checked summary.

    Args:
      run: a `sweep.Run` (its gin files and bindings; MODEL_DIR is added here).
      model_dir: the run's directory.
      budget_fraction: < 1 stops at that fraction of the run's steps (status 'paused').

    Raises:
      Preempted: the trainer was preempted; its checkpoint is saved.
    """
    parse_run_gin(run, model_dir, budget_fraction)
    from ft_scaling.train import loop  # imports JAX and the input pipeline: only to train

    allowed = ("finished",) if budget_fraction >= 1.0 else ("finished", "paused")
    return check_status(loop.train(), f"run {run.run_id}", allowed)


def parse_run_gin(run, model_dir: str, budget_fraction: float = 1.0) -> None:
    """Parses a gin run's config (its gin files and bindings, MODEL_DIR added) into gin."""
    bindings = [*run.bindings, f"MODEL_DIR={model_dir!r}"]
    if budget_fraction < 1.0:
        bindings.append(f"train.budget_fraction={budget_fraction!r}")
    flags.parse_gin(run.gin_files, bindings)
