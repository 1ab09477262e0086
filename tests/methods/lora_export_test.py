"""PEFT export: names, torch-layout shapes, a byte-exact safetensors round trip, and the PEFT
update B @ A * alpha / r equal to our merged kernel's change."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.methods import lora, lora_export


def _trained_like(params):
    """Non-zero B factors, as after training."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: (
            jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape) * 0.1
            if p[-1].key == lora.LORA_B
            else x
        ),
        params,
    )


def test_export_round_trip_and_update(kit, tmp_path):
    method = lora.LoRA(rank=4, alpha=8.0, targets=("attention/(query|out)$", "mlp/wo$"))
    params = _trained_like(kit.init_params(method, kit.TINY)[1])
    config_path, weights_path = lora_export.export_peft(method, params, str(tmp_path), "base")
    config = json.load(open(config_path))
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    assert config["target_modules"] == [
        "layers.0.attention.out",
        "layers.0.attention.query",
        "layers.0.mlp.wo",
        "layers.1.attention.out",
        "layers.1.attention.query",
        "layers.1.mlp.wo",
    ]
    tensors = lora_export.read_safetensors(weights_path)
    assert len(tensors) == 12
    prefix = "base_model.model.layers.0.attention."
    assert tensors[prefix + "query.lora_A.weight"].shape == (4, 32)  # [r, embed]
    assert tensors[prefix + "query.lora_B.weight"].shape == (32, 4)  # [heads * head_dim, r]
    assert tensors[prefix + "out.lora_A.weight"].shape == (4, 32)  # [r, heads * head_dim]
    expected = lora_export.peft_tensors(method, params)
    for name, array in expected.items():
        np.testing.assert_array_equal(tensors[name], array)
    # PEFT's update of a torch weight [out, in] is B @ A * alpha / r; ours is its transpose.
    kernel = params["layers_1"]["attention"]["out"]["kernel"]
    merged = method.merge(params)["layers_1"]["attention"]["out"]["kernel"]
    name = "base_model.model.layers.1.attention.out"
    update = tensors[f"{name}.lora_B.weight"] @ tensors[f"{name}.lora_A.weight"] * 2.0
    np.testing.assert_allclose((merged - kernel).reshape(-1, 32), update.T, atol=1e-6)
    assert jnp.abs(merged - kernel).max() > 1e-3
