"""Remat saves memory in the compiled train step on CPU too (partitioning.step_compiler_options):
XLA:CPU would otherwise expand jax.checkpoint's barriers before CSE and merge the recomputation
back into the forward pass, keeping every layer's activations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.methods import full
from ft_scaling.models import configs, decoder
from ft_scaling.train import losses, optimizers, partitioning, trainer

CONFIG = configs.ModelConfig(
    vocab_size=64, num_layers=6, num_heads=4, num_kv_heads=4, head_dim=16, embed_dim=64,
    mlp_dim=256,
)  # fmt: skip
BATCH, LENGTH = 8, 64
SETTINGS = optimizers.OptimizerSettings("adamw", 0.0, 1.0)


def _step(remat: bool):
    """(XLA temporaries in bytes, loss and params after one step) of an FMT step."""
    config = dataclasses.replace(CONFIG, remat=remat)
    method = full.FullModelTuning()
    model = method.wrap(decoder.Decoder(config))
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    params = trainer.init_params(model, jax.random.PRNGKey(0), LENGTH, mesh, rules)
    state, frozen = trainer.create_state(
        params, method.trainable_mask(params), SETTINGS, jax.random.PRNGKey(1), mesh
    )
    train_fn, _ = trainer.jit_steps(losses.LMLoss(model), SETTINGS, mesh, rules, state, frozen)
    tokens = np.random.default_rng(0).integers(1, 64, (BATCH, LENGTH + 1)).astype(np.int32)
    batch = {
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": np.ones((BATCH, LENGTH), np.float32),
        "decoder_segment_ids": np.ones((BATCH, LENGTH), np.int32),
        "decoder_positions": np.broadcast_to(np.arange(LENGTH, dtype=np.int32), (BATCH, LENGTH)),
    }
    batch = jax.device_put(batch, trainer.example_sharding(mesh, rules))
    rate = jnp.float32(1e-3)
    with jax.set_mesh(mesh):
        compiled = train_fn.__wrapped__.lower(state, frozen, batch, rate).compile()
    temporaries = compiled.memory_analysis().temp_size_in_bytes
    state, metrics = train_fn(state, frozen, batch, rate)
    return temporaries, float(metrics["loss"]), jax.device_get(state.params)


def test_remat_cuts_the_steps_temporaries_and_changes_no_number():
    plain_bytes, plain_loss, plain_params = _step(remat=False)
    remat_bytes, remat_loss, remat_params = _step(remat=True)
    # Six layers' activations kept vs one layer's recomputed at a time (measured: ~0.3x).
    assert remat_bytes < 0.6 * plain_bytes, (remat_bytes, plain_bytes)
    assert remat_loss == plain_loss
    for got, want in zip(jax.tree.leaves(remat_params), jax.tree.leaves(plain_params), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_only_cpu_steps_keep_the_barriers():
    mesh = partitioning.make_mesh()
    assert partitioning.step_compiler_options(mesh) == {
        "xla_disable_hlo_passes": "cse_barrier_expander"
    }
