"""Workers that claim runs from one shared store, instead of taking run i mod P.

    worker (one process, or a whole pod: its process 0 talks to the store, the other hosts
    follow what it broadcasts, and all hosts train the claimed run together as one program):
        add the plan to the store (every worker adds the same plan; nothing is added twice)
        loop:
          claim the next runnable run (store.claim: plan order, so pretraining first; a
              finetuning run once its base has a row; a lease that expired is taken over)
          none runnable but some unfinished -> wait `poll_s` and claim again
          none unfinished                   -> done
          train it (execute.py) under its lease (Leases: a thread renews it every lease_s / 3),
              so a worker that dies stops renewing and its run is claimable lease_s later;
              the next worker resumes it from its checkpoints in the same MODEL_DIR
          its row is recorded, then the lease released (at once also when the worker is
              preempted or interrupted, so another worker may take the run over)

With Study.pack_runs = K > 1 a worker trains its finetuning runs in packs of claimed runs
(study/claimed_packs.py).

Why claims: with i mod P a pod that drew the large runs works long after the others sit idle;
claiming the next run keeps every worker busy until the plan runs out (benchmarks/claims_idle.py
measures the difference).
"""

import contextlib
import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

log = logging.getLogger(__name__)

DONE = -1  # broadcast: no unfinished run is left


@dataclasses.dataclass(frozen=True)
class ClaimSettings:
    """How a worker claims runs.

    Attributes:
      lease_s: a claim lasts this long unless renewed; a dead worker's run is claimable again
        after it (renewed every lease_s / 3 while the run trains).
      poll_s: wait between claims while every unfinished run is held or waits for its base.
      worker: this worker's name in the store (default: host name and process id).
    """

    lease_s: float = 180.0
    poll_s: float = 5.0
    worker: str = ""

    def name(self) -> str:
        return self.worker or f"{socket.gethostname()}-{os.getpid()}"


class Leases:
    """Renews the claims of the runs a worker trains (one run, or a pack's runs) in one
    background thread, every lease_s / 3 (train/loop.py untouched); `release` gives one back
    when its run is recorded, leaving the block gives back every one still held."""

    def __init__(self, store, worker: str, lease_s: float, run_ids=()):
        self._store, self._worker, self._lease_s = store, worker, lease_s
        self._held, self._lock = set(run_ids), threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{worker}")

    def add(self, run_id: str) -> None:
        """A run just claimed (store.claim took its lease): renewed from now on."""
        with self._lock:
            self._held.add(run_id)

    def release(self, run_id: str) -> None:
        with self._lock:
            self._held.discard(run_id)
        self._store.release(run_id, self._worker)

    def _renew(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            with self._lock:
                held = sorted(self._held)
            for run_id in held:
                try:
                    if not self._store.renew(run_id, self._worker, self._lease_s):
                        log.warning("lease of run %s was taken over by another worker", run_id)
                        with self._lock:
                            self._held.discard(run_id)
                except Exception as err:  # a database hiccup: the next renewal may get through
                    log.warning("renewing the lease of run %s failed: %s", run_id, err)

    def __enter__(self) -> "Leases":
        self._thread.start()
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self._stop.set()
        self._thread.join()
        # Also when preempted or interrupted: another worker may take the runs over at once.
        with self._lock:
            held, self._held = sorted(self._held), set()
        for run_id in held:
            try:
                self._store.release(run_id, self._worker)
            except Exception as err:  # the database is down: the lease expires by itself
                if error_type is None:
                    raise
                log.warning("releasing the lease of run %s failed: %s", run_id, err)


@contextlib.contextmanager
def holding(store, run_id: str, settings: ClaimSettings | None, wait: bool = True):
    """Holds the lease of one run while the block runs; yields whether it does.

    Several workers of a search may draw the same config, hence the same MODEL_DIR: one trains
    it at a time. `wait`: wait while another worker holds it (else yield False at once). With
    no settings (a store of one worker) there is nothing to hold: yields True.
    """
    if settings is None:
        yield True
        return
    store.add_plan([(run_id, None)])
    while not store.take(run_id, settings.name(), settings.lease_s):
        if not wait:
            yield False
            return
        time.sleep(settings.poll_s)
    with Leases(store, settings.name(), settings.lease_s, [run_id]):
        yield True


def agree(values: Sequence[int]) -> list[int]:
    """Process 0's `values`, on every process of a multi-host program (as given on one host)."""
    if jax.process_count() == 1:
        return list(values)
    from jax.experimental import multihost_utils

    shared = multihost_utils.broadcast_one_to_all(np.asarray(values, np.int32))
    return [int(v) for v in np.asarray(shared)]


def next_claim(store, runs: Sequence, settings: ClaimSettings, since: float) -> tuple[int, int]:
    """(position of the claimed run in `runs`, 1 if its dependency failed), or (DONE, 0)."""
    position = {r.run_id: i for i, r in enumerate(runs)}
    while True:
        run_id = store.claim(settings.name(), settings.lease_s, since)
        if run_id is not None:
            run = runs[position[run_id]]
            failed = run.depends_on is not None and store.status(run.depends_on) != "finished"
            return position[run_id], int(failed)
        if store.remaining(since) == 0:
            return DONE, 0
        time.sleep(settings.poll_s)


def run_claimed(
    name: str,
    runs: Sequence,
    store,
    execute_run: Callable,
    settings: ClaimSettings,
    leader: bool,
) -> dict:
    """Claims and executes runs until none is left; returns this worker's counts.

    Args:
      name: the study's name (progress lines).
      runs: the plan, pretraining first (every worker expands the same plan).
      store: the shared store (used only where `leader`).
      execute_run: `(run, dependency_failed) -> execute.Record`, trains and records a run.
      settings: lease and polling.
      leader: process 0 of this worker: it alone claims and writes.
    """
    counts = {"finished": 0, "failed": 0, "total": len(runs)}
    since = time.time()
    if leader:
        store.add_plan([(r.run_id, r.depends_on) for r in runs])
    while True:
        choice = next_claim(store, runs, settings, since) if leader else (DONE, 0)
        position, dependency_failed = agree(choice)
        if position == DONE:
            return counts
        run = runs[position]
        sys.stderr.write(f"[study {name}] {settings.name()} claimed {run.kind} {run.run_id}\n")
        if leader:
            with Leases(store, settings.name(), settings.lease_s, [run.run_id]):
                record = execute_run(run, bool(dependency_failed))
        else:
            record = execute_run(run, bool(dependency_failed))
        counts[record.status] = counts.get(record.status, 0) + 1
