"""Recovery, robustness and reporting of the multi-start Huber fit (issue 6 acceptance a-c)."""

import numpy as np
import pytest

from ft_scaling.scaling import fit, laws, lbfgs
from ft_scaling.scaling.errors import ScalingInputError

# A grid like the paper's: 5 model sizes spanning 16x, 7 data sizes spanning 1000x.
MODEL_SIZES = np.geomspace(1e9, 16e9, 5)
DATA_SIZES = np.geomspace(1e4, 1e7, 7)
X, D_F = (a.ravel() for a in np.meshgrid(MODEL_SIZES, DATA_SIZES, indexing="ij"))


def _draw(rng, alpha=(0.1, 0.6), beta=(0.05, 0.4)) -> dict[str, float]:
    """Random law with the reducible term 1-4x E at the smallest corner."""
    params = {"alpha": rng.uniform(*alpha), "beta": rng.uniform(*beta), "E": rng.uniform(0.5, 2)}
    corner = MODEL_SIZES[0] ** -params["alpha"] * DATA_SIZES[0] ** -params["beta"]
    params["A"] = rng.uniform(1, 4) * params["E"] / corner
    return params


def _max_relative_error(fitted: dict, truth: dict) -> float:
    return max(abs(fitted[n] / truth[n] - 1) for n in truth)


def test_noiseless_recovery_is_exact_to_1e_6():
    rng = np.random.default_rng(0)
    draws = [_draw(rng) for _ in range(8)]
    losses = np.stack([laws.multiplicative(X, D_F, **p) for p in draws])
    fits = fit.fit_law_batch("multiplicative", X, D_F, losses)
    for fitted, truth in zip(fits, draws, strict=True):
        assert fitted.converged, fitted.status
        assert _max_relative_error(fitted.params, truth) < 1e-6
        # Starts far worse than the best after 50 iterations are abandoned (LbfgsOptions);
        # many others still reach the optimum on their own.
        assert fitted.n_converged_starts >= 50
        assert set(fitted.starts.status) <= {*lbfgs.STATUS_NAMES[:3], "abandoned"}


@pytest.mark.parametrize("residual", ["raw", "log"])
def test_noiseless_recovery_additive_law_and_chinchilla_residual(residual):
    truth = {"A": 400.0, "alpha": 0.3, "B": 40.0, "beta": 0.35, "E": 0.8}
    loss = laws.additive(X, D_F, **truth)
    fitted = fit.fit_law("additive", X, D_F, loss, options=fit.FitOptions(residual=residual))
    assert fitted.converged
    assert _max_relative_error(fitted.params, truth) < 1e-6


def test_one_percent_noise_twenty_draws():
    """1% log-normal noise, 20 draws; the bounds are on the distribution, not one seed.

    Fitted: the 5 x 7 grid above. Held out, as in the paper: a 6th model size (2x larger) and
    an 8th data size (3.2x larger). Exponents are drawn from [0.3, 0.6]; with smaller ones the
    reducible term stays comparable to E over the whole grid and E is not identified to 3% at
    1% noise by any estimator (squared loss included; see the report of issue 6).
    """
    rng = np.random.default_rng(2024)
    sizes, data = np.append(MODEL_SIZES, 32e9), np.append(DATA_SIZES, 10**7.5)
    x, d_f = (a.ravel() for a in np.meshgrid(sizes, data, indexing="ij"))
    held_out = (x == sizes[-1]) | (d_f == data[-1])
    draws = [_draw(rng, alpha=(0.3, 0.6), beta=(0.3, 0.6)) for _ in range(20)]
    noisy = np.stack([laws.multiplicative(x, d_f, **p) for p in draws])
    noisy *= np.exp(0.01 * rng.standard_normal(noisy.shape))
    fits = fit.fit_law_batch("multiplicative", x, d_f, noisy, weight=(~held_out).astype(float))
    errors = np.array([[abs(f.params[n] / p[n] - 1) for n in ("alpha", "beta", "E")]
                       for f, p in zip(fits, draws, strict=True)])  # fmt: skip
    law = laws.get_law("multiplicative")
    delta_h = [
        np.mean(np.abs(law(x, d_f, f.params) - y)[held_out])
        for f, y in zip(fits, noisy, strict=True)
    ]
    noise_level = 0.01 * noisy[:, held_out].mean(axis=1)
    assert all(f.converged for f in fits)
    assert np.all(np.median(errors, axis=0) <= [0.03, 0.03, 0.01]), np.median(errors, axis=0)
    assert np.all(errors.max(axis=0) <= [0.15, 0.15, 0.03]), errors.max(axis=0)
    assert np.all(np.array(delta_h) <= 2 * noise_level)


