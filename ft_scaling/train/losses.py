"""Token-level losses of the prefix LM.

`token_nll` has a hand-written backward pass, softmax(logits) - onehot(target), computed in one
elementwise pass: XLA:CPU's autodiff of logsumexp + take_along_axis (a scatter into a zeroed
[tokens, vocab] buffer, plus an unfused logsumexp) cost twice the output-layer matmul itself on
the 110M benchmark model (benchmarks/README.md, "Train throughput").
"""

import jax
import jax.numpy as jnp


@jax.custom_vjp
def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood of each target token. logits [b, l, v] float32 -> [b, l]."""
    return _token_nll_forward(logits, targets)[0]


def _log_normalizer(logits):
    peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return (peak + jnp.log(jnp.sum(jnp.exp(logits - peak), axis=-1, keepdims=True)))[..., 0]


def _token_nll_forward(logits, targets):
    log_z = _log_normalizer(logits)  # [b, l]
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit, (logits, log_z, targets)


def _token_nll_backward(residuals, d_nll):
    logits, log_z, targets = residuals
    is_target = jnp.arange(logits.shape[-1]) == targets[..., None]  # fused, never stored
    d_logits = d_nll[..., None] * (jnp.exp(logits - log_z[..., None]) - is_target)
    return d_logits.astype(logits.dtype), None


token_nll.defvjp(_token_nll_forward, _token_nll_backward)


def weighted_nll_sum(logits, targets, weights) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted NLL, sum of weights); weights are 0 on input and padding positions."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(token_nll(logits, targets) * weights), jnp.sum(weights)
