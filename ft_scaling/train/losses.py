"""Token-level losses of the prefix LM."""

import jax
import jax.numpy as jnp


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood of each target token. logits [b, l, v] float32 -> [b, l]."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit


def weighted_nll_sum(logits, targets, weights) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted NLL, sum of weights); weights are 0 on input and padding positions."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(token_nll(logits, targets) * weights), jnp.sum(weights)
