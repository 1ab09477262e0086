"""LoRA: exact at init, merge fidelity, shapes and logical axes, target patterns, bad input."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.methods import base, lora
from ft_scaling.models import axes, configs, decoder

TINY = configs.ModelConfig(
    vocab_size=97, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, embed_dim=32, mlp_dim=64
)


def _tokens(config, batch=2, length=12):
    return jax.random.randint(jax.random.PRNGKey(7), (batch, length), 0, config.vocab_size)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fresh_lora_equals_base_model_exactly(dtype, kit):
    config = dataclasses.replace(TINY, dtype=dtype)
    method = lora.LoRA(rank=4)
    model, params = kit.init_params(method, config)
    base_model = decoder.Decoder(config)
    base_params = method.merge(params)  # fresh B = 0: merging leaves the kernels unchanged
    tokens = _tokens(config)
    adapted = jax.jit(model.apply)({"params": params}, tokens)
    plain = jax.jit(base_model.apply)({"params": base_params}, tokens)
    np.testing.assert_array_equal(np.asarray(adapted), np.asarray(plain))
    # The base paths are exactly the plain decoder's: a base checkpoint restores unchanged.
    plain_paths = set(traverse_util.flatten_dict(kit.abstract_params(base.Method(), config)))
    lora_paths = set(traverse_util.flatten_dict(params))
    assert plain_paths == {p for p in lora_paths if not method.is_method_param(p)}


def test_merged_equals_unmerged_after_training(kit, trained):
    run = trained("lora")  # LoRA(rank=4, alpha=8) after 20 AdamW steps on the tiny task
    method, params = lora.LoRA(rank=4, alpha=8.0), run["final"]
    flat = traverse_util.flatten_dict(params)
    assert min(np.abs(x).max() for p, x in flat.items() if p[-1] == lora.LORA_B) > 1e-3
    tokens = kit.task_batch(TINY)["decoder_input_tokens"]
    apply = jax.jit(run["model"].apply)
    unmerged = np.asarray(apply({"params": params}, tokens))
    merged = np.asarray(
        jax.jit(decoder.Decoder(TINY).apply)({"params": method.merge(params)}, tokens)
    )
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)
    before = np.asarray(apply({"params": run["initial"]}, tokens))
    assert np.abs(unmerged - before).max() > 1e-2  # the update is not negligible


def test_factor_shapes_and_logical_axes():
    method = lora.LoRA(rank=3)
    model = method.wrap(decoder.Decoder(TINY))
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _tokens(TINY)))["params"]
    attn = boxed["layers_0"]["attention"]
    assert attn["query"]["lora_a"].value.shape == (32, 3)
    assert attn["query"]["lora_a"].names == (axes.EMBED, axes.LORA_RANK)
    assert attn["query"]["lora_b"].value.shape == (3, 4, 8)
    assert attn["query"]["lora_b"].names == (axes.LORA_RANK, axes.HEADS, axes.KV)
    assert attn["key"]["lora_b"].names == (axes.LORA_RANK, axes.KV_HEADS, axes.KV)
    assert attn["out"]["lora_a"].names == (axes.HEADS, axes.KV, axes.LORA_RANK)
    mlp = boxed["layers_1"]["mlp"]
    assert mlp["wo"]["lora_a"].names == (axes.MLP, axes.LORA_RANK)
    assert mlp["wi_0"]["lora_b"].names == (axes.LORA_RANK, axes.MLP)


def test_targets_select_modules_and_every_unmatched_pattern_is_an_error(kit):
    method = lora.LoRA(rank=2, targets=("attention/query$", "layers_1/mlp/wo"))
    params = kit.abstract_params(method, TINY)
    adapted = sorted(
        "/".join(p[:-1]) for p in traverse_util.flatten_dict(params) if p[-1] == lora.LORA_A
    )
    assert adapted == ["layers_0/attention/query", "layers_1/attention/query", "layers_1/mlp/wo"]
    bad = lora.LoRA(targets=("attention/query", "q_proj", "mlp/w9"))
    with pytest.raises(ValueError, match=r"\['q_proj', 'mlp/w9'\] match no module") as info:
        bad.wrap(decoder.Decoder(TINY))
    assert "layers_1/mlp/wi_1" in str(info.value)  # the valid paths are listed
    with pytest.raises(ValueError, match="q_proj"):
        bad.validate(TINY, {"inputs": 8, "targets": 8}, packed=True)


@pytest.mark.parametrize("rank", [0, -4])
def test_rank_must_be_positive(rank):
    with pytest.raises(ValueError, match=f"LoRA.rank must be positive, got {rank}"):
        lora.LoRA(rank=rank)


def test_bad_patterns_and_dropout_are_refused():
    with pytest.raises(ValueError, match="bad pattern"):
        lora.LoRA(targets=("query(",))
    with pytest.raises(ValueError, match="list of patterns"):
        lora.LoRA(targets="attention/query")
    with pytest.raises(ValueError, match="dropout_rate"):
        lora.LoRA(dropout_rate=1.0)


def test_dropout_only_with_a_dropout_rng(kit):
    method = lora.LoRA(rank=4, dropout_rate=0.5)
    model, params = kit.init_params(method, TINY)
    params = jax.tree_util.tree_map_with_path(  # non-zero B so the branch contributes
        lambda p, x: jnp.ones_like(x) * 0.1 if p[-1].key == lora.LORA_B else x, params
    )
    tokens = _tokens(TINY)
    apply = jax.jit(model.apply, static_argnames="deterministic")
    first = apply({"params": params}, tokens)
    np.testing.assert_array_equal(first, apply({"params": params}, tokens))
    rngs = {"dropout": jax.random.PRNGKey(1)}
    dropped = apply({"params": params}, tokens, deterministic=False, rngs=rngs)
    assert np.abs(np.asarray(dropped) - np.asarray(first)).max() > 1e-3


def test_remat_and_untied_models_keep_the_same_module_paths(kit):
    config = dataclasses.replace(TINY, remat=True, tie_embeddings=False)
    paths = lora.valid_module_paths(decoder.Decoder(config))
    assert len(paths) == 7 * config.num_layers and "logits_projection" not in paths
    model, params = kit.init_params(lora.LoRA(), config)
    merged = lora.LoRA().merge(params)
    plain = jax.jit(decoder.Decoder(config).apply)({"params": merged}, _tokens(config))
    np.testing.assert_array_equal(jax.jit(model.apply)({"params": params}, _tokens(config)), plain)


def test_merge_keeps_dtype_and_uses_the_scale(kit):
    method = lora.LoRA(rank=2, alpha=6.0, targets=("layers_0/mlp/wo",))
    _, params = kit.init_params(method, TINY)
    wo = params["layers_0"]["mlp"]["wo"]
    wo = {**wo, "lora_b": jnp.full_like(wo["lora_b"], 0.5)}
    params["layers_0"]["mlp"]["wo"] = wo
    merged = method.merge(params)["layers_0"]["mlp"]["wo"]
    assert set(merged) == {"kernel"}
    expected = wo["kernel"] + 3.0 * wo["lora_a"] @ wo["lora_b"]
    np.testing.assert_allclose(merged["kernel"], expected, atol=1e-6)
    assert merged["kernel"].dtype == jnp.float32


def test_boxed_params_of_the_wrapped_model_are_partitioned():
    model = lora.LoRA().wrap(decoder.Decoder(TINY))
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _tokens(TINY)))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
