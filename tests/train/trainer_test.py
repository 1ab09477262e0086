"""The compiled train step is compiled once per model, not again on its second call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.methods import full, lora
from ft_scaling.models import configs, decoder
from ft_scaling.train import partitioning, trainer

CONFIG = configs.ModelConfig(vocab_size=128, num_layers=1, embed_dim=32, mlp_dim=64)


def _batch(batch=2, length=8):
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 128, (batch, length)), jnp.int32)
    return {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": tokens,
        "decoder_loss_weights": jnp.ones((batch, length), jnp.float32),
        "decoder_segment_ids": jnp.ones((batch, length), jnp.int32),
        "decoder_positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)),
    }


@pytest.mark.parametrize("method", [full.FullModelTuning(), lora.LoRA(rank=2)], ids=str)
@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_train_step_compiles_once(method, optimizer):
    model = method.wrap(decoder.Decoder(CONFIG))
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    params = trainer.init_params(model, jax.random.PRNGKey(0), 8, mesh, rules)
    settings = (optimizer, 0.0, 1.0)
    state, frozen = trainer.create_state(
        params, method.trainable_mask(params), settings, jax.random.PRNGKey(1), mesh
    )
    train_step, _ = trainer.jit_steps(model, settings, mesh, rules, state, frozen)
    losses = []
    for _ in range(3):
        state, metrics = train_step(state, frozen, _batch(), np.float32(1e-2))
        losses.append(float(metrics["loss"]))
    assert train_step.__wrapped__._cache_size() == 1
    assert losses[-1] < losses[0]
