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


@pytest.mark.parametrize(
    "name, params",
    [
        ("multiplicative", {"A": 2e4, "alpha": 0.5, "beta": 0.25, "E": 0.7}),
        ("additive", {"A": 1e3, "alpha": 0.3, "B": 10.0, "beta": 0.5, "E": 0.5}),
        ("single", {"A": 10.0, "beta": 0.5, "E": 0.5}),
    ],
)
def test_design_reproduces_the_law(name, params):
    law = laws.get_law(name)
    design = law.terms(np.log(X), np.log(D_F))  # [terms, points, params]
    theta = laws.to_theta(law.param_names, params)
    assert np.exp(design @ theta).sum(axis=0) == pytest.approx(law(X, D_F, params), rel=1e-12)
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
    with pytest.raises(ValueError, match="known laws: multiplicative, additive, single"):
        laws.get_law("chinchilla")
    with pytest.raises(ValueError, match="must be positive"):
        laws.to_theta(["E"], {"E": 0.0})
