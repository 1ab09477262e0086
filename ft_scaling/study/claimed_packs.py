"""Packs of claimed runs: workers sharing a store (--store) with Study.pack_runs = K > 1.

    worker (its process 0 talks to the store; the other hosts of a pod follow what it
    broadcasts and train the same packs as one program):
      claim the next runnable run in plan order, as claims.run_claimed does
        a pretraining run, a run whose base failed, one that packs with no other -> alone
        a finetuning run of pack group G -> a pack of it and G's candidates: the runs of G
          runnable now, longest first (each set up once by this worker to learn its group);
          the pack claims a candidate whenever a slot is free (store.claim among them), so
          the candidates other workers took first train in their packs
      every run of a pack: its lease renewed by one thread (claims.Leases), its row recorded
          through the one executor when it ends (execute.py), then its lease released

A worker that dies leaves its pack's runs to expire and be claimed again: each resumes from
its last checkpoint in its MODEL_DIR, as in a solo study (packed_loop.py: a slot restores its
run's checkpoint and data position). A packed run's row equals its solo run's
(tests/study/claimed_packs_test.py).
"""

import logging
import sys
import time
from collections.abc import Sequence

from ft_scaling.study import claims, execute

log = logging.getLogger(__name__)


def run_claimed_packed(
    name: str,
    runs: Sequence,
    store,
    execution,
    settings: claims.ClaimSettings,
    leader: bool,
    slots: int,
) -> dict:
    """Claims runs until none is left, finetuning runs in packs of up to `slots`; returns this
    worker's counts (as claims.run_claimed). `execution`: runner._Execution."""
    from ft_scaling.train import packed_loop  # imports JAX and the input pipeline: to train

    counts = {"finished": 0, "failed": 0, "total": len(runs)}
    since, worker = time.time(), settings.name()
    if leader:
        store.add_plan([(r.run_id, r.depends_on) for r in runs])
    setups = _SetUps(execution)
    with claims.Leases(store if leader else _NoStore(), worker, settings.lease_s) as leases:
        while True:
            choice = claims.next_claim(store, runs, settings, since) if leader else (claims.DONE, 0)
            position, dependency_failed = claims.agree(choice)
            if position == claims.DONE:
                return counts
            run = runs[position]
            leases.add(run.run_id)
            sys.stderr.write(f"[study {name}] {worker} claimed {run.kind} {run.run_id}\n")
            first = None
            if run.kind == "finetune" and not dependency_failed:
                first = setups.get(run)
            candidates = []
            if first is not None:
                group = packed_loop.pack_group(first.run)
                found = _candidates(store, runs, run, group, setups, since) if leader else []
                candidates = [runs[i] for i in _agree_list(found)]
            if not candidates:
                setups.used(run.run_id)
                record = execution.execute(run, bool(dependency_failed))
                leases.release(run.run_id)
                _count(counts, name, run, record, "alone")
                continue
            queue = _ClaimedQueue(first, run, candidates, setups, store, leases, settings, since)
            queue.leader = leader
            _train_pack(name, queue, slots, execution, leases, counts)


def _candidates(store, runs, run, group, setups, since) -> list[int]:
    """Positions of the runs of `group` (besides `run`) a claim could take now, longest
    first; each set up here once to learn its group."""
    finetune = [r.run_id for r in runs if r.kind == "finetune" and r.run_id != run.run_id]
    position = {r.run_id: i for i, r in enumerate(runs)}
    found = []
    for run_id in store.runnable(since, finetune):
        prepared = setups.get(runs[position[run_id]])
        if prepared is not None and setups.group(run_id) == group:
            found.append(position[run_id])
    # Longest first (stable: plan order among equals), as a worker's own packs train.
    return sorted(found, key=lambda i: -setups.get(runs[i]).run.total_steps)


def _agree_list(values: list[int]) -> list[int]:
    """Process 0's list on every host (its length first, then its items)."""
    (length,) = claims.agree([len(values)])
    # Every host sends an array of the same shape (the others' values are ignored).
    return claims.agree(values if values else [0] * length) if length else []


