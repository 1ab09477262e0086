"""The hand-written attention equals jax.nn.dot_product_attention, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.models import attention


def _inputs(heads, kv_heads, q_len=6, kv_len=9, batch=2, head_dim=8, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(heads * 10 + kv_heads), 4)
    q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, kv_len, kv_heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, kv_len, kv_heads, head_dim), dtype)
    # Causal over the last q_len slots, plus padding: the last row's first 3 slots are empty.
    causal = np.tril(np.ones((q_len, kv_len), bool), k=kv_len - q_len)
    mask = np.broadcast_to(causal, (batch, 1, q_len, kv_len)).copy()
    mask[-1, :, :, :3] = False
    return q, k, v, jnp.asarray(mask)


def _reference(q, k, v, mask):
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_values_and_gradients_match_jax(heads, kv_heads):
    q, k, v, mask = _inputs(heads, kv_heads)
    ours = attention.dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(ours, _reference(q, k, v, mask), rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(jax.random.PRNGKey(7), ours.shape)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * cotangent)

    got = jax.grad(loss(attention.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(_reference), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_fully_masked_row_is_uniform_and_finite():
    q, k, v, mask = _inputs(2, 1, q_len=2, kv_len=4, batch=1)
    mask = mask.at[0, 0, 0].set(False)  # query 0 may see nothing
    out = attention.dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(out[0, 0, 0], v[0, :, 0].mean(axis=0), rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda q: jnp.sum(attention.dot_product_attention(q, k, v, mask)))(q)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_bfloat16_close_to_float32():
    q, k, v, mask = _inputs(4, 2)
    want = attention.dot_product_attention(q, k, v, mask)
    bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    got = attention.dot_product_attention(*bf16, mask)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.05, rtol=0.05)
    grad = jax.grad(lambda q: jnp.sum(attention.dot_product_attention(q, *bf16[1:], mask)))
    assert grad(bf16[0]).dtype == jnp.bfloat16


def test_heads_first_kv_layout_equals_length_first():
    """The KV cache's [b, kv_heads, s, d] layout gives the same output as [b, s, kv_heads, d]."""
    q, k, v, mask = _inputs(4, 2)
    want = attention.dot_product_attention(q, k, v, mask)
    got = attention.dot_product_attention(
        q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, kv_layout="heads_first"
    )
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="kv_layout='bshd'; allowed"):
        attention.dot_product_attention(q, k, v, mask, kv_layout="bshd")
