"""Laws against hand-computed values, and their exp-linear designs against the laws."""

import numpy as np
import pytest

from ft_scaling.scaling import laws

X = np.array([1e9, 4e9, 16e9])
D_F = np.array([1e4, 1e5, 1e6])


def test_laws_match_hand_computed_values():
    # 2e4 * (1e9)^-0.5 * (1e4)^-0.25 + 0.7 = 2e4 * 3.1623e-5 * 0.1 + 0.7
    assert laws.multiplicative(1e9, 1e4, 2e4, 0.5, 0.25, 0.7) == pytest.approx(0.763245553, 1e-9)
    # 0.5 + 1e3 * (1e9)^-0.3 + 10 * (1e4)^-0.5 = 0.5 + 1e3 * 1.9953e-3 + 0.1
    assert laws.additive(1e9, 1e4, 1e3, 0.3, 10.0, 0.5, 0.5) == pytest.approx(2.595262315, 1e-9)
    assert laws.single_factor(None, 1e4, 10.0, 0.5, 0.5) == pytest.approx(0.6)
    # 2e4 / ((1e9)^0.5 * (100 + (1e4)^0.5)) + 0.7 = 2e4 / (31622.78 * 200) + 0.7
    assert laws.rectified(1e9, 1e4, 2e4, 0.5, 0.5, 100.0, 0.7) == pytest.approx(0.703162278, 1e-9)


def test_rectified_law_is_lin_et_al_at_fixed_x_and_multiplicative_at_zero_d_l():
    d_f = np.geomspace(1e2, 1e6, 9)
    # Lin et al. 2024 at one model: B / (D_l + D^beta) + E with B = A X^-alpha.
    b = 2e4 * 1e9**-0.3
    expected = b / (50.0 + d_f**0.4) + 0.9
    assert laws.rectified(1e9, d_f, 2e4, 0.3, 0.4, 50.0, 0.9) == pytest.approx(expected, 1e-12)
    assert laws.rectified(X, D_F, 2e4, 0.3, 0.4, 0.0, 0.9) == pytest.approx(
        laws.multiplicative(X, D_F, 2e4, 0.3, 0.4, 0.9), 1e-12
    )


@pytest.mark.parametrize(
    "name, params",
    [
        ("multiplicative", {"A": 2e4, "alpha": 0.5, "beta": 0.25, "E": 0.7}),
        ("additive", {"A": 1e3, "alpha": 0.3, "B": 10.0, "beta": 0.5, "E": 0.5}),
        ("single", {"A": 10.0, "beta": 0.5, "E": 0.5}),
        ("rectified", {"A": 2e4, "alpha": 0.5, "beta": 0.25, "D_l": 3.0, "E": 0.7}),
    ],
)
def test_design_reproduces_the_law(name, params):
    law = laws.get_law(name)
    design = law.terms(np.log(X), np.log(D_F))  # [terms, points, params]
    theta = laws.to_theta(law.param_names, params)
    u = design @ theta
    if name == "rectified":  # the D_l correction fit.py adds: -softplus(log D_l - beta log D_f)
        u[0] -= np.logaddexp(0.0, np.log(params["D_l"]) - params["beta"] * np.log(D_F))
    assert np.exp(u).sum(axis=0) == pytest.approx(law(X, D_F, params), rel=1e-12)
    assert laws.from_theta(law.param_names, theta) == pytest.approx(
        [params[n] for n in law.param_names], rel=1e-12
    )


def test_joint_design_shares_the_data_part_and_repeats_factor_parameters():
    law = laws.get_law("multiplicative")
    names, design = laws.joint_design(
        law, [np.log(X), np.log([84e9, 283e9])], [np.log(D_F), np.log([1e4, 1e5])],
        ["model_params", "pretrain_tokens"],
    )  # fmt: skip
    assert names == ("A[model_params]", "alpha[model_params]", "A[pretrain_tokens]",
                     "alpha[pretrain_tokens]", "beta", "E")  # fmt: skip
    params = {"A[model_params]": 2e4, "alpha[model_params]": 0.5, "A[pretrain_tokens]": 300.0,
              "alpha[pretrain_tokens]": 0.2, "beta": 0.25, "E": 0.7}  # fmt: skip
    predicted = np.exp(design @ laws.to_theta(names, params)).sum(axis=0)
    expected_model = laws.multiplicative(X, D_F, 2e4, 0.5, 0.25, 0.7)
    expected_tokens = laws.multiplicative(np.array([84e9, 283e9]), np.array([1e4, 1e5]),
                                          300.0, 0.2, 0.25, 0.7)  # fmt: skip
    assert predicted == pytest.approx(np.concatenate([expected_model, expected_tokens]), 1e-12)


def test_unknown_law_and_non_positive_coefficient_are_errors():
    with pytest.raises(ValueError, match="known laws: multiplicative, additive, rectified, single"):
        laws.get_law("chinchilla")
    with pytest.raises(ValueError, match="must be positive"):
        laws.to_theta(["E"], {"E": 0.0})
