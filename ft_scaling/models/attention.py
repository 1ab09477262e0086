"""Masked dot-product attention with a hand-written backward pass (multi-head, GQA, MQA).

    q [batch, q_len, heads, head_dim], k/v [batch, kv_len, kv_heads, head_dim]
    mask [batch, 1, q_len, kv_len] (True = may attend)
      -> grouped:  q [batch, kv_heads, group * q_len, head_dim]  (group = heads / kv_heads)
      -> scores = q k^T / sqrt(head_dim), masked, softmax in float32  -> probs @ v

Why not `jax.nn.dot_product_attention`: on XLA:CPU its generic lowering costs ~2.5x the
matmuls' own time forward and the autodiff backward runs its batched matmuls in transposed
layouts (benchmarks/README.md, "Train throughput"). Here every matmul is a plain batched
`[n, m, k] @ [n, k, n']` product, forward and backward, and the backward reuses the saved
probabilities (FlashAttention's formulas without the tiling: dS = P * (dP - rowsum(dO * O))).
Each query of a group shares its key/value head, so MQA/GQA never materialise repeated keys.
Rows whose mask is all False (padding) get uniform weights, as with jax's own function.
"""

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def dot_product_attention(
    q: Array, k: Array, v: Array, mask: Array, kv_layout: str = "length_first"
) -> Array:
    """softmax(q k^T / sqrt(d) masked) v, computed per kv head group; returns q's shape.

    kv_layout 'heads_first' takes k and v as [batch, kv_heads, kv_len, head_dim] (the KV
    cache's layout) instead of [batch, kv_len, kv_heads, head_dim].
    """
    if kv_layout not in ("length_first", "heads_first"):
        raise ValueError(f"kv_layout={kv_layout!r}; allowed: 'length_first', 'heads_first'")
    batch, q_len, heads, head_dim = q.shape
    if kv_layout == "length_first":
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, kvh, s, d]
    kv_heads = k.shape[1]
    group = heads // kv_heads
    # [b, t, kvh * g, d] -> [b, kvh, g * t, d]: the g query heads of a kv head as one matrix.
    qg = q.reshape(batch, q_len, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    qg = qg.reshape(batch, kv_heads, group * q_len, head_dim)
    out = _attend(qg, k, v, mask, group)  # [b, kvh, g * t, d]
    out = out.reshape(batch, kv_heads, group, q_len, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, q_len, heads, head_dim)


def _probabilities(q, k, mask, group):
    """Float32 attention weights [b, kvh, g * t, s]."""
    batch, kv_heads, rows, _ = q.shape
    scale = q.shape[-1] ** -0.5
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(batch, kv_heads, group, rows // group, -1)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    scores = scores - jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.exp(scores)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights.reshape(batch, kv_heads, rows, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q, k, v, mask, group):
    weights = _probabilities(q, k, mask, group)
    return jnp.matmul(weights.astype(v.dtype), v)


def _attend_forward(q, k, v, mask, group):
    weights = _probabilities(q, k, mask, group)
    out = jnp.matmul(weights.astype(v.dtype), v)
    return out, (q, k, v, mask, weights.astype(v.dtype), out)


def _attend_backward(group, residuals, d_out):
    del group
    q, k, v, mask, weights, out = residuals
    scale = q.shape[-1] ** -0.5
    f32 = jnp.float32
    d_v = jnp.matmul(jnp.swapaxes(weights, -1, -2), d_out.astype(v.dtype))
    d_weights = jnp.matmul(
        d_out.astype(v.dtype), jnp.swapaxes(v, -1, -2), preferred_element_type=f32
    )
    row_dot = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
    d_scores = (weights.astype(f32) * (d_weights - row_dot) * scale).astype(q.dtype)
    d_q = jnp.matmul(d_scores, k)
    d_k = jnp.matmul(jnp.swapaxes(d_scores, -1, -2), q)
    return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None


_attend.defvjp(_attend_forward, _attend_backward)
