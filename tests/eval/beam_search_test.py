"""Beam search: beam 1 is greedy; wider beams never score below greedy on a tiny model."""

import numpy as np
import pytest

from ft_scaling.eval import beam_search, decoding

MAX_LEN = 10


@pytest.mark.parametrize("eos_id", [1, 74])
def test_beam_one_equals_greedy(tiny_model, ragged_prompts, eos_id):
    model, variables = tiny_model
    _, tokens, lengths = ragged_prompts
    greedy = decoding.greedy_decode(
        model, variables, tokens, lengths, max_decode_length=MAX_LEN, eos_id=eos_id
    )
    beam = beam_search.beam_search(
        model,
        variables,
        tokens,
        lengths,
        max_decode_length=MAX_LEN,
        beam_size=1,
        alpha=0.0,
        eos_id=eos_id,
    )
    np.testing.assert_array_equal(np.asarray(beam.tokens[:, 0]), np.asarray(greedy.tokens))
    np.testing.assert_allclose(beam.scores[:, 0], greedy.scores, atol=1e-4)


@pytest.mark.parametrize("eos_id", [1, 74])
def test_wider_beam_scores_at_least_greedy(tiny_model, ragged_prompts, eos_id):
    model, variables = tiny_model
    _, tokens, lengths = ragged_prompts
    greedy = decoding.greedy_decode(
        model, variables, tokens, lengths, max_decode_length=MAX_LEN, eos_id=eos_id
    )
    beam = beam_search.beam_search(
        model,
        variables,
        tokens,
        lengths,
        max_decode_length=MAX_LEN,
        beam_size=4,
        alpha=0.0,
        eos_id=eos_id,
    )
    best = np.asarray(beam.scores[:, 0])
    assert (best >= np.asarray(greedy.scores) - 1e-4).all(), (best, greedy.scores)
    assert (np.diff(np.asarray(beam.scores), axis=1) <= 1e-6).all()  # sorted best first
    assert (best > np.asarray(greedy.scores) + 1e-3).any()  # the search found something better


def test_beam_scores_are_log_probs_of_their_tokens(tiny_model, ragged_prompts):
    """Re-scores the best beams with one full forward pass: score == sum log p / penalty."""
    model, variables = tiny_model
    rows, tokens, lengths = ragged_prompts
    alpha, eos_id = 0.6, 74
    beam = beam_search.beam_search(
        model,
        variables,
        tokens,
        lengths,
        max_decode_length=MAX_LEN,
        beam_size=3,
        alpha=alpha,
        eos_id=eos_id,
    )
    scored = []
    for i in range(len(rows)):
        output = decoding.strip_after_eos(np.asarray(beam.tokens[i, :1]), eos_id)[0]
        scored.append(output + [eos_id] * (len(output) < MAX_LEN))
    # One forward pass over the left-padded [prompt + output] rows.
    sequences, seq_lengths = decoding.left_pad([r + s for r, s in zip(rows, scored, strict=True)])
    segments, positions = decoding.prompt_layout(seq_lengths, sequences.shape[1])
    logits = np.asarray(model.apply(variables, sequences, segments, positions), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for i, output in enumerate(scored):
        start = sequences.shape[1] - len(output)  # column of the first output token
        total = sum(logp[i, start - 1 + j, tok] for j, tok in enumerate(output))
        penalty = ((5.0 + len(output)) / 6.0) ** alpha
        np.testing.assert_allclose(beam.scores[i, 0], total / penalty, rtol=1e-4)


def test_beam_size_larger_than_vocab_is_refused(tiny_model, ragged_prompts):
    model, variables = tiny_model
    _, tokens, lengths = ragged_prompts
    with pytest.raises(ValueError, match="beam_size must be in"):
        beam_search.beam_search(
            model, variables, tokens, lengths, max_decode_length=4, beam_size=98
        )
    with pytest.raises(ValueError, match="max_decode_length"):
        beam_search.beam_search(
            model, variables, tokens, lengths, max_decode_length=-1, beam_size=2
        )
