"""Every ModelConfig architecture option: closed-form counts, logical axes on every param, the
KV cache equal to the full forward pass, remat equal to no remat, and LoRA / prompt / BitFit.

Numerical agreement with the public families is tested against transformers in tests/models/hf/.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.eval import decoding
from ft_scaling.methods import base, bitfit, lora, prompt
from ft_scaling.models import configs, decoder, info

SMALL = dict(vocab_size=97, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, embed_dim=32)
VARIANTS = {
    "llama3": dict(embed_scale="none", norm_epsilon=1e-5, rope_scaling=("llama3", 8.0, 1, 4, 8)),
    "qwen2": dict(embed_scale="none", qkv_bias=True, tie_embeddings=False),
    "qwen3": dict(embed_scale="none", qk_norm="head", head_dim=16),
    "olmo2": dict(embed_scale="none", qk_norm="projection", norm_placement="post"),
    "gemma": dict(norm="rms_plus_one", mlp="geglu_tanh", num_kv_heads=1),
    "neox": dict(
        embed_scale="none",
        norm="layernorm",
        norm_placement="parallel",
        rotary_fraction=0.25,
        qkv_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
        mlp="gelu",
        tie_embeddings=False,
    ),
    "mistral": dict(embed_scale="none", sliding_window=3),
}


def _config(name, **overrides):
    return configs.ModelConfig(**{**SMALL, "mlp_dim": 64, **VARIANTS[name], **overrides})


def _init(model, length=10):
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, length), 0, 97)
    boxed = model.init(jax.random.PRNGKey(0), tokens)["params"]
    params = nn.meta.unbox(boxed)
    # Non-trivial norms and biases, so that a misplaced one shows in the logits.
    params = jax.tree.map(
        lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(7), x.shape), params
    )
    return boxed, params, tokens


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_counts_and_logical_axes(name):
    config = _config(name)
    assert info.abstract_param_count(config) == configs.param_count(config)
    boxed, _, _ = _init(decoder.Decoder(config))
    for path, leaf in traverse_util.flatten_dict(boxed).items():
        assert isinstance(leaf, nn.Partitioned), path
        assert len(leaf.names) == leaf.value.ndim and all(leaf.names), path


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_greedy_equals_full_forward_and_remat(name):
    config = _config(name)
    model = decoder.Decoder(config)
    _, params, tokens = _init(model)
    prompts, lengths = decoding.left_pad([[5, 6, 7, 8, 9], [3, 4]])
    args = dict(max_decode_length=8, eos_id=-1)
    cached = decoding.greedy_decode(model, {"params": params}, prompts, lengths, **args)
    full = decoding.reference_greedy_decode(model, {"params": params}, prompts, lengths, **args)
    np.testing.assert_array_equal(cached.tokens, full.tokens)
    np.testing.assert_allclose(cached.scores, full.scores, rtol=1e-4)
    remat = decoder.Decoder(_config(name, remat=True, remat_policy="dots"))
    loss = lambda m: lambda p: m.apply({"params": p}, tokens).sum()
    for got, want in zip(
        jax.tree.leaves(jax.grad(loss(remat))(params)),
        jax.tree.leaves(jax.grad(loss(model))(params)),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["neox", "olmo2", "qwen2"])
def test_lora_prompt_bitfit(name):
    config = _config(name)
    plain = decoder.Decoder(config)
    _, params, tokens = _init(plain)
    want = plain.apply({"params": params}, tokens)
    method = lora.LoRA(rank=2)
    wrapped = method.wrap(plain)
    lora_params = nn.meta.unbox(wrapped.init(jax.random.PRNGKey(0), tokens))["params"]
    merged = traverse_util.flatten_dict(lora_params)
    merged.update(traverse_util.flatten_dict(params))  # base weights, fresh B = 0 factors
    lora_params = traverse_util.unflatten_dict(merged)
    np.testing.assert_allclose(wrapped.apply({"params": lora_params}, tokens), want, atol=1e-5)
    targeted = {p[:-1] for p in traverse_util.flatten_dict(lora_params) if p[-1] == "lora_a"}
    if config.mlp == "gelu":
        assert ("layers_0", "mlp", "wi") in targeted  # the ungated MLP's input projection too
    assert len(targeted) == config.num_layers * (4 + (2 if config.mlp == "gelu" else 3))

    mask = traverse_util.flatten_dict(bitfit.BitFit().trainable_mask(params))
    trained = {p for p, m in mask.items() if m}
    biases = {p for p in trained if p[-1] == "bias"}
    assert bool(biases) == (config.qkv_bias or config.norm == "layernorm")
    assert all(p[-1] in ("bias", "scale") for p in trained)
    assert base.trainable_param_count(bitfit.BitFit(), params) == sum(
        int(np.prod(leaf.shape))
        for p, leaf in traverse_util.flatten_dict(params).items()
        if p in trained
    )

    tuning = prompt.PromptTuning(prompt_length=3)
    prompted = tuning.wrap(plain)
    prompt_params = nn.meta.unbox(prompted.init(jax.random.PRNGKey(0), tokens))["params"]
    restored = tuning.after_restore(
        {**params, "prompt": prompt_params["prompt"]}, jax.random.PRNGKey(3)
    )
    # Unscaled embeddings (embed_scale 'none'): the vocab init copies rows as they are fed.
    rows = np.asarray(params["embedding"])
    prompt_rows = np.asarray(restored["prompt"])
    assert all(np.isclose(rows, row, atol=1e-6).all(-1).any() for row in prompt_rows)
    logits = prompted.apply({"params": restored}, tokens)
    assert logits.shape == want.shape and jnp.isfinite(logits).all()
