"""Tiny models shared by the eval tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.eval import decoding
from ft_scaling.models.configs import ModelConfig
from ft_scaling.models.decoder import Decoder

# Untied output layer and doubled weights: a random tied model just repeats its last input,
# which would make "same tokens" a weak check.
TINY = ModelConfig(
    vocab_size=97,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    embed_dim=32,
    mlp_dim=64,
    tie_embeddings=False,
)


def init_variables(model, seed: int = 0, scale: float = 2.0):
    """{'params': ...} of `model` with every weight multiplied by `scale` (B of LoRA included)."""
    params = model.init(jax.random.PRNGKey(seed), jnp.ones((1, 8), jnp.int32))["params"]
    params = nn.meta.unbox(params)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), len(jax.tree.leaves(params))))
    # Zero-initialised leaves (LoRA's B) get random values so the method changes the output.
    params = jax.tree.map(
        lambda p: p * scale if jnp.any(p != 0) else 0.3 * jax.random.normal(next(keys), p.shape),
        params,
    )
    return {"params": params}


@pytest.fixture(scope="session")
def tiny_model():
    model = Decoder(TINY)
    return model, init_variables(model)


@pytest.fixture(scope="session")
def ragged_prompts():
    """Four left-padded prompts of lengths 5, 9, 3, 7."""
    rng = np.random.default_rng(0)
    rows = [rng.integers(2, TINY.vocab_size, size=n).tolist() for n in (5, 9, 3, 7)]
    tokens, lengths = decoding.left_pad(rows)
    return rows, tokens, lengths
