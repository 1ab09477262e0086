"""BitFit and layer freezing: which leaves train, and the selections they refuse."""

import pytest
from flax import traverse_util

from ft_scaling.methods import base, bitfit, freeze
from ft_scaling.models import configs

SIX = configs.ModelConfig(
    vocab_size=97, num_layers=6, num_heads=2, num_kv_heads=1, head_dim=8, embed_dim=16, mlp_dim=32
)


def _trained_paths(method, kit, config=SIX):
    params = kit.abstract_params(method, config)  # shapes suffice for a mask
    mask = traverse_util.flatten_dict(method.trainable_mask(params))
    return sorted("/".join(p) for p, keep in mask.items() if keep)


def test_bitfit_trains_exactly_the_norm_scales(kit):
    paths = _trained_paths(bitfit.BitFit(), kit)
    expected = ["final_norm/scale"] + [
        f"layers_{i}/{norm}/scale" for i in range(6) for norm in ("attention_norm", "mlp_norm")
    ]
    assert paths == sorted(expected)
    assert bitfit.BitFit().is_method_param(("final_norm", "scale")) is False


def test_freeze_top_k_trains_the_top_blocks(kit):
    paths = _trained_paths(freeze.LayerFreeze(top_k=2), kit)
    assert {p.split("/")[0] for p in paths} == {"layers_4", "layers_5", "final_norm"}
    assert len(paths) == 2 * 9 + 1  # 7 kernels + 2 norm scales per block, + the final norm
    paths = _trained_paths(freeze.LayerFreeze(top_k=1, train_embedding=True), kit)
    assert {p.split("/")[0] for p in paths} == {"layers_5", "final_norm", "embedding"}


def test_freeze_by_pattern(kit):
    method = freeze.LayerFreeze(top_k=None, layer_pattern="layers_(0|3)", train_final_norm=False)
    paths = _trained_paths(method, kit)
    assert {p.split("/")[0] for p in paths} == {"layers_0", "layers_3"}
    # A full match: 'layers_1' does not select layers_10.. of a deeper model.
    method = freeze.LayerFreeze(top_k=None, layer_pattern="layers_1")
    deep = configs.ModelConfig(
        vocab_size=97,
        num_layers=12,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        embed_dim=16,
        mlp_dim=32,
    )
    assert {p.split("/")[0] for p in _trained_paths(method, kit, deep)} == {
        "layers_1",
        "final_norm",
    }


def test_freeze_refuses_bad_selections(kit):
    with pytest.raises(ValueError, match="exactly one of top_k and layer_pattern"):
        freeze.LayerFreeze(top_k=2, layer_pattern="layers_0")
    with pytest.raises(ValueError, match="exactly one of top_k and layer_pattern"):
        freeze.LayerFreeze(top_k=None)
    with pytest.raises(ValueError, match="top_k must be positive, got 0"):
        freeze.LayerFreeze(top_k=0)
    with pytest.raises(ValueError, match="top_k=7 > num_layers=6"):
        freeze.LayerFreeze(top_k=7).validate(SIX, {"targets": 8}, packed=True)
    method = freeze.LayerFreeze(top_k=None, layer_pattern="block_0")
    with pytest.raises(ValueError, match="matches none of layers_0..layers_5"):
        method.validate(SIX, {"targets": 8}, packed=False)
    params = kit.abstract_params(base.Method(), SIX)
    with pytest.raises(ValueError, match="top_k=9 > num_layers=6"):
        freeze.LayerFreeze(top_k=9).trainable_mask(params)
