"""The search report's numbers: Spearman rho against scipy and by hand, top-k overlap, ranks."""

import csv
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from ft_scaling.study import store
from ft_scaling.study.search import report as search_report


def test_spearman_rho_equals_scipy_and_the_rank_difference_formula():
    early = np.array([5.1, 4.9, 5.6, 5.0, 5.3, 6.2, 4.7, 5.45])
    final = np.array([4.8, 4.7, 5.0, 4.75, 5.2, 5.9, 4.6, 4.9])
    result = search_report.rank_agreement(early, final, k=5)
    reference = stats.spearmanr(early, final)
    assert result.rho == pytest.approx(reference.statistic, abs=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    # No ties: rho = 1 - 6 sum(d^2) / (n (n^2 - 1)), d the rank differences.
    d = stats.rankdata(early) - stats.rankdata(final)
    n = len(early)
    assert result.rho == pytest.approx(1 - 6 * np.sum(d**2) / (n * (n * n - 1)), abs=1e-12)
    # Early top 5: indices 6, 1, 3, 0, 4; final top 5: 6, 1, 3, 0, 7; 4 in common.
    assert search_report.top_k(early, 5) == {6, 1, 3, 0, 4}
    assert search_report.top_k(final, 5) == {6, 1, 3, 0, 7}
    assert (result.runs, result.k, result.overlap) == (8, 5, 4)


def test_ties_in_a_top_k_go_to_the_earlier_trial():
    assert search_report.top_k([1.0, 2.0, 2.0, 3.0], 2) == {0, 1}
    assert search_report.top_k([3.0, 2.0, 2.0, 1.0], 2) == {3, 1}


def test_perfect_and_reversed_rankings():
    early = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    same = search_report.rank_agreement(early, [10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    assert same.rho == pytest.approx(1.0) and same.overlap == 5
    reverse = search_report.rank_agreement(early, early[::-1], k=3)
    assert reverse.rho == pytest.approx(-1.0) and reverse.overlap == 0


def test_two_runs_have_no_correlation_and_k_is_clipped():
    result = search_report.rank_agreement([1.0, 2.0], [2.0, 1.0])
    assert math.isnan(result.rho) and math.isnan(result.p_value)
    assert (result.k, result.overlap) == (2, 2)


def _write_search(out_dir, rows: list[dict], full_budget_for="all"):
    settings = {"name": "t", "trials": len(rows), "early_fraction": 0.2, "top_k": 5,
                "full_budget_for": full_budget_for, "metric": "dev_loss", "pruner": "none",
                "startup_trials": 2, "seed": 0, "method": "lora", "model_name": "tiny_0",
                "finetune_examples": 64}  # fmt: skip
    with open(os.path.join(out_dir, "search_settings.json"), "w") as f:
        json.dump(settings, f)
    results = store.ResultsStore(os.path.join(out_dir, "results.sqlite"))
    for i, row in enumerate(rows):
        status = "finished" if row.get("final_dev_loss") is not None else "early"
        full = {"trials": [i], "params": {"LEARNING_RATE": 0.001 * (i + 1)}, "early_step": 2,
                "total_steps": 10, "run_dir": f"/x/{i}", **row}  # fmt: skip
        results.record(f"run{i:02d}", "trial", status, full)
    results.close()


def test_report_table_csv_and_rank_check_from_stored_trials(tmp_path):
    early = [5.1, 4.9, 5.6, 5.0, 5.3, 6.2, 4.7, 5.45]
    final = [4.8, 4.7, 5.0, 4.75, 5.2, 5.9, 4.6, 4.9]
    last = [4.9, 4.8, 5.1, 4.9, 5.2, 6.0, 4.7, 5.0]
    rows = [
        {"early_dev_loss": e, "final_dev_loss": f, "last_dev_loss": la, "test_loss": f + 0.1}
        for e, f, la in zip(early, final, last, strict=True)
    ]
    _write_search(str(tmp_path), rows)
    text = open(search_report.write_report(str(tmp_path))).read()
    rho = stats.spearmanr(early, final).statistic
    assert f"Spearman ρ(early, final) = {rho:.3f}" in text
    assert "4 of the early top 5 are in the final top 5" in text
    last_rho = stats.spearmanr(early, last).statistic
    assert f"Spearman ρ(early, last) = {last_rho:.3f}" in text
    assert "Trial #6 by final dev_loss (4.6000" in text  # the smallest final loss
    assert "--gin.LEARNING_RATE=0.007" in text
    with open(tmp_path / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["trials"]) for r in table] == list(range(8))
    assert [int(r["early_rank"]) for r in table] == list(stats.rankdata(early).astype(int))
    assert [int(r["final_rank"]) for r in table] == [4, 2, 6, 3, 7, 8, 1, 5]
    assert (tmp_path / "early_vs_final.png").stat().st_size > 1000


def test_top_k_search_report_says_the_check_sees_only_the_continued(tmp_path):
    rows = [{"early_dev_loss": 5.0 + i / 10} for i in range(6)]
    rows[0].update(final_dev_loss=4.9, last_dev_loss=4.95, test_loss=5.0)
    rows[1].update(final_dev_loss=4.8, last_dev_loss=4.85, test_loss=4.9)
    _write_search(str(tmp_path), rows, full_budget_for="top_k")
    text = open(search_report.write_report(str(tmp_path))).read()
    assert "Over the 2 runs with both metrics" in text
    assert "Only the early top 5 ran to the full budget" in text
    assert "2 at full budget, 4 stopped early, 0 failed" in text
    assert "Trial #1 by final dev_loss (4.8000" in text
