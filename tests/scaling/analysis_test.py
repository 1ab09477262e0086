"""Critical data size, the paper's closed form (Table 5), saturation (issue 6 acceptance d)."""

import numpy as np
import pytest

from ft_scaling.scaling import analysis, laws
from ft_scaling.scaling import paper_reference as paper

LAW = laws.get_law("multiplicative")


def test_critical_data_size_equals_the_analytic_crossing():
    # Equal E: A1 X^-a1 D^-b1 = A2 X^-a2 D^-b2  <=>  D = (A1/A2 X^(a2-a1))^(1/(b1-b2)).
    first = {"A": 5e4, "alpha": 0.5, "beta": 0.2, "E": 0.7}
    second = {"A": 300.0, "alpha": 0.35, "beta": 0.05, "E": 0.7}  # crossings near 1e5
    for x in (1e9, 4e9, 16e9):
        analytic = (first["A"] / second["A"] * x ** (second["alpha"] - first["alpha"])) ** (
            1 / (first["beta"] - second["beta"])
        )
        crossing = analysis.critical_data_size(LAW, first, second, x, d_range=(1e1, 1e12))
        assert crossing.status == "found" and 1e3 < analytic < 1e8
        assert crossing.roots == pytest.approx((analytic,), rel=1e-10)
        h, gamma = analysis.closed_form_critical(first, second)
        assert h * x**gamma == pytest.approx(analytic, rel=1e-10)


def test_critical_data_size_with_different_e_matches_a_direct_solution():
    # Method 2 is flat in D_f (beta 0): L1 = L2  <=>  A1 X^-a1 D^-b1 = (A2 X^-a2 + E2) - E1.
    first = {"A": 5e5, "alpha": 0.5, "beta": 0.2, "E": 0.6}
    second = {"A": 40.0, "alpha": 0.2, "beta": 0.0, "E": 0.9}  # crossing near 4e5
    x = 2e9
    gap = second["A"] * x ** -second["alpha"] + second["E"] - first["E"]
    analytic = (first["A"] * x ** -first["alpha"] / gap) ** (1 / first["beta"])
    crossing = analysis.critical_data_size(LAW, first, second, x, d_range=(1e1, 1e12))
    assert crossing.roots == pytest.approx((analytic,), rel=1e-10)


def test_parallel_curves_report_none_in_range():
    first = {"A": 5e4, "alpha": 0.5, "beta": 0.2, "E": 0.7}
    second = dict(first, A=6e4)
    crossing = analysis.critical_data_size(LAW, first, second, 1e9)
    assert crossing.roots == () and crossing.status == "none in range"


def _table5_cases():
    for table, factor in ((paper.TABLE5_MODEL, "model_params"),
                          (paper.TABLE5_PRETRAIN, "pretrain_tokens")):  # fmt: skip
        for task, pairs in table.items():
            for (m1, m2), (_h, gamma) in pairs.items():
                yield pytest.param(factor, task, m1, m2, gamma, id=f"{factor}-{task}-{m1}-{m2}")


@pytest.mark.parametrize("factor, task, method_1, method_2, paper_gamma", _table5_cases())
def test_closed_form_reproduces_table5_gamma_from_table4(
    factor, task, method_1, method_2, paper_gamma
):
    first = paper.factor_law(task, method_1, factor)
    second = paper.factor_law(task, method_2, factor)
    _, gamma = analysis.closed_form_critical(first, second)
    if task == "mlsum" and (method_1, method_2) == ("prompt", "lora"):
        # PAPER.md §6: beta_P - beta_L = -0.005, so Table 4's two-digit rounding decides gamma;
        # it does not reproduce (model size even flips sign). Check the cause, not the value.
        assert abs(first["beta"] - second["beta"]) < 0.01
        return
    assert abs(gamma - paper_gamma) <= 0.25 * abs(paper_gamma) + 0.05
    if abs(paper_gamma) > 0.05:
        assert np.sign(gamma) == np.sign(paper_gamma)


def test_en_de_fmt_vs_prompt_model_size_gamma_is_minus_1_2():
    first = paper.factor_law("en_de", "fmt", "model_params")
    second = paper.factor_law("en_de", "prompt", "model_params")
    assert analysis.closed_form_critical(first, second)[1] == pytest.approx(-1.21, abs=0.005)


def test_saturation_point_matches_closed_form():
    params = {"A": 5e4, "alpha": 0.5, "beta": 0.2, "E": 0.7}
    x, threshold = 2e9, 0.01
    # Gain per doubling R (1 - 2^-beta) = threshold (R + E)  with  R = A X^-alpha D^-beta.
    reducible = threshold * params["E"] / (1 - 2 ** -params["beta"] - threshold)
    analytic = (params["A"] * x ** -params["alpha"] / reducible) ** (1 / params["beta"])
    found = analysis.saturation_point(LAW, params, x, threshold)
    assert found == pytest.approx(analytic, rel=1e-10)
    gain = analysis.relative_gain_per_doubling(LAW, params, x, found)
    assert gain == pytest.approx(threshold, rel=1e-8)
    assert analysis.saturation_point(LAW, params, x, 1e-9, d_range=(1e2, 1e6)) is None


def test_empirical_saturation_brackets_the_fitted_one():
    params = {"A": 5e4, "alpha": 0.5, "beta": 0.2, "E": 0.7}
    d_f = np.geomspace(1e2, 1e10, 33)  # 4 points per decade
    loss = LAW(2e9, d_f, params)
    fitted = analysis.saturation_point(LAW, params, 2e9, 0.01)
    empirical = analysis.empirical_saturation(d_f, loss, 0.01)
    step = d_f[1] / d_f[0]
    assert fitted / step <= empirical <= fitted * step
    assert analysis.empirical_saturation(d_f, loss, 1e-9) is None


def test_exponent_comparison_is_paired_over_successful_replicates():
    model = np.array([0.5, 0.4, np.nan, 0.3])
    tokens = np.array([0.2, 0.5, 0.1, 0.1])
    result = analysis.exponent_comparison({"model_params": model, "pretrain_tokens": tokens})
    assert result[("model_params", "pretrain_tokens")] == pytest.approx(2 / 3)
    assert result[("pretrain_tokens", "model_params")] == pytest.approx(1 / 3)


def test_closed_form_with_nearly_equal_betas_is_out_of_range_not_an_error():
    # The demo's fits once gave beta_1 - beta_2 ~ 1e-4: (A_1/A_2)^(1/gap) overflowed and
    # raised OverflowError in the report.
    first = {"A": 5e4, "alpha": 0.5, "beta": 0.2001, "E": 0.7}
    second = {"A": 300.0, "alpha": 0.35, "beta": 0.2, "E": 0.7}
    h, gamma = analysis.closed_form_critical(first, second)
    assert h == float("inf") and gamma == pytest.approx(-1500.0)
    h, _ = analysis.closed_form_critical(second, first)
    assert h == float("inf")  # (A_2/A_1)^(1/-gap) = (A_1/A_2)^(1/gap)
    h, _ = analysis.closed_form_critical({**first, "A": 1e-4}, second)
    assert h == 0.0
    assert all(np.isnan(analysis.closed_form_critical(second, dict(second))))
