"""The early-stopped search, end to end on a micro search (tiny_0, 3 trials of 8 steps).

Training is counted two ways: calls of `execute.train_run` (a finished trial is never trained
again) and jitted train steps (a resumed trial repeats no step). Kills are simulated in
process: SIGTERM mid-training (the trainer saves and stops, as on preemption) and
KeyboardInterrupt between runs; every rerun must end where an uninterrupted search ends.
"""

import math
import os
import signal

import numpy as np
import pytest

from ft_scaling.config import flags
from ft_scaling.study import execute
from ft_scaling.study.search import config as search_config
from ft_scaling.study.search import run as search
from ft_scaling.train import trainer

MICRO = "tests/study/micro_search.gin"
PRETRAIN_STEPS = 10


class Counter:
    """Counts train_run calls and train steps; injects kills at chosen points.

    Args:
      sigterm_at_step: global train-step counts after which SIGTERM is sent to this process.
      interrupt_at_call: train_run call numbers (1-based) that raise KeyboardInterrupt
        before training, as a kill between runs would.
      interrupt_tell: the early result (1-based) whose telling to Optuna is killed.
    """

    def __init__(self, monkeypatch, sigterm_at_step=(), interrupt_at_call=(), interrupt_tell=0):
        self.calls, self.steps = [], 0
        self._sigterm, self._interrupt = set(sigterm_at_step), set(interrupt_at_call)
        self._attempts, self._tells = 0, 0
        real_train_run, real_jit_steps = execute.train_run, trainer.jit_steps
        real_tell = search._tell_early

        def tell_early(*args):
            self._tells += 1
            if self._tells == interrupt_tell:  # the row is written, Optuna not yet told
                raise KeyboardInterrupt
            return real_tell(*args)

        def train_run(run, model_dir, budget_fraction=1.0):
            self._attempts += 1
            if self._attempts in self._interrupt:
                raise KeyboardInterrupt
            self.calls.append((run.kind, run.run_id, budget_fraction))
            return real_train_run(run, model_dir, budget_fraction)

        def jit_steps(*args, **kwargs):
            train_fn, eval_fn = real_jit_steps(*args, **kwargs)

            def counted(*step_args):
                out = train_fn(*step_args)
                self.steps += 1
                if self.steps in self._sigterm:
                    os.kill(os.getpid(), signal.SIGTERM)  # the trainer's flag: save and stop
                return out

            return counted, eval_fn

        monkeypatch.setattr(execute, "train_run", train_run)
        monkeypatch.setattr(search, "_tell_early", tell_early)
        monkeypatch.setattr(trainer, "jit_steps", jit_steps)


@pytest.fixture(autouse=True)
def _restore_sigterm():
    # The trainer installs its SIGTERM handler in the test process; put pytest's back.
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _search(*bindings) -> search_config.Search:
    flags.parse_gin([MICRO], list(bindings))
    return search_config.Search()


def _by_params(out_dir) -> dict[tuple, dict]:
    rows = search.trial_rows(_store(out_dir))
    return {tuple(sorted(r["params"].items())): r for r in rows.values()}


