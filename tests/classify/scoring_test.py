"""PBFT and ICL scoring: label probabilities sum to 1 and equal a numpy computation from the
decoder's full logits, for single- and multi-token verbalizers, with and without demos."""

import dataclasses

import jax
import numpy as np
import pytest

from ft_scaling.classify import encoding, patterns, scoring
from ft_scaling.classify.tasks import Example
from ft_scaling.models import decoder
from ft_scaling.train import partitioning, trainer

EXAMPLES = [
    Example(("Open file", "Datei öffnen"), 1),
    Example(("Save as...", "Drucken"), 0),
    Example(("Cannot connect to %s", "Verbindung zu %s nicht möglich"), 1),
]
LENGTH = 160


def _numpy_label_probs(model, params, prompts, verbalizers):
    """p(c | x) from the decoder's full [length, vocab] logits of every sequence, in numpy.

    Rows are padded at the end, which causal attention never lets earlier positions see.
    """
    sequences = [[*p, *v] for p in prompts for v in verbalizers]
    inputs = np.zeros((len(sequences), LENGTH), np.int32)
    for row, sequence in enumerate(sequences):
        inputs[row, 1 : len(sequence)] = sequence[:-1]
    apply = jax.jit(lambda x: model.apply({"params": params}, x))
    logits = np.asarray(apply(inputs), np.float64)  # [rows, length, vocab]
    log_softmax = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    scores = np.zeros(len(sequences))
    for row, sequence in enumerate(sequences):
        prompt_length = len(prompts[row // len(verbalizers)])
        for t in range(prompt_length, len(sequence)):
            scores[row] += log_softmax[row, t, sequence[t]]
    scores = scores.reshape(len(prompts), len(verbalizers))
    return np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)


@pytest.mark.parametrize(
    "pattern_name, shots, tied",
    [
        ("tm_question", 0, True),  # PBFT; "Yes" is two tokens, "No" one
        ("tm_same", 2, True),  # ICL with two demonstrations
        ("tm_german", 1, False),  # untied output layer ("Nein", "Ja": two tokens each)
    ],
)
def test_label_probabilities_match_numpy(kit, pattern_name, shots, tied):
    config = dataclasses.replace(kit.TINY, tie_embeddings=tied)
    model = decoder.Decoder(config)
    params = trainer.init_params(model, jax.random.PRNGKey(1), 16, partitioning.make_mesh(), ())
    pattern = patterns.get_pattern(pattern_name, "translation_match")
    demos = EXAMPLES[:shots]
    prompts = [kit.encoder.prompt(pattern, e, demos) for e in EXAMPLES]
    verbalizers = kit.encoder.verbalizer_ids(pattern)
    arrays = encoding.candidate_arrays(prompts, verbalizers, [e.label for e in EXAMPLES], LENGTH)
    classifier = scoring.VerbalizerClassifier(model)
    log_probs = np.asarray(jax.jit(classifier.log_probs)({"decoder": params}, arrays))
    probs = np.exp(log_probs.astype(np.float64))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-6)
    expected = _numpy_label_probs(model, params, prompts, verbalizers)
    np.testing.assert_allclose(probs, expected, rtol=2e-4, atol=1e-6)
    assert np.abs(expected[:, 0] - 0.5).max() > 1e-3  # the check is not vacuous


def test_icl_prompt_is_the_few_shot_format(kit):
    pattern = patterns.get_pattern("tm_same", "translation_match")
    eos = kit.encoder.eos_id
    prompt = kit.encoder.prompt(pattern, EXAMPLES[2], EXAMPLES[:1])
    demo = kit.encoder.encode(pattern.render(EXAMPLES[0].texts))
    verbalizer = kit.encoder.encode("same")
    query = kit.encoder.encode(pattern.render(EXAMPLES[2].texts))
    assert prompt == [*demo, eos, *verbalizer, eos, *query, eos]


def test_too_long_sequences_name_the_setting(kit):
    pattern = patterns.get_pattern("tm_same", "translation_match")
    prompts = [kit.encoder.prompt(pattern, EXAMPLES[0], EXAMPLES * 3)]
    with pytest.raises(ValueError, match="ICL_SEQUENCE_LENGTH"):
        encoding.candidate_arrays(prompts, kit.encoder.verbalizer_ids(pattern), [0], 32)
