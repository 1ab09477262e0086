"""Loss objects of the one train step, and the token-level losses of the prefix LM.

    loss.loss(params, batch, rng) -> (loss_sum, weight_sum, metrics)   training mode (dropout)
    loss.evaluate(params, batch) -> what the eval step returns          deterministic

`trainer.train_step` differentiates `loss_sum` and divides it (and the gradient) by the summed
weight, so a loss returns sums: microbatches then add up exactly, whatever the loss. `LMLoss`
is the token-mean NLL of the prefix LM; the classifiers (classify/head.py, scoring.py,
distill.py) are the other losses. A loss object is the compile-cache key of its steps, so it
compares by content (`ContentHashed`).

`token_nll` has a hand-written backward pass, softmax(logits) - onehot(target), computed in one
elementwise pass: XLA:CPU's autodiff of logsumexp + take_along_axis (a scatter into a zeroed
[tokens, vocab] buffer, plus an unfused logsumexp) cost twice the output-layer matmul itself on
the 110M benchmark model (benchmarks/README.md, "Train throughput").
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

INPUT_KEYS = ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")


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


class ContentHashed:
    """Equality and hash by type and repr: a compile-cache key equal for equal contents.

    Method wrappers carry `functools.partial` fields, which compare by identity, so two
    identical LoRA models (or losses holding them) would otherwise never share a compiled step.
    Dataclass subclasses pass `eq=False`, which keeps these methods instead of generated ones.
    """

    def __eq__(self, other):
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))


@dataclasses.dataclass(frozen=True, eq=False)
class LMLoss(ContentHashed):
    """Token-mean NLL of the prefix LM over target tokens (`decoder_loss_weights` > 0).

    Attributes:
      model: the (method-wrapped) decoder; params are its full merged tree.
    """

    model: nn.Module

    def _sums(self, params, batch, deterministic, rng):
        args = [batch.get(k) for k in INPUT_KEYS]
        rngs = None if deterministic else {"dropout": rng}
        logits = self.model.apply({"params": params}, *args, deterministic=deterministic, rngs=rngs)
        return weighted_nll_sum(
            logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        )

    def loss(self, params, batch, rng):
        """(NLL sum, target-token count, no extra metrics) in training mode."""
        loss_sum, weight_sum = self._sums(params, batch, False, rng)
        return loss_sum, weight_sum, {}

    def evaluate(self, params, batch) -> dict:
        """Sums of target-token NLL and target-token count (exact over a split when summed)."""
        loss_sum, weight_sum = self._sums(params, batch, True, None)
        return {"loss_sum": loss_sum, "target_tokens": weight_sum}