def _store(out_dir):
    from ft_scaling.study import store

    return store.ResultsStore(os.path.join(out_dir, "results.sqlite"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted micro search: (out dir, counts, rows by params, train calls, steps)."""
    out = str(tmp_path_factory.mktemp("reference"))
    with pytest.MonkeyPatch.context() as patch:
        counter = Counter(patch)
        counts = search.run_search(_search(), out)
    return out, counts, _by_params(out), counter.calls, counter.steps


def _base_binding(reference_dir: str) -> str:
    """Reuse the reference's pretrained base (BaseModel.checkpoint): no pretraining again."""
    run = search_config.pretrain_run(_search(), reference_dir)
    path = f"{run.model_dir(reference_dir)}/checkpoints/{PRETRAIN_STEPS}"
    return f"BaseModel.checkpoint = {path!r}"


def test_every_trial_trains_early_then_resumes_to_its_full_budget(reference):
    _, counts, rows, calls, steps = reference
    assert counts == {"trials": 3, "complete": 3, "pruned": 0, "failed": 0, "full_budget": 3,
                      "wanted_full_budget": 3}  # fmt: skip
    assert [c[0] for c in calls] == ["pretrain"] + ["trial"] * 6
    assert [c[2] for c in calls[1:]] == [0.5] * 3 + [1.0] * 3
    for row in rows.values():
        assert row["status"] == "finished" and row["total_steps"] == 8 and row["steps"] == 8
        assert row["early_step"] == math.ceil(0.5 * row["total_steps"]) == 4
        # The final metric is the best dev loss of the run, which saw the early evaluation.
        assert row["final_dev_loss"] <= row["early_dev_loss"]
        assert row["early_dev_ppl"] == pytest.approx(math.exp(row["early_dev_loss"]))
        assert math.isfinite(row["test_loss"])
    # Early phases and continuations together train each run exactly once.
    assert steps == PRETRAIN_STEPS + sum(r["total_steps"] for r in rows.values())
    assert len({r["params"]["LEARNING_RATE"] for r in rows.values()}) == 3


def test_a_continued_trial_equals_one_uninterrupted_run(reference, tmp_path):
    out, _, rows, _, _ = reference
    row = min(rows.values(), key=lambda r: r["early_dev_loss"])
    run = search_config.trial_run(_search(), row["params"], out)
    summary = execute.train_run(run, str(tmp_path / "straight"))
    assert summary.best_dev_loss == row["final_dev_loss"]
    assert summary.test_loss == row["test_loss"]


def test_rerunning_a_finished_search_trains_nothing(reference, monkeypatch):
    out, counts, rows, _, _ = reference
    counter = Counter(monkeypatch)
    assert search.run_search(_search(), out) == counts
    assert counter.calls == [] and counter.steps == 0
    assert _by_params(out) == rows


def _run_with_kills(config, out_dir: str, plans: list[dict]):
    """Runs the search once per plan (a fresh "process" each); only the last may finish.
    Returns (counts of the last run, every train_run call, train steps in all)."""
    calls, steps = [], 0
    for plan in plans:
        with pytest.MonkeyPatch.context() as patch:
            counter = Counter(patch, **plan)
            try:
                counts = search.run_search(config, out_dir)
                finished = True
            except (execute.Preempted, KeyboardInterrupt):
                finished = False
        calls += counter.calls
        steps += counter.steps
        assert finished == (plan == {})
    return counts, calls, steps


def test_killed_four_times_then_rerun_equals_uninterrupted(reference, tmp_path):
    ref_dir, _, ref_rows, _, _ = reference
    config = _search(_base_binding(ref_dir))
    # Each trial: 4 early steps, 4 more to its full budget. The kills, one per process:
    #   1. SIGTERM after the 2nd early step of trial 2 (steps 4 + 2 of the process);
    #   2. trial 2 resumes its last 2 early steps; the kill comes after its row is written,
    #      before Optuna is told;
    #   3. Optuna is told from the row (no training), trial 3 trains, continuation 1 runs, and
    #      the process is killed before continuation 2 starts (its 3rd train_run call);
    #   4. continuation 2 runs, SIGTERM after 2 steps of continuation 3 (steps 4 + 2);
    #   5. continuation 3 resumes for its last 2 steps.
    plans = [
        {"sigterm_at_step": [4 + 2]},
        {"interrupt_tell": 1},
        {"interrupt_at_call": [3]},
        {"sigterm_at_step": [4 + 2]},
        {},
    ]
    counts, calls, steps = _run_with_kills(config, str(tmp_path), plans)
    assert counts["trials"] == 3 and counts["full_budget"] == 3
    # Proposals depend on (seed, position, history) only, so the resumed search sampled what
    # the uninterrupted one did, and trained it to the same numbers.
    rows = _by_params(str(tmp_path))
    assert sorted(rows) == sorted(ref_rows)
    for key, row in rows.items():
        for metric in ("early_dev_loss", "final_dev_loss", "test_loss", "early_step", "steps"):
            assert row[metric] == ref_rows[key][metric], metric
    # No step was trained twice: a preempted run resumed from its checkpoint.
    assert steps == sum(r["total_steps"] for r in ref_rows.values())
    # 3 early phases + 3 continuations, plus the 2 preempted calls that were resumed.
    assert len(calls) == 8
    assert sum(1 for c in calls if c[2] == 1.0) == 4


def test_top_k_and_median_pruner_continue_only_unpruned_best(reference, tmp_path, monkeypatch):
    ref_dir, _, _, _, _ = reference
    bindings = [_base_binding(ref_dir), "Search.full_budget_for = 'top_k'", "Search.top_k = 1",
                "Search.pruner = 'median'", "Search.startup_trials = 1"]  # fmt: skip
    counter = Counter(monkeypatch)
    counts = search.run_search(_search(*bindings), str(tmp_path))
    store = _store(str(tmp_path))
    rows = sorted(search.trial_rows(store).values(), key=lambda r: r["trials"][0])
    kept = []  # MedianPruner: prune when worse than the median of the completed trials
    for row in rows:
        expect_pruned = bool(kept) and row["early_dev_loss"] > np.percentile(kept, 50)
        assert bool(row.get("pruned")) == expect_pruned
        if not expect_pruned:
            kept.append(row["early_dev_loss"])
    assert any(r.get("pruned") for r in rows)  # on these numbers trial 2 is pruned
    best = min((r for r in rows if not r.get("pruned")), key=lambda r: r["early_dev_loss"])
    assert [r["status"] for r in rows] == ["finished" if r is best else "early" for r in rows]
    assert all(r.get("final_dev_loss") is None for r in rows if r is not best)
    assert [c[2] for c in counter.calls] == [0.5, 0.5, 0.5, 1.0]
    assert counts["full_budget"] == 1 and counts["pruned"] == sum(
        bool(r.get("pruned")) for r in rows
    )


def test_trials_in_packs_equal_trials_one_by_one(reference, tmp_path, monkeypatch):
    from ft_scaling.train import packed_loop

    ref_dir, ref_counts, ref_rows, _, _ = reference
    packed_trials = []
    real_init = packed_loop.PackedTrainer.__init__

    def counted_init(self, runs, slots, done, *args, **kwargs):
        packed_trials.append(len(runs))
        real_init(self, runs, slots, done, *args, **kwargs)

    monkeypatch.setattr(packed_loop.PackedTrainer, "__init__", counted_init)
    counter = Counter(monkeypatch)
    config = _search(_base_binding(ref_dir), "Search.pack_trials = 3")
    counts = search.run_search(config, str(tmp_path))
    assert counts == ref_counts
    # The 2 random startup trials' early phases train as one pack, TPE's third trial alone
    # (its proposal needs the first two results), then the 3 continuations as one pack.
    assert packed_trials == [2, 3]
    assert counter.calls == [("trial", counter.calls[0][1], 0.5)]
    assert counter.steps == 4  # the third trial's early steps; the rest in packs
    rows = _by_params(str(tmp_path))
    assert sorted(rows) == sorted(ref_rows)  # the same configs were proposed
    for key, row in rows.items():
        for metric in ("early_step", "steps", "best_step", "trials"):
            assert row[metric] == ref_rows[key][metric], metric
        for metric in ("early_dev_loss", "final_dev_loss", "last_dev_loss", "test_loss"):
            assert row[metric] == pytest.approx(ref_rows[key][metric], rel=1e-5), metric


def test_packed_trials_refuse_a_shared_store(tmp_path):
    config = _search("Search.pack_trials = 2")
    with pytest.raises(ValueError, match="pack_trials=2 packs one worker's trials"):
        search.run_search(config, str(tmp_path), "sqlite:///" + str(tmp_path / "shared.db"))
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_a_packed_search_preempted_mid_pack_resumes_to_the_same_results(
    reference, tmp_path, monkeypatch
):
    from ft_scaling.train import packed_step

    ref_dir, ref_counts, ref_rows, _, _ = reference
    real_jit = packed_step.jit_packed_steps
    packed_steps = [0]

    def jit_packed_steps(*args, **kwargs):
        train_fn, eval_fn = real_jit(*args, **kwargs)

        def counted(*step_args):
            out = train_fn(*step_args)
            packed_steps[0] += 1
            if packed_steps[0] == 4 + 2:  # 2 steps into the continuations' pack
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return counted, eval_fn

    monkeypatch.setattr(packed_step, "jit_packed_steps", jit_packed_steps)
    config = _search(_base_binding(ref_dir), "Search.pack_trials = 3")
    with pytest.raises(execute.Preempted):
        search.run_search(config, str(tmp_path))
    assert all(r["status"] == "early" for r in _by_params(str(tmp_path)).values())
    assert search.run_search(config, str(tmp_path)) == ref_counts
    assert packed_steps[0] == 4 + 2 + 2  # the continuations resumed at their 6th step
    rows = _by_params(str(tmp_path))
    assert sorted(rows) == sorted(ref_rows)
    for key, row in rows.items():
        assert row["steps"] == ref_rows[key]["steps"] and row["status"] == "finished"
        for metric in ("final_dev_loss", "test_loss"):
            assert row[metric] == pytest.approx(ref_rows[key][metric], rel=1e-5), metric
