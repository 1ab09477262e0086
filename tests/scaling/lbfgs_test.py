"""The batched L-BFGS against scipy on Rosenbrock, and its per-row statuses."""

import numpy as np
import pytest
from scipy import optimize

from ft_scaling.scaling import lbfgs


def rosenbrock(theta, rows):
    del rows
    x, y = theta[:, 0], theta[:, 1]
    value = (1 - x) ** 2 + 100 * (y - x * x) ** 2
    grad = np.stack([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)], axis=1)
    return value, grad


def test_every_row_reaches_the_rosenbrock_minimum_like_scipy():
    starts = np.random.default_rng(0).uniform(-2, 2, size=(64, 2))
    result = lbfgs.minimize(rosenbrock, starts)
    assert np.all(result.converged)
    assert result.theta == pytest.approx(np.ones((64, 2)), abs=1e-6)
    value = lambda t: rosenbrock(t[None], None)[0][0]
    grad = lambda t: rosenbrock(t[None], None)[1][0]
    reference = optimize.minimize(value, starts[0], jac=grad, method="L-BFGS-B", tol=1e-14)
    assert result.theta[0] == pytest.approx(reference.x, abs=1e-5)


def test_rows_are_independent_of_their_batch():
    starts = np.random.default_rng(1).uniform(-2, 2, size=(8, 2))
    batch = lbfgs.minimize(rosenbrock, starts)
    alone = lbfgs.minimize(rosenbrock, starts[3:4])
    assert batch.theta[3] == pytest.approx(alone.theta[0], abs=1e-12)
    assert batch.iterations[3] == alone.iterations[0]


def test_iteration_cap_and_non_finite_start_are_reported():
    def fun(theta, rows):
        value, grad = rosenbrock(theta, rows)
        return np.where(theta[:, 0] > 10, np.nan, value), grad

    result = lbfgs.minimize(fun, np.array([[-1.5, 2.0], [11.0, 0.0]]),
                            lbfgs.LbfgsOptions(max_iter=3))  # fmt: skip
    assert [lbfgs.STATUS_NAMES[s] for s in result.status] == ["max_iter", "nonfinite"]
    assert not np.any(result.converged)


def test_start_at_the_optimum_is_converged_immediately():
    result = lbfgs.minimize(rosenbrock, np.ones((1, 2)))
    assert result.converged[0] and result.iterations[0] == 0
