"""Saturation (issue 9): analytic points of known laws, bootstrap intervals, the empirical rule,
and the fit CLI's saturation output and plots."""

import csv
import json
import os

import numpy as np
import pytest

from ft_scaling.scaling import analysis, fit_cli, laws
from ft_scaling.scaling import paper_reference as paper
from ft_scaling.scaling import results_table as tables

MULTIPLICATIVE = laws.get_law("multiplicative")
ADDITIVE = laws.get_law("additive")
PARAMS = {"A": 5e4, "alpha": 0.5, "beta": 0.2, "E": 0.7}
X = 2e9


def multiplicative_saturation(params, x, threshold):
    """Gain per doubling R (1 - 2^-beta) / (R + E) = t, R = A X^-alpha D^-beta, solved for D."""
    reducible = threshold * params["E"] / (1 - 2 ** -params["beta"] - threshold)
    return (params["A"] * x ** -params["alpha"] / reducible) ** (1 / params["beta"])


@pytest.mark.parametrize("threshold", [0.002, 0.01, 0.05])
def test_multiplicative_saturation_equals_its_analytic_value(threshold):
    found = analysis.saturation(MULTIPLICATIVE, PARAMS, X, threshold)
    assert found.status == "found"
    assert found.d_f == pytest.approx(multiplicative_saturation(PARAMS, X, threshold), rel=1e-10)
    gain = analysis.relative_gain_per_doubling(MULTIPLICATIVE, PARAMS, X, found.d_f)
    assert gain == pytest.approx(threshold, rel=1e-8)


def test_additive_saturation_equals_its_analytic_value():
    # gain = B D^-beta (1 - 2^-beta) / (E + A X^-alpha + B D^-beta) = t, solved for D.
    params = {"A": 400.0, "alpha": 0.3, "B": 60.0, "beta": 0.35, "E": 1.2}
    t = 0.01
    rest = params["E"] + params["A"] * X ** -params["alpha"]
    analytic = (params["B"] * (1 - 2 ** -params["beta"] - t) / (t * rest)) ** (1 / params["beta"])
    found = analysis.saturation(ADDITIVE, params, X, t)
    assert found.d_f == pytest.approx(analytic, rel=1e-10)


def test_statuses_at_the_edges_of_the_range():
    # beta so small that one doubling can never gain 1% (1 - 2^-0.01 < 0.01): saturated at once.
    flat = dict(PARAMS, beta=0.01)
    start = analysis.saturation(MULTIPLICATIVE, flat, X, 0.01, d_range=(1.0, 1e12))
    assert (start.d_f, start.status) == (1.0, "at range start")
    # No irreducible loss: every doubling gains 1 - 2^-0.2 = 12.9%, so never below 1%.
    never = analysis.saturation(MULTIPLICATIVE, dict(PARAMS, E=1e-30), X, 0.01)
    assert (never.d_f, never.status) == (None, "beyond range")


def test_bootstrap_interval_is_the_percentile_of_replicate_saturation_points():
    rng = np.random.default_rng(0)
    names = list(PARAMS)
    samples = np.array([[PARAMS["A"], PARAMS["alpha"], b, PARAMS["E"]]
                        for b in rng.uniform(0.15, 0.25, 40)])  # fmt: skip
    samples[3] = np.nan  # a failed refit is skipped
    found = analysis.saturation(MULTIPLICATIVE, PARAMS, X, 0.01, bootstrap=samples)
    expected = [multiplicative_saturation(dict(zip(names, row, strict=True)), X, 0.01)
                for row in samples if np.all(np.isfinite(row))]  # fmt: skip
    low, high = np.quantile(expected, [0.025, 0.975], method="inverted_cdf")
    assert found.replicates == 39
    assert found.interval == pytest.approx((low, high), rel=1e-9)
    assert low < found.d_f < high


def test_replicates_that_never_saturate_make_the_interval_unbounded():
    samples = np.array([list(PARAMS.values())] * 10)
    samples[-1, names_index("E")] = 1e-30  # this replicate's law never saturates
    low, high = analysis.saturation(MULTIPLICATIVE, PARAMS, X, 0.01, bootstrap=samples).interval
    assert low == pytest.approx(multiplicative_saturation(PARAMS, X, 0.01), rel=1e-10)
    assert high == np.inf


def names_index(name: str) -> int:
    return list(PARAMS).index(name)


def test_empirical_saturation_needs_every_later_doubling_to_gain_less():
    d_f = [25, 50, 100, 200, 400]
    # 25->50 gains 0.17% (a noisy dip), 50->100 gains 8%, then 0.18% and 0.09%.
    loss = [6.0, 5.99, 5.5, 5.49, 5.485]
    assert analysis.empirical_saturation(d_f, loss, 0.01) == 100.0
    assert analysis.empirical_saturation(d_f, [6.0, 5.5, 5.0, 4.5, 4.0], 0.01) is None
    assert analysis.empirical_saturation(d_f, [6.0, 5.999, 5.998, 5.997, 5.996], 0.01) == 25.0
    # Repeated runs of a point are averaged first.
    assert analysis.empirical_saturation([25, 25, 50], [6.2, 5.8, 5.999], 0.01) == 25.0
    found = analysis.saturation(MULTIPLICATIVE, PARAMS, X, 0.01, measured=(d_f, loss))
    assert found.empirical == 100.0
    assert found.gain_at_largest == pytest.approx(
        analysis.relative_gain_per_doubling(MULTIPLICATIVE, PARAMS, X, 400.0)
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = paper.synthetic_rows("en_de", "fmt", 0.002, 1, rng)
    path = tmp_path_factory.mktemp("results") / "results.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=tables.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    out = str(tmp_path_factory.mktemp("fit"))
    argv = [str(path), "--factor", "model_params", "--starts", "64", "--bootstrap", "20",
            "--saturation_threshold", "0.02", "--out", out]  # fmt: skip
    assert fit_cli.main(argv) == 0
    with open(os.path.join(out, "fit.json")) as handle:
        return out, json.load(handle)


def test_fit_json_saturation_is_the_fitted_laws_point_with_an_interval(fitted):
    out, document = fitted
    [setting] = document["settings"]
    saturation = setting["saturation"]
    assert saturation["threshold"] == 0.02
    params = setting["factors"]["model_params"]["params"]
    per_x = saturation["by_factor"]["model_params"]
    assert len(per_x) == 5
    for key, entry in per_x.items():
        assert float(key) == pytest.approx(entry["x"], rel=1e-5)  # the key is rounded (%g)
        expected = analysis.saturation_point(MULTIPLICATIVE, params, entry["x"], 0.02, (1.0, 1e12))
        assert entry["status"] == "found"
        assert entry["fitted"] == pytest.approx(expected, rel=1e-9)
        assert entry["bootstrap_ok"] >= 15
        low, high = entry["interval"]
        assert low <= entry["fitted"] <= (np.inf if high is None else high)
    assert os.path.exists(os.path.join(out, "en_de_fmt_model_params.png"))
