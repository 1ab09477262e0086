"""Decoder-only Transformer LM in Flax linen, with logical axis names on every array.

    tokens [batch, length] --embed (x sqrt(d) by default)--> x [batch, length, embed]
      (optional prefix embeddings, e.g. a soft prompt, are prepended here)
      repeat num_layers, by `norm_placement`:
        'pre' (default):  x += Attention(Norm(x));  x += MLP(Norm(x))
        'post' (OLMo-2):  x += Norm(Attention(x));  x += Norm(MLP(x))
        'parallel' (GPT-NeoX):  x += Attention(Norm_1(x)) + MLP(Norm_2(x))
    Norm --> logits [batch, length, vocab] (prefix positions sliced off)

By default (the paper's models): pre-norm RMSNorm, rotary position embeddings, multi-head or
multi-query attention, SwiGLU feed-forward, no biases, optionally tied embeddings. The other
options of `ModelConfig` (norm kind, biases, q/k norms, partial or scaled RoPE, GeGLU/GELU MLPs,
sliding windows) cover the public families that ft_scaling/models/hf/ imports; the building
blocks are in layers.py. For finetuning it is used as a prefix LM: inputs and targets form one
sequence, attention is causal, and the loss (train/losses.py) covers targets only.

Every matmul goes through `Projection`, which a finetuning method may replace (LoRA subclasses it)
through the `projection` field, so methods never edit this file. With `decode=True` the attention
layers keep a key/value cache in the 'cache' collection: a call with T tokens writes T cache slots
(prefill), later calls usually write one.
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ft_scaling.models import axes, layers
from ft_scaling.models.attention import dot_product_attention
from ft_scaling.models.configs import ModelConfig

Array = jax.Array


# Re-exported: methods subclass Projection (LoRA) and tests use these names.
_dtype = layers.compute_dtype
_flat = layers.flat_size
Projection = layers.Projection
RMSNorm = layers.Norm
rotary = layers.rotary


class Attention(nn.Module):
    config: ModelConfig
    projection: Callable[..., nn.Module] = Projection

    @nn.compact
    def __call__(self, x, positions, segment_ids, decode: bool = False):
        cfg, dtype = self.config, _dtype(self.config)
        d, nq, nkv, hd = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        proj = functools.partial(self.projection, dtype=dtype)
        qkv = functools.partial(proj, use_bias=cfg.qkv_bias)
        q = qkv((d,), (nq, hd), (axes.EMBED, axes.HEADS, axes.KV), name="query")(x)
        k = qkv((d,), (nkv, hd), (axes.EMBED, axes.KV_HEADS, axes.KV), name="key")(x)
        v = qkv((d,), (nkv, hd), (axes.EMBED, axes.KV_HEADS, axes.KV), name="value")(x)
        q, k = self._qk_norm(q, k)
        q = layers.apply_rotary(cfg, q, positions)
        k = layers.apply_rotary(cfg, k, positions)
        q = nn.with_logical_constraint(q, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
        if decode:
            k, v, mask = self._update_cache(k, v, segment_ids)
            layout = "heads_first"  # the cache is stored [b, kv_heads, slots, d]
        else:
            same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
            length = x.shape[1]
            causal = jnp.tril(jnp.ones((length, length), dtype=bool))
            if cfg.sliding_window:  # positions, not columns: packed segments restart at 0
                distance = positions[:, :, None] - positions[:, None, :]
                causal = causal & (distance < cfg.sliding_window)
            mask = (same_segment & causal)[:, None]  # [b, 1, q, k]
            layout = "length_first"
        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, kv_layout=layout)
        out = nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
        out_axes = (axes.HEADS, axes.KV, axes.EMBED)
        return proj((nq, hd), (d,), out_axes, use_bias=cfg.attention_out_bias, name="out")(out)

    def _qk_norm(self, q, k):
        """Qwen3 normalises each head over head_dim, OLMo-2 the whole [heads, head_dim] q/k."""
        cfg = self.config
        if cfg.qk_norm == "head":
            q = layers.norm(cfg, "query_norm", (axes.KV,))(q)
            k = layers.norm(cfg, "key_norm", (axes.KV,))(k)
        elif cfg.qk_norm == "projection":
            q = layers.norm(cfg, "query_norm", (axes.HEADS, axes.KV))(q)
            k = layers.norm(cfg, "key_norm", (axes.KV_HEADS, axes.KV))(k)
        return q, k

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
        query_slots = (start + jnp.arange(length))[:, None]
        visible = slots[None, :] <= query_slots  # [q, slots]
        if self.config.sliding_window:
            # Left padding shifts a row's slots and positions alike: slot distance = position's.
            visible = visible & (query_slots - slots[None, :] < self.config.sliding_window)
        mask = visible[None, None] & (cseg.value != 0)[:, None, None, :]
        keys = nn.with_logical_constraint(ck.value, cache_axes)
        values = nn.with_logical_constraint(cv.value, cache_axes)
        return keys, values, mask


class Block(nn.Module):
    config: ModelConfig
    projection: Callable[..., nn.Module] = Projection

    @nn.compact
    def __call__(self, x, positions, segment_ids, deterministic: bool, decode: bool):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
        attn = Attention(cfg, self.projection, name="attention")
        mlp = layers.FeedForward(cfg, self.projection, name="mlp")
        if cfg.norm_placement == "post":  # OLMo-2: the norm closes each sublayer
            h = attn(x, positions, segment_ids, decode)
            x = x + drop(layers.norm(cfg, "attention_post_norm")(h))
            x = x + drop(layers.norm(cfg, "mlp_post_norm")(mlp(x)))
        elif cfg.norm_placement == "parallel":  # GPT-NeoX: both sublayers read the block input
            h = attn(layers.norm(cfg, "attention_norm")(x), positions, segment_ids, decode)
            x = x + drop(h) + drop(mlp(layers.norm(cfg, "mlp_norm")(x)))
        else:
            h = attn(layers.norm(cfg, "attention_norm")(x), positions, segment_ids, decode)
            x = x + drop(h)
            x = x + drop(mlp(layers.norm(cfg, "mlp_norm")(x)))
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
        self.final_norm = layers.Norm(cfg.norm, cfg.norm_epsilon, _dtype(cfg))
        if not cfg.tie_embeddings:
            self.logits_projection = Projection(
                (cfg.embed_dim,), (cfg.vocab_size,), (axes.EMBED, axes.VOCAB), dtype=_dtype(cfg)
            )

    def embed(self, tokens: Array) -> Array:
        """Token embeddings [batch, length, embed], times `embedding_multiplier(config)`."""
        x = jnp.take(self.embedding, tokens, axis=0)
        if self.config.embed_scale == "sqrt":
            x = x * embedding_multiplier(self.config)
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


def embedding_multiplier(config: ModelConfig) -> Array:
    """What token embeddings are multiplied by: sqrt(embed) (PaLM/Gemma) or 1 (embed_scale)."""
    if config.embed_scale == "sqrt":
        return jnp.sqrt(jnp.float32(config.embed_dim))
    return jnp.float32(1.0)


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