def test_noiseless_recovery_rectified_law_and_its_multiplicative_limit():
    """Lin et al.'s pre-learned data size D_l: recovered where the curve bends (D_f^beta ~ D_l),
    driven towards 0 on multiplicative data; with D_l and beta fixed the rest is refitted."""
    d_f = np.geomspace(1e2, 1e6, 7)
    x, d = (a.ravel() for a in np.meshgrid(MODEL_SIZES, d_f, indexing="ij"))
    truth = {"A": 50.0, "alpha": 0.1, "beta": 0.4, "D_l": 30.0, "E": 0.8}
    fitted = fit.fit_law("rectified", x, d, laws.rectified(x, d, **truth))
    assert fitted.converged and _max_relative_error(fitted.params, truth) < 1e-6
    fixed = {"beta": 0.4, "D_l": 30.0, "E": 0.8}
    partly = fit.fit_law("rectified", x, d, laws.rectified(x, d, **truth), fixed=fixed)
    assert partly.free == ("A", "alpha") and _max_relative_error(partly.params, truth) < 1e-9
    plain = fit.fit_law("rectified", x, d, laws.multiplicative(x, d, 50.0, 0.1, 0.4, 0.8))
    assert plain.params["D_l"] < 1e-4  # D_f^0.4 at the smallest D_f is 6.3: D_l negligible
    # log D_l only drifts towards -inf (its gradient vanishes with D_l), so the fit stops at a
    # small D_l that leaves beta off by ~1e-6.
    assert plain.params["beta"] == pytest.approx(0.4, rel=1e-5)
    with pytest.raises(ValueError, match="fix both D_l and beta or neither"):
        fit.fit_law("rectified", x, d, laws.rectified(x, d, **truth), fixed={"D_l": 30.0})


@pytest.mark.parametrize("residual", ["raw", "log"])
def test_rectified_objective_gradient_matches_finite_differences(residual):
    """The softplus correction's gradient (log D_l and beta) through the whitening, at points
    on both sides of the bend D_f^beta = D_l, with Huber residuals on either side of delta."""
    law = laws.get_law("rectified")
    d_f = np.geomspace(1.0, 1e6, 7)  # D_f = 1: log D_f = 0, still rectified
    x, d = (a.ravel() for a in np.meshgrid(MODEL_SIZES, d_f, indexing="ij"))
    truth = {"A": 50.0, "alpha": 0.1, "beta": 0.4, "D_l": 30.0, "E": 0.8}
    target = laws.rectified(x, d, **truth) * np.exp(0.01 * np.random.default_rng(0).normal(
        size=len(x)))  # fmt: skip
    problem = fit.make_problem(law.param_names, law.terms(np.log(x), np.log(d)), target)
    objective = fit.Objective(problem, fit.FitOptions(residual=residual), 1)
    theta = laws.to_theta(law.param_names, {**truth, "beta": 0.37, "D_l": 12.0})[None]
    z = theta @ objective.whiten.T
    rows = np.zeros(1, int)
    _, grad = objective(z, rows)
    step = 1e-6
    numeric = [
        (objective(z + step * e, rows)[0] - objective(z - step * e, rows)[0])[0] / (2 * step)
        for e in np.eye(z.shape[1])
    ]
    assert grad[0] == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    # The law the objective fits is laws.rectified, D_f = 1 included.
    check = fit.Objective(
        fit.make_problem(
            law.param_names, law.terms(np.log(x), np.log(d)), laws.rectified(x, d, **truth)
        ),
        fit.FitOptions(),
        1,
    )
    value, _ = check(laws.to_theta(law.param_names, truth)[None] @ check.whiten.T, rows)
    assert value[0] == pytest.approx(0.0, abs=1e-20)


