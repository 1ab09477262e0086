"""Perplexity == exp(mean target-token NLL), computed independently in numpy."""

import math

import numpy as np
import pytest

from ft_scaling.eval import perplexity

LENGTH = 12


def _batch(rows: int, seed: int):
    """Prefix-LM-like features: tokens, next-token targets, weights on a random target tail."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 97, size=(rows, LENGTH + 1)).astype(np.int32)
    starts = rng.integers(2, LENGTH - 2, size=rows)
    weights = (np.arange(LENGTH)[None, :] >= starts[:, None]).astype(np.float32)
    return {
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": weights,
    }


def _numpy_nll(model, variables, batch):
    logits = np.asarray(model.apply(variables, batch["decoder_input_tokens"]), np.float64)
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = batch["decoder_target_tokens"]
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    weights = batch["decoder_loss_weights"]
    return float((nll * weights).sum()), float(weights.sum())


def test_perplexity_matches_numpy_over_every_example(tiny_model):
    model, variables = tiny_model
    batches = [_batch(4, 0), _batch(4, 1), _batch(3, 2)]  # last batch short: padded
    result = perplexity.evaluate(model, variables, batches, batch_size=4)
    sums = [_numpy_nll(model, variables, b) for b in batches]
    nll, tokens = sum(s[0] for s in sums), sum(s[1] for s in sums)
    assert result.target_tokens == tokens
    assert result.examples == 11
    np.testing.assert_allclose(result.loss, nll / tokens, rtol=1e-5)
    np.testing.assert_allclose(result.perplexity, math.exp(nll / tokens), rtol=1e-5)


def test_packed_features_are_used(tiny_model):
    """Segment ids and positions reach the model: two packed halves == two separate rows."""
    model, variables = tiny_model
    batch = _batch(2, 3)
    packed = {k: v.reshape(1, -1) for k, v in batch.items()}
    packed["decoder_segment_ids"] = np.repeat([[1, 2]], LENGTH, axis=1).astype(np.int32)
    packed["decoder_positions"] = np.tile(np.arange(LENGTH), 2)[None].astype(np.int32)
    alone = perplexity.evaluate(model, variables, [batch])
    together = perplexity.evaluate(model, variables, [packed])
    np.testing.assert_allclose(together.loss, alone.loss, rtol=1e-5)


def test_empty_split_and_missing_features_are_named(tiny_model):
    model, variables = tiny_model
    with pytest.raises(ValueError, match="test is empty"):
        perplexity.evaluate(model, variables, [], split_name="test")
    bad = _batch(2, 0)
    del bad["decoder_loss_weights"]
    with pytest.raises(ValueError, match="decoder_loss_weights"):
        perplexity.evaluate(model, variables, [bad])
