"""The decoder's building blocks: projections, normalisations, rotary embeddings, feed-forwards.

Each is parameterised by a `ModelConfig` option (configs.py) whose default is the paper's model:
    Projection   y = x W (+ b)                          kernel [in..., out...], bias [out...]
    Norm         'rms':          x / rms(x) * w
                 'rms_plus_one': x / rms(x) * (1 + w)   (Gemma; w starts at 0)
                 'layernorm':    (x - mean) / std * w + b  (GPT-NeoX)
    rotary       rotate-half RoPE on the first `rotary_fraction` of each head's dims,
                 optionally with Llama-3 frequency scaling
    FeedForward  'swiglu': silu(x Wg) * (x Wu) Wo;  'geglu_tanh': gelu_tanh(x Wg) * (x Wu) Wo;
                 'gelu':   gelu(x Wi) Wo (exact GELU, GPT-NeoX)
Every parameter carries logical axis names (axes.py).
"""

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.models import axes
from ft_scaling.models.configs import ModelConfig

Array = jax.Array


def compute_dtype(config: ModelConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def flat_size(shape: Sequence[int]) -> int:
    size = 1
    for dim in shape:
        size *= dim
    return size


class Projection(nn.Module):
    """A linear map contracting the trailing `in_axes` dims of x into `out_shape`.

    The kernel keeps its natural shape (e.g. [embed, heads, kv]) so it carries one logical name
    per dimension, but the product runs as a single 2-D matmul: on CPU the backward pass of a 3-D
    `x @ W` is several times slower than of the flattened one. With `use_bias` a bias of shape
    `out_shape` (the kernel's output axes) is added.
    """

    in_shape: Sequence[int]
    out_shape: Sequence[int]
    kernel_axes: Sequence[str]
    dtype: jnp.dtype = jnp.float32
    use_bias: bool = False

    def setup(self):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0)
        shape = (*self.in_shape, *self.out_shape)
        flat = (flat_size(self.in_shape), flat_size(self.out_shape))
        flat_init = lambda key, _: init(key, flat).reshape(shape)
        self.kernel = self.param(
            "kernel", nn.with_logical_partitioning(flat_init, tuple(self.kernel_axes)), shape
        )
        if self.use_bias:
            out_axes = tuple(self.kernel_axes[len(self.in_shape) :])
            self.bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, out_axes),
                tuple(self.out_shape),
            )

    def matmul(self, x: Array, kernel: Array) -> Array:
        n_in = len(self.in_shape)
        lead = x.shape[: x.ndim - n_in]
        x2 = x.reshape(-1, flat_size(self.in_shape)).astype(self.dtype)
        w2 = kernel.reshape(flat_size(self.in_shape), flat_size(self.out_shape)).astype(self.dtype)
        return (x2 @ w2).reshape(*lead, *self.out_shape)

    def add_bias(self, y: Array) -> Array:
        return y + self.bias.astype(y.dtype) if self.use_bias else y

    def __call__(self, x: Array) -> Array:
        return self.add_bias(self.matmul(x, self.kernel))


class Norm(nn.Module):
    """RMSNorm, Gemma's RMSNorm with (1 + w), or LayerNorm with bias, over the trailing dims.

    Statistics are taken over the last `len(feature_axes)` dims in float32 (two dims for OLMo-2's
    q/k norm over a whole [heads, head_dim] projection).
    """

    kind: str = "rms"
    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    feature_axes: tuple[str, ...] = (axes.EMBED,)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n = len(self.feature_axes)
        init = nn.initializers.zeros if self.kind == "rms_plus_one" else nn.initializers.ones
        scale = self.param(
            "scale", nn.with_logical_partitioning(init, self.feature_axes), x.shape[-n:]
        )
        reduce = -1 if n == 1 else tuple(range(-n, 0))
        x32 = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x32 = x32 - jnp.mean(x32, axis=reduce, keepdims=True)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=reduce, keepdims=True) + self.epsilon)
        if self.kind == "rms_plus_one":
            scale = 1.0 + scale.astype(jnp.float32)
        out = normed * scale
        if self.kind == "layernorm":
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.feature_axes),
                x.shape[-n:],
            )
            out = out + bias
        return out.astype(self.dtype)


def norm(config: ModelConfig, name: str, feature_axes=(axes.EMBED,)) -> Norm:
    return Norm(config.norm, config.norm_epsilon, compute_dtype(config), feature_axes, name=name)


def rotary(x: Array, positions: Array, max_wavelength: float) -> Array:
    """Rotary position embedding of x [batch, length, heads, head_dim] at positions [b, l]."""
    half = x.shape[-1] // 2
    freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [half]
    return _rotate(x, positions, freq)


def _rotate(x: Array, positions: Array, freq) -> Array:
    angle = positions[..., None, None].astype(jnp.float32) * freq  # [b, l, 1, half]
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def rotary_dims(config: ModelConfig) -> int:
    """Dims of each head that RoPE rotates (GPT-NeoX's rotary_pct of head_dim, rounded down)."""
    return int(config.head_dim * config.rotary_fraction)


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """float32 [rotary_dims / 2] RoPE frequencies, with Llama-3 scaling when configured.

    Llama 3.1 (transformers' `_compute_llama3_parameters`): wavelengths longer than
    original_max / low_freq_factor are divided by `factor`, shorter than original_max /
    high_freq_factor are kept, and those between are interpolated smoothly.
    """
    dim = rotary_dims(config)
    inv_freq = 1.0 / config.rope_max_wavelength ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if config.rope_scaling:
        _, factor, low, high, original = config.rope_scaling
        wavelength = 2 * math.pi / inv_freq
        scaled = np.where(wavelength > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelength - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelength >= original / high) & (wavelength <= original / low)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def apply_rotary(config: ModelConfig, x: Array, positions: Array) -> Array:
    """RoPE of x [batch, length, heads, head_dim] as `config` asks (see `inverse_frequencies`)."""
    if config.rotary_fraction == 1.0 and not config.rope_scaling:
        return rotary(x, positions, config.rope_max_wavelength)  # the paper's models, unchanged
    dim = rotary_dims(config)
    rotated = _rotate(x[..., :dim], positions, jnp.asarray(inverse_frequencies(config)))
    return jnp.concatenate([rotated, x[..., dim:]], axis=-1)


class FeedForward(nn.Module):
    """The block's MLP: gated (SwiGLU, GeGLU with tanh GELU) or plain GELU (see module doc)."""

    config: ModelConfig
    projection: Callable[..., nn.Module] = Projection

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        proj = functools.partial(self.projection, dtype=compute_dtype(cfg), use_bias=cfg.mlp_bias)
        d, f = (cfg.embed_dim,), (cfg.mlp_dim,)
        if cfg.mlp == "gelu":
            hidden = nn.gelu(proj(d, f, (axes.EMBED, axes.MLP), name="wi")(x), approximate=False)
        else:
            gate = proj(d, f, (axes.EMBED, axes.MLP), name="wi_0")(x)
            up = proj(d, f, (axes.EMBED, axes.MLP), name="wi_1")(x)
            act = nn.silu(gate) if cfg.mlp == "swiglu" else nn.gelu(gate, approximate=True)
            hidden = act * up
        hidden = nn.with_logical_constraint(hidden, (axes.BATCH, axes.LENGTH, axes.MLP))
        return proj(f, d, (axes.MLP, axes.EMBED), name="wo")(hidden)
