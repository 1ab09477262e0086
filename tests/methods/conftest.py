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

from ft_scaling.methods import base, bitfit, freeze, full, lora, prompt
from ft_scaling.models import configs, decoder
from ft_scaling.train import optimizers, partitioning, trainer
from ft_scaling.train.losses import LMLoss

TINY = configs.ModelConfig(
    vocab_size=97, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, embed_dim=32, mlp_dim=64
)


LENGTH = 12


def init_params(method: base.Method, config: configs.ModelConfig, length: int = LENGTH, seed=0):
    """(wrapped model, unboxed params) as the trainer builds them; a fresh copy of the tree."""
    model, params = _cached_init(method, config, length, seed)
    return model, jax.tree.map(lambda x: x, params)  # new dicts: callers may edit the tree


@functools.cache
def _cached_init(method, config, length, seed):
    model = method.wrap(decoder.Decoder(config))
    tokens = jnp.ones((1, length), jnp.int32)
    # Jitted: eager init compiles every random op separately (seconds per test on CPU).
    init = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, tokens)["params"]))
    return model, init(jax.random.PRNGKey(seed))


def abstract_params(method: base.Method, config: configs.ModelConfig, length: int = LENGTH):
    """The params' shapes (ShapeDtypeStruct leaves), nothing computed: for masks and counts."""
    model = method.wrap(decoder.Decoder(config))
    tokens = jnp.ones((1, length), jnp.int32)
    init = lambda rng: nn.meta.unbox(model.init(rng, tokens)["params"])
    return jax.eval_shape(init, jax.random.PRNGKey(0))


def task_batch(config: configs.ModelConfig, batch: int = 16, length: int = LENGTH, seed=0):
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


def finetune(method, config=TINY, steps=20, learning_rate=1e-2, seed=0, mesh=None):
    """Runs `steps` steps of `method` on the tiny task through the trainer's own path.

    Returns:
      dict with the method, the wrapped model, the initial and final full params, the mask,
      the final train state and the per-step losses.
    """
    model = method.wrap(decoder.Decoder(config))
    mesh = partitioning.make_mesh() if mesh is None else mesh
    rules = partitioning.logical_rules()
    rng = jax.random.PRNGKey(seed)
    params = trainer.init_params(model, rng, LENGTH, mesh, rules)
    params = method.after_restore(params, jax.random.fold_in(rng, 2))
    initial = jax.tree.map(np.asarray, params)  # host copy: the state is donated to the steps
    mask = method.trainable_mask(params)
    settings = optimizers.OptimizerSettings("adamw", 0.0, None)
    state, frozen = trainer.create_state(params, mask, settings, rng, mesh)
    train_step, _ = trainer.jit_steps(LMLoss(model), settings, mesh, rules, state, frozen)
    batch = task_batch(config)
    losses = []
    for _ in range(steps):
        state, metrics = train_step(state, frozen, batch, jnp.float32(learning_rate))
        losses.append(float(metrics["loss"]))
    final = base.merge(state.params, frozen)
    return {
        "method": method,
        "model": model,
        "initial": initial,
        "final": final,
        "mask": mask,
        "state": state,
        "losses": losses,
    }


# One configuration per method and its learning rate (AdamW) for the tiny task.
TRAINED = {
    "full": (full.FullModelTuning(), 1e-2),
    "prompt": (prompt.PromptTuning(prompt_length=5), 1e-1),
    "lora": (lora.LoRA(rank=4, alpha=8.0), 3e-2),
    "bitfit": (bitfit.BitFit(), 3e-2),
    "freeze": (freeze.LayerFreeze(top_k=1), 1e-2),
}
STEPS = 20


@pytest.fixture(scope="session")
def trained():
    """name -> the `finetune` result of TRAINED[name] for STEPS steps, computed once."""
    runs = {}

    def get(name):
        if name not in runs:
            method, learning_rate = TRAINED[name]
            runs[name] = finetune(method, steps=STEPS, learning_rate=learning_rate)
        return runs[name]

    return get


@pytest.fixture
def kit():
    """The helpers above (test modules cannot import a conftest)."""
    return types.SimpleNamespace(
        TINY=TINY,
        init_params=init_params,
        abstract_params=abstract_params,
        task_batch=task_batch,
        finetune=finetune,
    )
