"""Cached decoding == recomputing the full forward pass, for the decoder and every wrapper."""

import numpy as np
import pytest

from ft_scaling.eval import decoding
from ft_scaling.methods import lora, prompt
from ft_scaling.models.decoder import Decoder
from tests.eval.conftest import TINY, init_variables

MAX_LEN = 12


def _assert_cached_matches_reference(model, variables, tokens, lengths, eos_id=1):
    cached = decoding.greedy_decode(
        model, variables, tokens, lengths, max_decode_length=MAX_LEN, eos_id=eos_id
    )
    reference = decoding.reference_greedy_decode(
        model, variables, tokens, lengths, max_decode_length=MAX_LEN, eos_id=eos_id
    )
    np.testing.assert_array_equal(np.asarray(cached.tokens), np.asarray(reference.tokens))
    np.testing.assert_allclose(cached.scores, reference.scores, atol=1e-4)
    return cached


def test_cached_greedy_equals_full_forward(tiny_model, ragged_prompts):
    model, variables = tiny_model
    _, tokens, lengths = ragged_prompts
    out = _assert_cached_matches_reference(model, variables, tokens, lengths)
    assert out.tokens.shape == (4, MAX_LEN)
    assert len({tuple(row) for row in np.asarray(out.tokens).tolist()}) == 4  # not degenerate


def test_left_padded_rows_decode_as_alone(tiny_model, ragged_prompts):
    model, variables = tiny_model
    _, tokens, lengths = ragged_prompts
    batch = decoding.greedy_decode(model, variables, tokens, lengths, max_decode_length=MAX_LEN)
    for i in range(len(lengths)):
        # Batch of one, padded to the same width (one compile); the longest row has no padding.
        alone_tokens = tokens[i : i + 1]
        alone = decoding.greedy_decode(
            model, variables, alone_tokens, lengths[i : i + 1], max_decode_length=MAX_LEN
        )
        np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(batch.tokens[i]))
        np.testing.assert_allclose(alone.scores[0], batch.scores[i], atol=1e-4)


def test_eos_stops_each_row_and_pads_after(tiny_model, ragged_prompts):
    model, variables = tiny_model
    _, tokens, lengths = ragged_prompts
    free = decoding.greedy_decode(model, variables, tokens, lengths, max_decode_length=MAX_LEN)
    eos_id = int(np.asarray(free.tokens)[0, 3])  # row 0 emits it at step 3
    out = _assert_cached_matches_reference(model, variables, tokens, lengths, eos_id=eos_id)
    got, free = np.asarray(out.tokens), np.asarray(free.tokens)
    for row in range(4):
        hits = np.flatnonzero(free[row] == eos_id)
        stop = int(hits[0]) + 1 if hits.size else MAX_LEN
        np.testing.assert_array_equal(got[row, :stop], free[row, :stop])
        assert (got[row, stop:] == 0).all()
    assert (
        decoding.strip_after_eos(got, eos_id)[0]
        == free[0, : int(np.flatnonzero(free[0] == eos_id)[0])].tolist()
    )


def test_prompt_tuning_cached_equals_full_forward(ragged_prompts):
    model = prompt.PromptTuning(prompt_length=5, init_method="uniform").wrap(Decoder(TINY))
    variables = init_variables(model, seed=3)
    _, tokens, lengths = ragged_prompts
    plain = decoding.greedy_decode(
        Decoder(TINY), variables, tokens, lengths, max_decode_length=MAX_LEN
    )
    out = _assert_cached_matches_reference(model, variables, tokens, lengths)
    assert not np.array_equal(np.asarray(out.tokens), np.asarray(plain.tokens))  # prompt matters


def test_lora_cached_equals_full_forward_merged_or_not(ragged_prompts):
    method = lora.LoRA(rank=2)
    model = method.wrap(Decoder(TINY))
    variables = init_variables(model, seed=4)
    _, tokens, lengths = ragged_prompts
    unmerged = _assert_cached_matches_reference(model, variables, tokens, lengths)
    merged_variables = {"params": method.merge(variables["params"])}
    merged = _assert_cached_matches_reference(Decoder(TINY), merged_variables, tokens, lengths)
    np.testing.assert_array_equal(np.asarray(merged.tokens), np.asarray(unmerged.tokens))
    plain = decoding.greedy_decode(
        Decoder(TINY),
        init_variables(Decoder(TINY), seed=4),
        tokens,
        lengths,
        max_decode_length=MAX_LEN,
    )
    assert not np.array_equal(np.asarray(plain.tokens), np.asarray(unmerged.tokens))


def test_bad_inputs_name_the_problem(tiny_model, ragged_prompts):
    model, variables = tiny_model
    _, tokens, lengths = ragged_prompts
    with pytest.raises(ValueError, match="max_decode_length"):
        decoding.greedy_decode(model, variables, tokens, lengths, max_decode_length=0)
    with pytest.raises(ValueError, match="empty batch"):
        decoding.left_pad([])
    with pytest.raises(ValueError, match="empty prompt"):
        decoding.left_pad([[3, 4], []])
