"""Default ModelConfig computes what it did before the architecture options.

For the paper's default config, an untied bf16 remat variant, LoRA on multi-head attention and
prompt tuning: the param tree's sha256 (initialisation is integer RNG arithmetic, so it is bit
for bit the same on every CPU) and fixed random projections of the logits of a padded batch,
their gradient and a cached prefill. Those were bit for bit equal to the decoder of commit
943fa3e (before ModelConfig grew the options for public checkpoints) on the CI machine of that
session; float results differ in their last bits between CPU instruction sets (the digests of
the logits differed on an AMD EPYC host), so they are compared at a float tolerance here. Any
real numerical change to the defaults moves the projections far beyond it.
"""

import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.methods import lora, prompt
from ft_scaling.models import configs, decoder


@pytest.fixture(scope="module", autouse=True)
def _optimised_compiles():
    """The digests are of XLA's optimised programs; tests/conftest.py turns most optimisations
    off for the rest of the suite. The flag is no part of JAX's cache key: clear the caches."""
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    jax.clear_caches()
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
        jax.clear_caches()


def _digest(tree):
    """First 16 hex digits of sha256 over the sorted (path, bytes) of a tree."""
    h = hashlib.sha256()
    flat = traverse_util.flatten_dict(tree) if isinstance(tree, dict) else {("x",): tree}
    for k in sorted(flat):
        h.update("/".join(k).encode())
        h.update(np.asarray(flat[k]).tobytes())
    return h.hexdigest()[:16]


def _run(cfg, wrap=None):
    model = decoder.Decoder(cfg)
    if wrap is not None:
        model = wrap.wrap(model)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, cfg.vocab_size)
    seg = jnp.array([[1] * 12, [0] * 3 + [1] * 9])
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens))["params"]
    if wrap is not None and hasattr(wrap, "rank"):
        params = jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.01 if p[-1].key == "lora_b" else x, params
        )
    logits = model.apply({"params": params}, tokens, seg)
    grads = jax.grad(lambda p: model.apply({"params": p}, tokens, seg).sum())(params)
    cache = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens, decode=True))["cache"]
    cache = jax.tree.map(jnp.zeros_like, cache)
    step, _ = model.apply(
        {"params": params, "cache": cache},
        tokens[:, :5],
        seg[:, :5],
        decode=True,
        mutable=["cache"],
    )
    return _digest(params), _projections(logits), _projections(grads), _projections(step)


def _projections(tree) -> tuple[float, ...]:
    """Three fixed random projections of all the tree's values (float64)."""
    flat = traverse_util.flatten_dict(tree) if isinstance(tree, dict) else {("x",): tree}
    x = np.concatenate([np.asarray(flat[k], np.float64).ravel() for k in sorted(flat)])
    w = np.random.default_rng(0).standard_normal((3, x.size))
    return tuple(float(v) for v in w @ x)


CASES = {
    "default": (configs.ModelConfig(), None),
    "untied_bf16_remat": (
        configs.ModelConfig(
            tie_embeddings=False, dtype="bfloat16", remat=True, remat_policy="dots"
        ),
        None,
    ),
    "mha_lora": (configs.ModelConfig(vocab_size=300, num_kv_heads=2), lora.LoRA(rank=2)),
    "prompt": (configs.ModelConfig(vocab_size=300), prompt.PromptTuning(prompt_length=3)),
}
# Computed at c49d487, whose logits/gradient/prefill digests equalled 943fa3e's bit for bit.
BEFORE = {
    "default": (
        "53bef954484ac927",
        (108.58945868282683, 644.7131337659898, 245.20595440635452),
        (9248.81970698997, 21805.611212542746, -6940.829391272132),
        (-50.45491578943564, 78.99758173449915, 160.78311735335518),
    ),
    "mha_lora": (
        "8fb8c8f97992eb38",
        (122.19331764306733, 19.34251557111396, -98.19419356239386),
        (2124.2864143745946, -2628.2874770627627, -4802.187872824491),
        (-76.63011066015844, 38.139200742019774, -11.348774677320801),
    ),
    "prompt": (
        "38a108e68b08de3a",
        (110.69023675620176, -76.25514670690892, 53.045904416101436),
        (1666.2366394376597, 2475.2836616069126, 3201.6102896498774),
        (-16.022782391280533, -43.86271581059775, -39.54698984015958),
    ),
    "untied_bf16_remat": (
        "36c3927641fb6b3b",
        (601.6219552342095, -55.93679241868001, -152.66632180935335),
        (14950.81112573092, 21842.040030990564, 2552.297438885305),
        (-102.38795273853992, -369.0975877052314, 472.0924472175151),
    ),
}
# bf16 compute rounds to 8 mantissa bits: a different CPU's last-bit difference can flip one.
RTOL = {"untied_bf16_remat": 1e-3}


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_numerics_unchanged(name):
    config, method = CASES[name]
    params, *outputs = _run(config, method)
    expected_params, *expected = BEFORE[name]
    assert params == expected_params
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL.get(name, 1e-5))
