"""Held-out rules, point averaging, bootstrap by run, and the three procedures on exact data."""

import numpy as np
import pytest

from ft_scaling.scaling import bootstrap, laws, procedure
from ft_scaling.scaling import paper_reference as paper
from ft_scaling.scaling.errors import ScalingInputError

MODEL = {"A": 3e4, "alpha": 0.45, "beta": 0.3, "E": 0.9}
TOKENS = {"A": 600.0, "alpha": 0.2, "beta": 0.3, "E": 0.9}
D_GRID = np.geomspace(1e4, 1e7, 7)
NO_BOOTSTRAP = procedure.BootstrapOptions(replicates=0)


def exact_sweep(factor, values, params, runs=1, first_run=0) -> procedure.Sweep:
    x, d_f = (a.ravel() for a in np.meshgrid(values, D_GRID, indexing="ij"))
    x, d_f = np.repeat(x, runs), np.repeat(d_f, runs)
    loss = laws.multiplicative(x, d_f, **params)
    return procedure.Sweep(factor, x, d_f, loss, first_run + np.arange(len(x)))


@pytest.mark.parametrize(
    "factor, values, held",
    [
        ("pretrain_tokens", paper.PRETRAIN_TOKENS["en_de"], 209e9),  # bold in T1b
        ("pretrain_tokens", paper.PRETRAIN_TOKENS["en_zh"], 167e9),
        ("model_params", paper.MODEL_PARAMS, paper.MODEL_PARAMS[-1]),
        ("trainable_params", paper.TRAINABLE_PARAMS["lora"], paper.TRAINABLE_PARAMS["lora"][-1]),
    ],
)
def test_paper_rule_holds_out_the_bold_points(factor, values, held):
    x, d_f = (a.ravel() for a in np.meshgrid(values, D_GRID, indexing="ij"))
    mask = procedure.held_out_points(factor, x, d_f, "paper")
    assert np.array_equal(mask, (x == held) | (d_f == D_GRID[-1]))
    assert np.array_equal(procedure.held_out_points(factor, x, d_f, "largest_d"), d_f == D_GRID[-1])
    assert np.array_equal(procedure.held_out_points(factor, x, d_f, "largest_x"), x == x.max())
    assert not procedure.held_out_points(factor, x, d_f, "none").any()


def test_points_average_runs():
    sweep = procedure.Sweep("model_params", np.array([1e9, 1e9, 1e9, 2e9]),
                            np.array([1e4, 1e4, 1e4, 1e4]), np.array([1.0, 2.0, 3.0, 5.0]),
                            np.arange(4))  # fmt: skip
    points, index = procedure.average_points(sweep, "none")
    assert points.loss.tolist() == [2.0, 5.0] and points.runs.tolist() == [3, 1]
    assert index.tolist() == [0, 0, 0, 1]


def test_replicate_points_resample_runs_not_points():
    run_id, loss = np.array([10, 11, 12, 13]), np.array([1.0, 2.0, 3.0, 5.0])
    index, runs = np.array([0, 0, 0, 1]), np.array([3, 1])
    draws = {10: np.array([3, 0]), 11: np.array([0, 1]), 12: np.array([0, 1]), 13: np.array([1, 2])}
    values, weights = bootstrap.replicate_points(
        run_id, loss, index, runs, np.zeros(2, bool), draws
    )
    # Replicate 0 drew run 10 three times: point 0 = 1.0 with weight 3/3; point 1 once.
    assert values.tolist() == [[1.0, 5.0], [2.5, 5.0]]
    assert weights.tolist() == [[1.0, 1.0], [2 / 3, 2.0]]
    counts = bootstrap.resample_runs(run_id[:3], run_id, 50, seed=0)
    assert np.all(sum(counts[r] for r in (10, 11, 12)) == 3) and np.all(counts[13] == 0)


def test_two_stage_recovers_exact_laws_and_noiseless_bootstrap_collapses():
    sweeps = {
        "model_params": exact_sweep("model_params", np.geomspace(1e9, 16e9, 5), MODEL),
        "pretrain_tokens": exact_sweep(
            "pretrain_tokens", paper.PRETRAIN_TOKENS["en_de"], TOKENS, first_run=1000
        ),  # fmt: skip
    }
    setting = procedure.fit_setting(sweeps, bootstrap=procedure.BootstrapOptions(replicates=20))
    assert setting.stage1.params["beta"] == pytest.approx(0.3, rel=1e-6)
    for factor, truth in (("model_params", MODEL), ("pretrain_tokens", TOKENS)):
        fitted = setting.factors[factor]
        assert fitted.params == pytest.approx(truth, rel=1e-6)
        assert fitted.delta_e < 1e-9 and fitted.delta_h < 1e-9
        assert fitted.bootstrap_ok == 20
        for name, (low, high) in fitted.intervals.items():
            assert low == pytest.approx(truth[name], rel=1e-5)
            assert high == pytest.approx(truth[name], rel=1e-5)


def test_free_and_single_procedures_on_exact_data():
    sweep = exact_sweep("model_params", np.geomspace(1e9, 16e9, 5), MODEL)
    free = procedure.fit_setting({"model_params": sweep}, procedure="free", bootstrap=NO_BOOTSTRAP)
    assert free.factors["model_params"].params == pytest.approx(MODEL, rel=1e-6)
    single = procedure.fit_setting({"model_params": sweep}, law="single", procedure="single",
                                   bootstrap=NO_BOOTSTRAP)  # fmt: skip
    assert len(single.factors) == 5
    for curve in single.factors.values():
        expected_a = MODEL["A"] * curve.value ** -MODEL["alpha"]
        assert curve.params == pytest.approx({"A": expected_a, "beta": 0.3, "E": 0.9}, rel=1e-6)


def test_two_stage_without_model_or_token_sweep_is_an_error():
    sweep = exact_sweep("trainable_params", paper.TRAINABLE_PARAMS["lora"], MODEL)
    with pytest.raises(ScalingInputError, match="needs a sweep of model_params or pretrain"):
        procedure.fit_setting({"trainable_params": sweep}, bootstrap=NO_BOOTSTRAP)
    with pytest.raises(ScalingInputError, match="single value"):
        one = exact_sweep("model_params", np.array([1e9]), MODEL)
        procedure.fit_setting({"model_params": one}, bootstrap=NO_BOOTSTRAP)
