"""Prompt tuning: the param tree, both inits, after_restore, padding and cached decoding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.methods import base, prompt
from ft_scaling.models import axes, configs, decoder

TINY = configs.ModelConfig(
    vocab_size=97, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, embed_dim=32, mlp_dim=64
)
PROMPT_LENGTH = 5


def _tokens(batch=2, length=10):
    return jax.random.randint(jax.random.PRNGKey(7), (batch, length), 3, TINY.vocab_size)


def _rows_of(matrix, rows):
    """Index of each row of `rows` in `matrix` (-1 where absent)."""
    hits = np.all(np.isclose(rows[:, None, :], matrix[None], atol=1e-6), axis=-1)
    return np.where(hits.any(-1), hits.argmax(-1), -1)


def test_tree_is_base_tree_plus_one_prompt_leaf(kit):
    method = prompt.PromptTuning(prompt_length=PROMPT_LENGTH)
    model, params = kit.init_params(method, TINY)
    plain = traverse_util.flatten_dict(kit.init_params(base.Method(), TINY)[1])
    flat = traverse_util.flatten_dict(params)
    assert set(flat) - set(plain) == {("prompt",)} and set(plain) <= set(flat)
    assert all(flat[p].shape == plain[p].shape for p in plain)
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _tokens()))["params"]
    assert boxed["prompt"].names == (axes.PROMPT, axes.EMBED)
    assert boxed["prompt"].value.shape == (PROMPT_LENGTH, TINY.embed_dim)
    assert [p for p in flat if method.is_method_param(p)] == [("prompt",)]


def test_vocab_init_copies_scaled_token_embeddings(kit):
    method = prompt.PromptTuning(prompt_length=8, vocab_sample_range=(3, 50))
    _, params = kit.init_params(method, TINY)
    scaled = np.asarray(params["embedding"]) * np.sqrt(TINY.embed_dim)
    ids = _rows_of(scaled, np.asarray(params["prompt"]))
    assert ((ids >= 3) & (ids < 50)).all()


def test_uniform_init_range(kit):
    method = prompt.PromptTuning(prompt_length=50, init_method="uniform", uniform_scale=0.25)
    _, params = kit.init_params(method, TINY)
    values = np.asarray(params["prompt"])
    assert np.abs(values).max() <= 0.25 and values.std() > 0.1
    assert method.after_restore(params, jax.random.PRNGKey(1)) is params


def test_after_restore_resamples_from_the_restored_embedding(kit):
    method = prompt.PromptTuning(prompt_length=6)
    _, params = kit.init_params(method, TINY)
    pretrained = jax.random.normal(jax.random.PRNGKey(9), params["embedding"].shape)
    restored = {**params, "embedding": pretrained}  # what INITIAL_CHECKPOINT_PATH brings
    out = method.after_restore(restored, jax.random.PRNGKey(3))
    ids = _rows_of(np.asarray(pretrained) * np.sqrt(TINY.embed_dim), np.asarray(out["prompt"]))
    assert (ids >= 3).all()
    again = method.after_restore(restored, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(out["prompt"], again["prompt"])
    assert out["prompt"].dtype == params["prompt"].dtype
    assert all(out[k] is restored[k] for k in restored if k != "prompt")


def test_prompt_of_token_embeddings_equals_prepending_the_tokens(kit):
    method = prompt.PromptTuning(prompt_length=3)
    model, params = kit.init_params(method, TINY)
    tokens = _tokens()
    head = tokens[0, :3]
    params = {**params, "prompt": model.apply({"params": params}, head[None], method="embed")[0]}
    with_prompt = jax.jit(model.apply)({"params": params}, tokens[:, 3:])
    plain = jax.jit(decoder.Decoder(TINY).apply)(
        {"params": params}, jnp.concatenate([jnp.broadcast_to(head, (2, 3)), tokens[:, 3:]], axis=1)
    )
    np.testing.assert_allclose(with_prompt, plain[:, 3:], atol=1e-5)


def test_left_and_right_padding_match_unpadded(kit):
    model, params = kit.init_params(prompt.PromptTuning(prompt_length=PROMPT_LENGTH), TINY)
    tokens = _tokens(batch=1, length=6)
    apply = jax.jit(model.apply)
    alone = apply({"params": params}, tokens)
    pad = jnp.zeros((1, 3), jnp.int32)
    real, none = jnp.ones((1, 6), jnp.int32), jnp.zeros((1, 3), jnp.int32)
    positions = jnp.arange(6)[None]
    right = apply(
        {"params": params},
        jnp.concatenate([tokens, pad], 1),
        jnp.concatenate([real, none], 1),
        jnp.concatenate([positions, jnp.zeros((1, 3), jnp.int32)], 1),
    )
    left = apply(
        {"params": params},
        jnp.concatenate([pad, tokens], 1),
        jnp.concatenate([none, real], 1),
        jnp.concatenate([jnp.zeros((1, 3), jnp.int32), positions], 1),
    )
    np.testing.assert_allclose(right[:, :6], alone, atol=1e-5)
    np.testing.assert_allclose(left[:, 3:], alone, atol=1e-5)


def test_cached_decoding_matches_full_forward(kit):
    model, params = kit.init_params(prompt.PromptTuning(prompt_length=PROMPT_LENGTH), TINY)
    tokens = _tokens(length=10)
    full = jax.jit(model.apply)({"params": params}, tokens)
    cache = jax.jit(lambda t: model.init(jax.random.PRNGKey(0), t, decode=True)["cache"])(tokens)
    cached_key = cache["layers_0"]["attention"]["cached_key"]
    assert nn.meta.unbox(cached_key).shape[2] == PROMPT_LENGTH + 10  # prompt + max length
    prefill = jax.jit(lambda v, t: model.apply(v, t, decode=True, mutable=["cache"]))
    out, state = prefill({"params": params, "cache": cache}, tokens[:, :6])
    step = jax.jit(
        lambda v, t, pos: model.apply(
            v, t, positions=pos, decode=True, prefill=False, mutable=["cache"]
        )
    )
    steps = [out]
    for t in range(6, 10):  # positions in token coordinates, as for the plain decoder
        out, state = step({"params": params, **state}, tokens[:, t : t + 1], jnp.full((2, 1), t))
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="need `positions`"):
        model.apply(
            {"params": params, **state},
            tokens[:, :1],
            decode=True,
            prefill=False,
            mutable=["cache"],
        )


def test_bad_settings_are_refused_before_training():
    method = prompt.PromptTuning(prompt_length=100)
    method.validate(TINY, {"inputs": 64, "targets": 64}, packed=False)
    with pytest.raises(ValueError, match="unpacked examples"):
        method.validate(TINY, {"inputs": 64, "targets": 64}, packed=True)
    with pytest.raises(ValueError, match="prompt_length=100 must be shorter.*total 80"):
        method.validate(TINY, {"inputs": 40, "targets": 40}, packed=False)
    # PAPER.md §2-3: |P| = 600 (held out) with 256/256-token features, when asked for.
    long_prompt = prompt.PromptTuning(prompt_length=600, allow_longer_than_sequence=True)
    long_prompt.validate(TINY, {"inputs": 256, "targets": 256}, packed=False)
    for length in (0, -3):
        with pytest.raises(ValueError, match=f"prompt_length must be positive, got {length}"):
            prompt.PromptTuning(prompt_length=length)
    with pytest.raises(ValueError, match="init_method='random'"):
        prompt.PromptTuning(init_method="random")
