"""The decoder: parameter counts from shapes, causality, the KV cache, logical axes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.config import flags
from ft_scaling.models import configs, decoder, info

# Zhang et al. 2024, App. Table 3: (layers, heads, head dim, FFN dim, model dim).
PAPER_TABLE_3 = {
    "1b": (16, 8, 256, 8192, 2048),
    "2b": (20, 10, 256, 10240, 2560),
    "4b": (24, 12, 256, 12288, 3072),
    "8b": (32, 16, 256, 16384, 4096),
    "16b": (40, 20, 256, 20480, 5120),
}
TINY = [f"tiny_{i}" for i in range(1, 7)]


def _config_from_gin(name: str) -> configs.ModelConfig:
    flags.parse_gin([f"t5x_configs/models/{name}.gin"], [])
    return configs.ModelConfig()


def _hand_count(layers, heads, kv_heads, head_dim, ffn, d, vocab, tied=True):
    attention = d * head_dim * heads * 2 + d * head_dim * kv_heads * 2
    per_layer = attention + 3 * d * ffn + 2 * d
    return vocab * d * (1 if tied else 2) + layers * per_layer + d


@pytest.mark.parametrize("name", list(PAPER_TABLE_3))
def test_paper_sizes_match_table_3_and_closed_form(name):
    cfg = _config_from_gin(name)
    layers, heads, head_dim, ffn, d = PAPER_TABLE_3[name]
    shapes = (cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.embed_dim)
    assert shapes == PAPER_TABLE_3[name]
    assert cfg.num_kv_heads == 1  # multi-query attention
    assert heads * head_dim == d
    expected = _hand_count(layers, heads, 1, head_dim, ffn, d, cfg.vocab_size)
    assert info.abstract_param_count(cfg) == expected == configs.param_count(cfg)


@pytest.mark.parametrize("name", ["tiny_0", *TINY])
def test_tiny_sizes_closed_form_and_proportions(name):
    cfg = _config_from_gin(name)
    assert cfg.mlp_dim == 4 * cfg.embed_dim and cfg.num_heads * cfg.head_dim == cfg.embed_dim
    expected = _hand_count(
        cfg.num_layers, cfg.num_heads, 1, cfg.head_dim, cfg.mlp_dim, cfg.embed_dim, cfg.vocab_size
    )
    assert info.abstract_param_count(cfg) == expected


def test_tiny_family_spans_half_to_twenty_million():
    counts = [configs.param_count(_config_from_gin(name)) for name in TINY]
    assert counts == sorted(counts)
    assert 0.3e6 <= counts[0] <= 0.6e6 and counts[-1] >= 20e6


def test_untied_count():
    cfg = configs.ModelConfig(vocab_size=100, tie_embeddings=False)
    assert info.abstract_param_count(cfg) == _hand_count(2, 2, 1, 32, 256, 64, 100, tied=False)


def _small():
    cfg = configs.ModelConfig(
        vocab_size=97,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        embed_dim=32,
        mlp_dim=64,
    )
    model = decoder.Decoder(cfg)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, 97)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens))["params"]
    return model, params, tokens


def test_causality_future_tokens_do_not_change_past_logits():
    model, params, tokens = _small()
    logits = model.apply({"params": params}, tokens)
    for t in (0, 4, 8):
        changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 5) % 97)
        other = model.apply({"params": params}, changed)
        np.testing.assert_array_equal(logits[:, : t + 1], other[:, : t + 1])
        assert np.abs(logits[:, t + 1 :] - other[:, t + 1 :]).max() > 1e-3


def test_segments_do_not_attend_across():
    model, params, tokens = _small()
    segments = jnp.array([[1] * 4 + [2] * 6] * 2)
    positions = jnp.array([list(range(4)) + list(range(6))] * 2)
    packed = model.apply({"params": params}, tokens, segments, positions)
    alone = model.apply({"params": params}, tokens[:, 4:])
    np.testing.assert_allclose(packed[:, 4:], alone, atol=1e-5)


def test_kv_cache_matches_full_forward():
    model, params, tokens = _small()
    full = model.apply({"params": params}, tokens)
    cache = model.init(jax.random.PRNGKey(0), tokens, decode=True)["cache"]
    out, state = model.apply(
        {"params": params, "cache": cache}, tokens[:, :6], decode=True, mutable=["cache"]
    )
    steps = [out]
    for t in range(6, 10):
        pos = jnp.full((2, 1), t)
        out, state = model.apply(
            {"params": params, **state},
            tokens[:, t : t + 1],
            positions=pos,
            decode=True,
            mutable=["cache"],
        )
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)


def test_prefix_embeddings_shift_positions_and_slice_logits():
    model, params, tokens = _small()
    prefix = jax.random.normal(jax.random.PRNGKey(3), (3, 32))
    logits = model.apply({"params": params}, tokens, prefix_embeddings=prefix)
    assert logits.shape == (2, 10, 97)
    # A prefix equal to the embeddings of real tokens gives the same logits as those tokens.
    head = tokens[:, :3]
    emb = model.apply({"params": params}, head, method=decoder.Decoder.embed)
    full = model.apply({"params": params}, tokens)
    shifted = model.apply({"params": params}, tokens[:, 3:], prefix_embeddings=emb)
    np.testing.assert_allclose(shifted, full[:, 3:], atol=1e-5)


def test_every_param_has_logical_axes():
    model, _, tokens = _small()
    boxed = jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t), tokens)["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim and None not in leaf.names


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="num_heads=3 must be a multiple of num_kv_heads=2"):
        configs.ModelConfig(num_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="dtype"):
        configs.ModelConfig(dtype="float16")
