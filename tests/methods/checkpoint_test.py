"""Method checkpoints through the trainer's CheckpointStore: prompt and LoRA runs store only
their trainable leaves and optimizer state (< 5% of an FMT checkpoint of the same model), and
load_params rebuilds the full model from the base checkpoint they refer to."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.methods import base, full, lora, prompt
from ft_scaling.models import configs, decoder
from ft_scaling.train import checkpoints, optimizers, partitioning, trainer

# One block with the paper's head dim (256) and FFN = 4 x model dim (PAPER.md §1, Table 3), so
# LoRA's share of the weights is paper-like (r / d small). In the tiny_1..5 gins (d = 64..256)
# rank 4 is 5-9% of the checkpoint: LoRA's fraction scales as r / d, and orbax writes ~1 KB of
# metadata per array (LoRA has 3 x 28 of them).
WIDE = configs.ModelConfig(
    vocab_size=1024,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=256,
    embed_dim=512,
    mlp_dim=2048,
)
# The paper's optimizer (PAPER.md §3).
SETTINGS = optimizers.OptimizerSettings("adafactor", 0.0, 1.0)


def _as_trained(tree, seed):
    """Random floats in every array: a fresh state is mostly zeros, which orbax compresses."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [
        jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


def _save_run(method, model_dir, base_dir=None):
    """Saves what the loop saves for `method` (trainable params + optimizer state); bytes."""
    model = method.wrap(decoder.Decoder(WIDE))
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    params = trainer.init_params(model, jax.random.PRNGKey(0), 16, mesh, rules)
    state, _ = trainer.create_state(
        params, method.trainable_mask(params), SETTINGS, jax.random.PRNGKey(1), mesh
    )
    tree = _as_trained(
        {
            "step": state.step,
            "params": state.params,
            "opt_state": state.opt_state,
            "rng": state.rng,
        },
        seed=len(model_dir),
    )
    store = checkpoints.CheckpointStore(model_dir)
    store.save(1, tree, {"step": 1, "data_position": 1, "base_checkpoint": base_dir})
    store.close()
    size = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(model_dir)
        for name in names
    )
    return size, tree["params"]


def test_prompt_and_lora_checkpoints_are_small_and_restore_over_the_base(tmp_path):
    base_dir = str(tmp_path / "fmt")
    fmt_bytes, base_params = _save_run(full.FullModelTuning(), base_dir)
    ratios = {}
    for method in (prompt.PromptTuning(prompt_length=100), lora.LoRA(rank=4)):
        model_dir = str(tmp_path / method.name)
        size, trained = _save_run(method, model_dir, base_dir)
        ratios[method.name] = size / fmt_bytes
        restored, meta = checkpoints.load_params(model_dir)
        assert meta["base_checkpoint"] == base_dir
        flat = traverse_util.flatten_dict(restored)
        for path, leaf in traverse_util.flatten_dict(trained).items():
            if leaf is not None:
                np.testing.assert_array_equal(flat.pop(path), leaf)
        # Every other leaf comes from the base checkpoint.
        base_flat = traverse_util.flatten_dict(base_params)
        assert set(flat) == set(base_flat)
        for path, leaf in flat.items():
            np.testing.assert_array_equal(leaf, base_flat[path])
    print(f"checkpoint bytes / FMT's ({fmt_bytes} B): {ratios}")
    assert ratios["prompt"] < 0.05 and ratios["lora"] < 0.05, ratios


def test_method_params_on_a_base_of_another_shape_are_refused(kit, tmp_path):
    method = lora.LoRA(rank=4)
    wider = dataclasses.replace(kit.TINY, embed_dim=48)
    base_of_other_shape = kit.init_params(full.FullModelTuning(), wider)[1]
    fresh = kit.init_params(method, kit.TINY)[1]
    with pytest.raises(checkpoints.CheckpointError, match=r"has shape \(97, 48\).*\(97, 32\)"):
        checkpoints.initial_params(fresh, base_of_other_shape, method.is_method_param)
    # A saved LoRA state restored for a model of another width: named, before any step.
    trainable, _ = base.split(fresh, method.trainable_mask(fresh))
    store = checkpoints.CheckpointStore(str(tmp_path))
    store.save(1, {"params": trainable}, {"step": 1})
    other = kit.init_params(method, wider)[1]
    other_trainable, _ = base.split(other, method.trainable_mask(other))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), other_trainable
    )
    with pytest.raises(checkpoints.CheckpointError, match="does not match this model"):
        store.restore(1, {"params": abstract})
    store.close()
