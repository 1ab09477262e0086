"""A study's finetuning runs trained in packs (Study.pack_runs = K > 1; train/packed_loop.py).

    pretraining runs   alone, first, in plan order (the finetuning runs start from them)
    finetuning runs    each set up first (its dependency finished, its gin parsed and
                       checked: bad input is recorded as that run's failure, by name, before
                       any step), then grouped by `packed_loop.pack_group`; a group trains K
                       runs at a time, longest first, a slot whose run ends taking the next;
                       a run that packs with no other (no base checkpoint) trains alone
    each ended run     its row recorded through the one executor (execute.py), as unpacked

A packed run's row, checkpoints, metrics, config and summary are a solo run's, in its own
directory. Killed, the study resumes as an unpacked one does: finished runs are skipped, and
every other run restores its latest checkpoint when its turn in a pack comes.
"""

import sys
import time

from ft_scaling.study import execute


def run_packed(name: str, mine: list, execution, slots: int) -> dict:
    """Trains this worker's runs (`mine`, plan order), finetuning runs in packs of `slots`;
    returns counts of runs, as `runner._run_all` does."""
    counts = {"finished": 0, "failed": 0, "skipped": 0, "total": len(mine)}
    pending = []
    for run in mine:
        if execution.store.status(run.run_id) == "finished":
            counts["skipped"] += 1
        else:
            pending.append(run)

    progress = _Progress(name, len(pending))
    for run in [r for r in pending if r.kind != "finetune"]:
        progress.starting(run)
        progress.ended(run, _count(counts, execution.execute(run)))
    finetune = [r for r in pending if r.kind == "finetune"]
    started = time.time()
    sys.stderr.write(f"[study {name}] setting up {len(finetune)} finetuning runs for packs\n")
    prepared_runs = []
    for run in finetune:
        prepared = execution.prepare(run)
        if prepared is None:  # recorded as failed, naming its error
            counts["failed"] += 1
        else:
            prepared_runs.append((run, prepared))
    groups, alone = by_pack_group(prepared_runs)
    for number, members in enumerate(groups, start=1):
        sys.stderr.write(
            f"[study {name}] pack group {number}/{len(groups)}: {len(members)} runs, "
            f"{slots} at a time\n"
        )
        _train_group(members, slots, execution, counts, progress)
    for run in alone:
        progress.starting(run)
        progress.ended(run, _count(counts, execution.execute(run)))
    finetuning_rate(name, len(finetune), time.time() - started, f"in packs of {slots}")
    return counts


def finetuning_rate(name: str, runs: int, seconds: float, how: str) -> None:
    """The line benchmarks/packed_runs.py reads: the finetuning phase's runs per minute."""
    if runs:
        sys.stderr.write(
            f"[study {name}] finetuning phase: {runs} runs {how} in {seconds:.1f} s "
            f"({60 * runs / max(seconds, 1e-9):.2f} runs/min)\n"
        )


def by_pack_group(prepared_runs: list) -> tuple[list[list], list]:
    """(groups of (run, prepared) pairs that can share a pack, in first-seen order; the runs
    that pack with no other and train alone)."""
    from ft_scaling.train import packed_loop

    groups, alone = {}, []
    for run, prepared in prepared_runs:
        group = packed_loop.pack_group(prepared.run)
        if group is None:
            alone.append(run)
        else:
            groups.setdefault(group, []).append((run, prepared))
    return list(groups.values()), alone


def train_group(members: list, slots: int, done) -> None:
    """Trains one group's (run, prepared) pairs in packs of `slots`; done(run, summary | error)
    as each ends."""
    from ft_scaling.train import packed_loop

    # Longest first (sorted is stable: plan order among equals), so the pack's last runs end
    # together rather than one long run training beside idle slots.
    members = sorted(members, key=lambda member: -member[1].run.stop_step)
    run_of = {id(prepared): run for run, prepared in members}
    packed_loop.PackedTrainer(
        [prepared for _, prepared in members],
        slots,
        lambda prepared, outcome: done(run_of[id(prepared)], outcome),
    ).train()


def _train_group(members: list, slots: int, execution, counts: dict, progress) -> None:
    preempted = []

    def done(run, outcome) -> None:
        try:
            record = execution.record(run, outcome)
        except execute.Preempted as err:  # saved; raised once the whole pack is saved
            preempted.append(err)
            return
        progress.ended(run, _count(counts, record))

    train_group(members, slots, done)
    if preempted:
        raise preempted[0]


def _count(counts: dict, record: execute.Record) -> str:
    counts[record.status] += 1
    return record.status


class _Progress:
    """One line per run that ends, with the study's ETA from the runs ended so far."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.ended_runs, self.started = name, total, 0, time.time()

    def starting(self, run) -> None:
        sys.stderr.write(f"[study {self.name}] {run.kind} {run.run_id} (alone)\n")

    def ended(self, run, status: str) -> None:
        self.ended_runs += 1
        elapsed = time.time() - self.started
        left = self.total - self.ended_runs
        eta = int(elapsed / self.ended_runs * left)
        sys.stderr.write(
            f"[study {self.name}] {self.ended_runs}/{self.total} runs ended: {run.kind} "
            f"{run.run_id} {status} (ETA {eta // 60}m{eta % 60:02d}s)\n"
        )
