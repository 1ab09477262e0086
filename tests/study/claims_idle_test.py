"""Idle worker time with claims vs run i mod P, on simulated run costs (benchmarks/claims_idle.py).

No training: a run is a cost; the claims side draws from a real store with a simulated clock.
"""

import pytest

from benchmarks import claims_idle
from ft_scaling.study import sweep


def _run(run_id, depends_on=None):
    kind = "finetune" if depends_on else "pretrain"
    return sweep.Run(run_id, kind, (), (), {}, depends_on=depends_on)


def test_a_hand_computed_schedule():
    # Worker 1 of 2 draws the 6-unit run and the 1-unit run after it under mod P; claims give
    # the small runs to whichever worker is free.
    runs = [_run("pre"), _run("f1", "pre"), _run("f2", "pre"), _run("f3", "pre"), _run("f4", "pre")]
    cost = {"pre": 2.0, "f1": 6.0, "f2": 4.0, "f3": 1.0, "f4": 1.0}
    by_index = claims_idle.mod_p(runs, cost, workers=2)
    claimed = claims_idle.claims(runs, cost, workers=2)
    assert (by_index.makespan, claimed.makespan) == (9.0, 8.0)
    assert by_index.idle_fraction == pytest.approx(1 - 14 / 18)
    assert claimed.idle_fraction == pytest.approx(1 - 14 / 16)


def test_claims_leave_under_ten_percent_of_worker_time_idle():
    draws = [claims_idle.random_study(seed) for seed in range(3)]
    idle = claims_idle.compare(draws, workers=4)
    assert idle["claims"] < 0.10
    assert idle["mod P"] > 2 * idle["claims"]
    runs = claims_idle.plan()
    paper = claims_idle.compare([(runs, claims_idle.costs(runs))], workers=4)
    assert paper["claims"] < 0.10 and paper["claims"] < paper["mod P"]
    costs = claims_idle.costs(runs).values()
    assert max(costs) / min(costs) == pytest.approx(100.0)
