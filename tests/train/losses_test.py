"""The token NLL and its hand-written gradient equal jax's log_softmax reference."""

import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.train import losses


def _reference(logits, targets):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def _case(scale=3.0):
    logits = scale * jax.random.normal(jax.random.PRNGKey(0), (2, 5, 11))
    targets = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 11)
    weights = jnp.asarray(np.random.default_rng(0).integers(0, 2, (2, 5)), jnp.float32)
    return logits, targets, weights


def test_values_match_log_softmax():
    logits, targets, _ = _case()
    np.testing.assert_allclose(
        losses.token_nll(logits, targets), _reference(logits, targets), rtol=1e-6, atol=1e-6
    )


def test_gradient_matches_autodiff_of_reference():
    logits, targets, weights = _case()
    ours = jax.grad(lambda x: losses.weighted_nll_sum(x, targets, weights)[0])(logits)
    want = jax.grad(lambda x: jnp.sum(_reference(x, targets) * weights))(logits)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(ours[weights == 0]).max()) == 0.0  # padding contributes nothing


def test_large_logits_stay_finite():
    logits, targets, weights = _case(scale=1e4)
    value, grad = jax.value_and_grad(lambda x: losses.weighted_nll_sum(x, targets, weights)[0])(
        logits
    )
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(value, jnp.sum(_reference(logits, targets) * weights), rtol=1e-6)
