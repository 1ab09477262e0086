"""Vanilla finetuning: the head reads the last real token; the decoder's hidden states are its
logits' input; a trivially learnable set is learned."""

import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.classify import encoding, head, run, tasks, train
from ft_scaling.models import decoder
from ft_scaling.train import partitioning, trainer


def test_last_token_hidden_picks_the_last_non_pad_position():
    hidden = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    segments = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(head.last_token_hidden(hidden, segments), hidden[[0, 1], [1, 3]])


def test_return_hidden_is_the_input_of_the_tied_output_layer(kit):
    model = decoder.Decoder(kit.TINY)
    params = trainer.init_params(model, jax.random.PRNGKey(0), 8, partitioning.make_mesh(), ())
    tokens = jnp.array([[0, 5, 9, 11, 1, 0, 0, 0]])
    logits = model.apply({"params": params}, tokens)
    hidden = model.apply({"params": params}, tokens, return_hidden=True)
    assert hidden.shape == (1, 8, kit.TINY.embed_dim)
    np.testing.assert_allclose(hidden @ params["embedding"].T, logits, rtol=1e-5, atol=1e-5)


VERBS = ("Open", "Close", "Save")


def _toy(count, seed):
    """Three classes: the English side starts with VERBS[label]; random noise words follow."""
    rng = np.random.default_rng(seed)
    words = ["file", "window", "folder", "printer", "document", "session", "tab", "menu"]
    examples = []
    for i in range(count):
        label = i % len(VERBS)
        english = " ".join([VERBS[label], *rng.choice(words, 3)])
        examples.append(tasks.Example((english, "Datei"), label))
    return examples


def test_vanilla_finetuning_learns_a_trivially_learnable_set(kit):
    # Three classes, length 48 and batch 4: methods_test's vanilla_full run compiles the same.
    settings = run.RunSettings(model_config=kit.TINY, sequence_length=48)
    spec = run.MethodSpec("vanilla", "vanilla", "fmt", learning_rate=1e-2, steps=60)
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    model = run.build_model(spec, settings, 3, None, 0, mesh, rules)
    assert isinstance(model.classifier, head.HeadClassifier)

    def arrays(examples):
        rows = [kit.encoder.head_tokens(e) for e in examples]
        return encoding.head_arrays(rows, [e.label for e in examples], 48)

    held_out = arrays(_toy(48, seed=1))

    def accuracy(params):
        log_probs = train.predict(model.eval_fn, params, model.frozen, held_out, 8, mesh, rules)
        return float(np.mean(np.argmax(log_probs, -1) == held_out["labels"]))

    before = accuracy(model.state.params)
    state, losses = train.fit(
        model.train_fn,
        model.state,
        model.frozen,
        arrays(_toy(32, 0)),
        40,
        16,
        lambda step: 1e-2,
        0,
        mesh,
        rules,
    )
    assert accuracy(state.params) >= 0.95 > before + 0.2
    assert losses[-1] < 0.1 * losses[0]
