"""Shared fixtures of the method tests: a tiny decoder, a tiny task and N real train steps.

The steps are the trainer's own (`train/trainer.py`: split by the method's mask, gradient and
optimizer state for the trainable split only), so these tests check the methods as they train.
"""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.methods import base
from ft_scaling.models import configs, decoder
from ft_scaling.train import optimizers, trainer

TINY = configs.ModelConfig(
    vocab_size=97, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, embed_dim=32, mlp_dim=64
)


def init_params(method: base.Method, config: configs.ModelConfig, length: int = 12, seed=0):
    """(wrapped model, unboxed params) as the trainer builds them."""
    model = method.wrap(decoder.Decoder(config))
    tokens = jnp.ones((1, length), jnp.int32)
    return model, nn.meta.unbox(model.init(jax.random.PRNGKey(seed), tokens)["params"])


def task_batch(config: configs.ModelConfig, batch: int = 16, length: int = 12, seed: int = 0):
    """A tiny learnable task: each row counts up by 7 modulo the vocabulary from a random start.

    Loss on the second half of each row only (the 'targets' of a prefix LM).
    """
    start = np.random.default_rng(seed).integers(0, config.vocab_size, (batch, 1))
    rows = (start + 7 * np.arange(length + 1)) % config.vocab_size
    weights = np.zeros((batch, length), np.float32)
    weights[:, length // 2 :] = 1.0
    return {
        "decoder_input_tokens": jnp.asarray(rows[:, :-1], jnp.int32),
        "decoder_target_tokens": jnp.asarray(rows[:, 1:], jnp.int32),
        "decoder_loss_weights": jnp.asarray(weights),
        "decoder_segment_ids": jnp.ones((batch, length), jnp.int32),
        "decoder_positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)),
    }


def finetune(method, config=TINY, steps=20, learning_rate=1e-2, params=None, seed=0):
    """Runs `steps` trainer steps of `method` on the tiny task.

    Returns:
      dict with the wrapped model, the initial and final full params, the final train state
      and the per-step losses.
    """
    model, fresh = init_params(method, config)
    params = fresh if params is None else params
    mask = method.trainable_mask(params)
    optimizer = optimizers.optimizer(learning_rate, kind="adamw", clip_norm=None)
    state, frozen = trainer.create_state(params, mask, optimizer, jax.random.PRNGKey(seed))
    step = jax.jit(functools.partial(trainer.train_step, model=model, optimizer=optimizer))
    batch = task_batch(config)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, frozen, batch)
        losses.append(float(metrics["loss"]))
    final = base.merge(state.params, frozen)
    return {"model": model, "initial": params, "final": final, "state": state, "losses": losses}


@pytest.fixture
def kit():
    """The helpers above (test modules cannot import a conftest)."""
    return types.SimpleNamespace(
        TINY=TINY, init_params=init_params, task_batch=task_batch, finetune=finetune
    )
