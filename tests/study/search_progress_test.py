"""Progress lines and the ETA's cost model (overhead + steps x seconds per step)."""

import io

from ft_scaling.study.search import progress as search_progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _row(early_step, total_steps, compile_s=0.0):
    return {"early_step": early_step, "total_steps": total_steps, "early_dev_loss": 5.0,
            "early_compile_time": compile_s, "trials": [0], "final_dev_loss": 4.9,
            "test_loss": 5.1}  # fmt: skip


def test_eta_fits_overhead_and_seconds_per_step(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(search_progress.time, "time", clock)
    stream = io.StringIO()
    progress = search_progress.Progress("t", trials=4, continuations=4, stream=stream)
    # Two early phases: 10 steps in 3 s + 4 s compile, 20 steps in 5 s: 1 s + 0.2 s/step.
    for position, (steps, seconds, compile_s) in enumerate([(10, 7.0, 4.0), (20, 5.0, 0.0)], 1):
        progress.trial_started(position, position - 1, {"LEARNING_RATE": 0.01})
        clock.now += seconds
        progress.trial_done(position - 1, _row(steps, 5 * steps, compile_s), "dev_loss", True)
    # Left: 2 early phases at their mean 6 s; 4 continuations of mean (40 + 80) / 2 = 60 steps
    # at 1 + 60 x 0.2 = 13 s each.
    assert progress.eta() == search_progress.format_seconds(2 * 6.0 + 4 * 13.0) == "1m04s"
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[search t] trial 1/4 (#0) LEARNING_RATE=0.01"
    assert lines[-1] == "[search t] trial #1: early dev_loss 5.0000 at step 20/100 (ETA 1m04s)"


def test_eta_is_unknown_before_a_phase_and_counts_down_in_continuations(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(search_progress.time, "time", clock)
    progress = search_progress.Progress("t", trials=1, continuations=1, stream=io.StringIO())
    assert progress.eta() == "?"
    progress.trial_started(1, 0, {})
    clock.now += 2.0
    progress.trial_done(0, _row(5, 25), "dev_loss", True)
    assert progress.eta() == "0m02s"  # one step count seen: a phase costs what it cost
    progress.full_started(1, 1, _row(5, 25))
    clock.now += 9.0
    progress.full_done(_row(5, 25), "dev_loss")
    assert progress.eta() == "0m00s"


def test_a_resumed_search_estimates_continuations_from_them(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(search_progress.time, "time", clock)
    progress = search_progress.Progress("t", trials=3, continuations=3, stream=io.StringIO())
    progress.full_started(2, 3, _row(5, 25))  # trials and continuation 1 ran before the kill
    clock.now += 10.0
    progress.full_done(_row(5, 25), "dev_loss")
    assert progress.eta() == "0m10s"  # one continuation of 20 steps left, measured at 10 s


def test_trials_trained_in_a_pack_share_its_time(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(search_progress.time, "time", clock)
    progress = search_progress.Progress("t", trials=6, continuations=0, stream=io.StringIO())
    for position in range(1, 5):  # 4 trials asked at once, then trained as one pack
        progress.trial_started(position, position - 1, {})
    clock.now += 8.0
    with progress.packed(4):
        for number in range(4):
            progress.trial_done(number, _row(5, 25), "dev_loss", True)
    # Each was charged 8 s / 4, so the 2 trials left (one by one) are estimated at 2 s each.
    assert progress.eta() == search_progress.format_seconds(2 * 2.0) == "0m04s"
    progress.trial_started(5, 4, {})
    clock.now += 3.0
    progress.trial_done(4, _row(5, 25), "dev_loss", True)  # outside the pack: all its 3 s
    assert progress.eta() == search_progress.format_seconds((4 * 2.0 + 3.0) / 5) == "0m02s"
