"""Decoder-only Transformer LM in Flax linen, with logical axis names on every array.

    tokens [batch, length] --embed--> x [batch, length, embed]
      (optional prefix embeddings, e.g. a soft prompt, are prepended here)
      repeat num_layers:  x += Attention(RMSNorm(x));  x += SwiGLU(RMSNorm(x))
    RMSNorm --> logits [batch, length, vocab] (prefix positions sliced off)

Pre-norm RMSNorm, rotary position embeddings, multi-head or multi-query attention, SwiGLU
feed-forward, optionally tied embeddings. For finetuning it is used as a prefix LM: inputs and
targets form one sequence, attention is causal, and the loss (train/losses.py) covers targets only.

Every matmul goes through `Projection`, which a finetuning method may replace (LoRA subclasses it)
through the `projection` field, so methods never edit this file. With `decode=True` the attention
layers keep a key/value cache in the 'cache' collection: a call with T tokens writes T cache slots
(prefill), later calls usually write one.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ft_scaling.models import axes
from ft_scaling.models.attention import dot_product_attention
from ft_scaling.models.configs import ModelConfig

Array = jax.Array


def _dtype(config: ModelConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


class Projection(nn.Module):
    """A linear map contracting the trailing `in_axes` dims of x into `out_shape`.

    The kernel keeps its natural shape (e.g. [embed, heads, kv]) so it carries one logical name
    per dimension, but the product runs as a single 2-D matmul: on CPU the backward pass of a 3-D
    `x @ W` is several times slower than of the flattened one.
    """

    in_shape: Sequence[int]
    out_shape: Sequence[int]
    kernel_axes: Sequence[str]
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0)
        shape = (*self.in_shape, *self.out_shape)
        flat = (_flat(self.in_shape), _flat(self.out_shape))
        flat_init = lambda key, _: init(key, flat).reshape(shape)
        self.kernel = self.param(
            "kernel", nn.with_logical_partitioning(flat_init, tuple(self.kernel_axes)), shape
        )

    def matmul(self, x: Array, kernel: Array) -> Array:
        n_in = len(self.in_shape)
        lead = x.shape[: x.ndim - n_in]
        x2 = x.reshape(-1, _flat(self.in_shape)).astype(self.dtype)
        w2 = kernel.reshape(_flat(self.in_shape), _flat(self.out_shape)).astype(self.dtype)
        return (x2 @ w2).reshape(*lead, *self.out_shape)

    def __call__(self, x: Array) -> Array:
        return self.matmul(x, self.kernel)


def _flat(shape: Sequence[int]) -> int:
    size = 1
    for dim in shape:
        size *= dim
    return size


class RMSNorm(nn.Module):
    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)), x.shape[-1:]
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (normed * scale).astype(self.dtype)


def rotary(x: Array, positions: Array, max_wavelength: float) -> Array:
    """Rotary position embedding of x [batch, length, heads, head_dim] at positions [b, l]."""
    half = x.shape[-1] // 2
    freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [half]
    angle = positions[..., None, None].astype(jnp.float32) * freq  # [b, l, 1, half]
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


class Attention(nn.Module):
    config: ModelConfig
    projection: Callable[..., nn.Module] = Projection

    @nn.compact
    def __call__(self, x, positions, segment_ids, decode: bool = False):
        cfg, dtype = self.config, _dtype(self.config)
        d, nq, nkv, hd = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        proj = functools.partial(self.projection, dtype=dtype)
        q = proj((d,), (nq, hd), (axes.EMBED, axes.HEADS, axes.KV), name="query")(x)
        k = proj((d,), (nkv, hd), (axes.EMBED, axes.KV_HEADS, axes.KV), name="key")(x)
        v = proj((d,), (nkv, hd), (axes.EMBED, axes.KV_HEADS, axes.KV), name="value")(x)
        q = rotary(q, positions, cfg.rope_max_wavelength)
        k = rotary(k, positions, cfg.rope_max_wavelength)
        q = nn.with_logical_constraint(q, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
        if decode:
            k, v, mask = self._update_cache(k, v, segment_ids)
            layout = "heads_first"  # the cache is stored [b, kv_heads, slots, d]
        else:
            same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
            length = x.shape[1]
            causal = jnp.tril(jnp.ones((length, length), dtype=bool))
            mask = (same_segment & causal)[:, None]  # [b, 1, q, k]
            layout = "length_first"
        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, kv_layout=layout)
        out = nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
        return proj((nq, hd), (d,), (axes.HEADS, axes.KV, axes.EMBED), name="out")(out)

    def _update_cache(self, k, v, segment_ids):
        """Writes this call's keys/values at the cache index; returns the mask over all slots.

        The cache is created at init with the length of the init call's input (the maximum
        sequence length). Slot j is visible to query t of this call when j <= index + t and slot
        j holds a real token (its segment id is not 0). Keys and values are stored head-major,
        [batch, kv_heads, slots, head_dim], the layout attention multiplies in: a decode step
        then writes one slot per head instead of transposing the whole cache (on CPU those
        transposes were ~12% of a 110M model's decode step).
        """
        batch, length = k.shape[:2]
        cache_axes = (axes.BATCH, axes.KV_HEADS, axes.CACHE_LENGTH, axes.KV)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, kvh, length, d]
        initialized = self.has_variable("cache", "cached_key")
        ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        cseg = self.variable("cache", "cached_segment", jnp.zeros, (batch, length), jnp.int32)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:  # init only builds the cache of the right shapes
            mask = jnp.ones((batch, 1, length, length), dtype=bool)
            return k, v, mask
        start = index.value
        ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, 0, start, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, 0, start, 0))
        seg = segment_ids.astype(jnp.int32)
        cseg.value = jax.lax.dynamic_update_slice(cseg.value, seg, (0, start))
        index.value = start + length
        slots = jnp.arange(ck.value.shape[2])
        visible = slots[None, :] <= (start + jnp.arange(length))[:, None]  # [q, slots]
        mask = visible[None, None] & (cseg.value != 0)[:, None, None, :]
        keys = nn.with_logical_constraint(ck.value, cache_axes)
        values = nn.with_logical_constraint(cv.value, cache_axes)
        return keys, values, mask


class SwiGLU(nn.Module):
    config: ModelConfig
    projection: Callable[..., nn.Module] = Projection

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        proj = functools.partial(self.projection, dtype=_dtype(cfg))
        d, f = (cfg.embed_dim,), (cfg.mlp_dim,)
        gate = proj(d, f, (axes.EMBED, axes.MLP), name="wi_0")(x)
        up = proj(d, f, (axes.EMBED, axes.MLP), name="wi_1")(x)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, (axes.BATCH, axes.LENGTH, axes.MLP))
        return proj(f, d, (axes.MLP, axes.EMBED), name="wo")(hidden)


class Block(nn.Module):
    config: ModelConfig
    projection: Callable[..., nn.Module] = Projection

    @nn.compact
    def __call__(self, x, positions, segment_ids, deterministic: bool, decode: bool):
        cfg, dtype = self.config, _dtype(self.config)
        drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
        attn = Attention(cfg, self.projection, name="attention")
        h = attn(RMSNorm(dtype=dtype, name="attention_norm")(x), positions, segment_ids, decode)
        x = x + drop(h)
        h = SwiGLU(cfg, self.projection, name="mlp")(RMSNorm(dtype=dtype, name="mlp_norm")(x))
        x = x + drop(h)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))


class Decoder(nn.Module):
    """The language model.

    Attributes:
      config: shapes and numerics.
      projection: module class used for every matmul inside the blocks (methods swap it).
    """

    config: ModelConfig
    projection: Callable[..., nn.Module] = Projection

    def setup(self):
        cfg = self.config
        # std 1/sqrt(d): scaled by sqrt(d) on input the embeddings have unit RMS, and tied
        # output logits start at unit scale instead of sqrt(d).
        init = nn.initializers.normal(stddev=cfg.embed_dim**-0.5)
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(init, (axes.VOCAB, axes.EMBED)),
            (cfg.vocab_size, cfg.embed_dim),
        )
        block = Block
        if cfg.remat:
            policy = _REMAT_POLICIES[cfg.remat_policy]
            block = nn.remat(Block, static_argnums=(4, 5), policy=policy)
        self.layers = [
            block(cfg, self.projection, name=f"layers_{i}") for i in range(cfg.num_layers)
        ]
        self.final_norm = RMSNorm(dtype=_dtype(cfg))
        if not cfg.tie_embeddings:
            self.logits_projection = Projection(
                (cfg.embed_dim,), (cfg.vocab_size,), (axes.EMBED, axes.VOCAB), dtype=_dtype(cfg)
            )

    def embed(self, tokens: Array) -> Array:
        """Token embeddings [batch, length, embed], scaled by sqrt(embed) as in PaLM/Gemma."""
        scale = jnp.sqrt(jnp.float32(self.config.embed_dim))
        x = jnp.take(self.embedding, tokens, axis=0) * scale
        return x.astype(_dtype(self.config))

    def __call__(
        self,
        tokens: Array,
        segment_ids: Array | None = None,
        positions: Array | None = None,
        *,
        prefix_embeddings: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        prefill: bool = True,
        return_hidden: bool = False,
    ) -> Array:
        """Next-token logits.

        Args:
          tokens: [batch, length] int token ids.
          segment_ids: [batch, length]; tokens attend only within their segment (packing);
            0 marks padding. Defaults to one segment per row.
          positions: [batch, length] RoPE positions; defaults to 0..length-1.
          prefix_embeddings: optional [prefix, embed] or [batch, prefix, embed] vectors (a soft
            prompt) placed before the tokens, at positions 0..prefix-1, in segment 1 of each
            row; the token positions shift by the prefix length. Only unpacked rows make sense
            (the prompt method refuses packed features).
          deterministic: disables dropout.
          decode: use and update the key/value cache.
          prefill: False for the one-token decode steps that follow the first (prefill) call.
            The decoder itself ignores it; it is part of the signature every model wrapper
            shares, so a wrapper that adds a prefix (prompt tuning) adds it only once.
          return_hidden: return the final-norm hidden states instead of the logits (a
            classification head reads them; the vocabulary projection is then skipped).

        Returns:
          float32 logits [batch, length, vocab] for the token positions (prefix sliced off), or
          with `return_hidden` the hidden states [batch, length, embed] in the compute dtype.
        """
        batch, length = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        x = self.embed(tokens)
        prefix = 0
        if prefix_embeddings is not None:
            x, positions, segment_ids, prefix = _prepend(
                x, positions, segment_ids, prefix_embeddings
            )
        x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
        for layer in self.layers:
            x = layer(x, positions, segment_ids, deterministic, decode)
        x = self.final_norm(x)[:, prefix:]
        if return_hidden:
            return x
        if self.config.tie_embeddings:
            logits = x.reshape(-1, x.shape[-1]) @ self.embedding.T.astype(x.dtype)
            logits = logits.reshape(*x.shape[:-1], -1)
        else:
            logits = self.logits_projection(x)
        logits = nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
        return logits.astype(jnp.float32)


_REMAT_POLICIES = {
    "full": None,  # jax.checkpoint's default: save nothing but the inputs
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _prepend(x, positions, segment_ids, prefix_embeddings):
    batch = x.shape[0]
    if prefix_embeddings.ndim == 2:
        prefix_embeddings = jnp.broadcast_to(prefix_embeddings, (batch, *prefix_embeddings.shape))
    prefix = prefix_embeddings.shape[1]
    x = jnp.concatenate([prefix_embeddings.astype(x.dtype), x], axis=1)
    prefix_positions = jnp.broadcast_to(jnp.arange(prefix, dtype=positions.dtype), (batch, prefix))
    positions = jnp.concatenate([prefix_positions, positions + prefix], axis=1)
    segment_ids = jnp.concatenate([jnp.ones((batch, prefix), segment_ids.dtype), segment_ids], 1)
    return x, positions, segment_ids, prefix