class _SetUps:
    """Each run set up once (its gin parsed and checked) and its pack group, by run id."""

    def __init__(self, execution):
        self.execution, self._prepared, self._groups = execution, {}, {}

    def get(self, run):
        if run.run_id not in self._prepared:
            self._prepared[run.run_id] = self.execution.prepare(run, claimed=True)
        return self._prepared[run.run_id]

    def group(self, run_id: str):
        if run_id not in self._groups:
            from ft_scaling.train import packed_loop

            self._groups[run_id] = packed_loop.pack_group(self._prepared[run_id].run)
        return self._groups[run_id]

    def used(self, run_id: str) -> None:
        """The run trained (or started to): set up afresh if it is ever claimed again."""
        self._prepared.pop(run_id, None)
        self._groups.pop(run_id, None)


class _ClaimedQueue:
    """packed_loop.RunQueue's methods over a shared store: `take` claims the next candidate
    that no other worker holds (longest first); `len` counts those a claim could take now.
    Every host of a pod asks at the same points and gets process 0's answer."""

    def __init__(self, first, first_run, candidates, setups, store, leases, settings, since):
        self.runs = [first, *(setups.get(r) for r in candidates)]  # fix the pack's layout
        self._next, self._left = first, [r.run_id for r in candidates]
        self._by_id = {r.run_id: r for r in [first_run, *candidates]}
        self.run_of = {id(first): first_run}
        self._setups, self._store, self._leases = setups, store, leases
        self._settings, self._since = settings, since
        self.leader = True  # process 0: it alone asks the store
        setups.used(first_run.run_id)

    def __len__(self) -> int:
        if self._next is not None:
            return 1 + self._runnable()
        return self._runnable()

    def _runnable(self) -> int:
        if not self._left:
            return 0
        found = len(self._store.runnable(self._since, self._left)) if self.leader else 0
        (count,) = claims.agree([found])
        if count == 0:  # the rest are other workers' (or finished): no more store queries
            self._left = []
        return count

    def take(self):
        if self._next is not None:
            first, self._next = self._next, None
            return first
        if not self._left:
            return None
        run_id = None
        if self.leader:
            run_id = self._store.claim(
                self._settings.name(), self._settings.lease_s, self._since, among=self._left
            )
        (index,) = claims.agree([-1 if run_id is None else self._left.index(run_id)])
        if index < 0:
            self._left = []
            return None
        run = self._by_id[self._left.pop(index)]
        self._leases.add(run.run_id)
        prepared = self._setups.get(run)
        self._setups.used(run.run_id)
        self.run_of[id(prepared)] = run
        if self.leader:
            sys.stderr.write(f"[pack] {self._settings.name()} claimed finetune {run.run_id}\n")
        return prepared


def _train_pack(name, queue, slots, execution, leases, counts) -> None:
    from ft_scaling.train import packed_loop

    preempted = []

    def done(prepared, outcome) -> None:
        run = queue.run_of[id(prepared)]
        try:
            record = execution.record(run, outcome)
        except execute.Preempted as err:  # saved; raised once the whole pack is saved
            preempted.append(err)
            return
        leases.release(run.run_id)
        _count(counts, name, run, record, "in a pack")

    packed_loop.PackedTrainer(queue, slots, done).train()
    if preempted:
        raise preempted[0]


def _count(counts: dict, name: str, run, record: execute.Record, how: str) -> None:
    counts[record.status] = counts.get(record.status, 0) + 1
    sys.stderr.write(f"[study {name}] {run.kind} {run.run_id} {record.status} ({how})\n")


class _NoStore:
    """What the other hosts of a pod hold instead of the store: leases are process 0's."""

    def release(self, run_id, worker):
        del run_id, worker

    def renew(self, run_id, worker, lease_s):
        del run_id, worker, lease_s
        return True
