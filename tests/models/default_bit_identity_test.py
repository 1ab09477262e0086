"""Default ModelConfig computes bit for bit what it did before the architecture options.

The digests were computed with the decoder of commit 943fa3e (before ModelConfig grew the
options for public checkpoints): sha256 over the param tree, the logits of a padded batch, their
gradient and a cached prefill, for the paper's default config, an untied bf16 remat variant,
LoRA on multi-head attention and prompt tuning. Any numerical change to the defaults fails here.
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
    return _digest(params), _digest(logits), _digest(grads), _digest(step)


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
BEFORE = {
    "default": ("53bef954484ac927", "43697b306dc4d44e", "9af4f8b48f43cec9", "c67899f09c2d93f9"),
    "untied_bf16_remat": (
        "36c3927641fb6b3b",
        "fb0729ecc1a1bf94",
        "76442d68f8da53e4",
        "86c599f4fff68c5e",
    ),
    "mha_lora": ("8fb8c8f97992eb38", "2c20bd5c1dc86597", "f4cbc4023e590f6e", "b8ef760bcf3ea087"),
    "prompt": ("38a108e68b08de3a", "18e2a5fcc732c6b3", "6def186585f25752", "29d2e198c581cef9"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_numerics_unchanged(name):
    config, method = CASES[name]
    assert _run(config, method) == BEFORE[name]