def test_huber_resists_outliers_where_least_squares_does_not():
    truth = {"A": 3e4, "alpha": 0.45, "beta": 0.3, "E": 0.9}
    loss = laws.multiplicative(X, D_F, **truth)
    loss[[3, 20]] *= [1.3, 0.75]  # two corrupted runs
    huber = fit.fit_law("multiplicative", X, D_F, loss)
    squared = fit.fit_law("multiplicative", X, D_F, loss, options=fit.FitOptions(loss="squared"))
    for name in ("alpha", "beta", "E"):
        assert abs(huber.params[name] / truth[name] - 1) < 0.01, name
    assert max(abs(squared.params[n] / truth[n] - 1) for n in ("alpha", "beta", "E")) > 0.05


def test_fixed_parameters_are_kept_and_the_rest_fitted():
    truth = {"A": 3e4, "alpha": 0.45, "beta": 0.3, "E": 0.9}
    loss = laws.multiplicative(X, D_F, **truth)
    fitted = fit.fit_law("multiplicative", X, D_F, loss, fixed={"beta": 0.3, "E": 0.9})
    assert fitted.free == ("A", "alpha")
    assert fitted.params["beta"] == 0.3 and fitted.params["E"] == 0.9
    assert _max_relative_error(fitted.params, truth) < 1e-6


def test_grid_has_requested_size_and_every_start_is_kept():
    init = fit.grid(("A", "alpha", "beta", "E"), 500)
    assert init.shape == (500, 4)
    assert np.allclose(init.min(axis=0), [0, 0, 0, -3]) and np.allclose(init.max(0), [25, 1, 1, 1])
    loss = laws.multiplicative(X, D_F, A=3e4, alpha=0.45, beta=0.3, E=0.9)
    fitted = fit.fit_law("multiplicative", X, D_F, loss, options=fit.FitOptions(n_starts=81))
    assert fitted.starts.init.shape == (81, 4) and len(fitted.starts.status) == 81
    assert set(fitted.starts.status) <= set(lbfgs.STATUS_NAMES)


def test_best_fit_only_reachable_from_the_grid_edge_is_flagged():
    init = fit.grid(("A", "alpha"), 9)  # 3 x 3
    from_top = init[:, 0] == init[:, 0].max()  # only starts with log A = 25 find the best basin
    final = np.where(from_top[:, None], [[30.0, 0.9]], [[10.0, 0.4]])
    loss = np.where(from_top, 1.0, 2.0)
    converged = np.ones(9, bool)
    assert fit._edge_params(("A", "alpha"), init, final, loss, converged) == ("A",)
    everywhere = np.ones(9, bool)  # every start reaches it: nothing to flag
    final_all = np.tile([[30.0, 0.9]], (9, 1))
    assert fit._edge_params(("A", "alpha"), init, final_all, loss * everywhere, converged) == ()


def test_non_converged_fit_is_reported_as_such():
    loss = laws.multiplicative(X, D_F, A=3e4, alpha=0.45, beta=0.3, E=0.9)
    options = fit.FitOptions(n_starts=16, optimizer=lbfgs.LbfgsOptions(max_iter=2))
    fitted = fit.fit_law("multiplicative", X, D_F, loss, options=options)
    assert not fitted.converged
    assert fitted.status == "max_iter"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": np.full(35, np.nan)}, "NaN"),
        ({"loss": -np.ones(35)}, "positive"),
        ({"x": np.zeros(35)}, "positive"),
        ({"x": np.ones(35)}, "not identifiable"),
    ],
)
def test_bad_input_raises_a_clear_value_error(kwargs, message):
    args = {"x": X, "d_f": D_F, "loss": laws.multiplicative(X, D_F, 3e4, 0.45, 0.3, 0.9)}
    args.update(kwargs)
    with pytest.raises(ScalingInputError, match=message):
        fit.fit_law("multiplicative", **args)
    assert issubclass(ScalingInputError, ValueError)


def test_fewer_points_than_parameters_raises():
    with pytest.raises(ScalingInputError, match="3 points cannot determine 4 parameters"):
        fit.fit_law("multiplicative", X[:3], D_F[:3], np.ones(3))
