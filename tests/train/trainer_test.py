"""The one train step: compiled once per loss object (LM or classifier), not again on its second
call; an LM step is a token-mean NLL gradient step; microbatches add up to the whole batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.classify import distill, encoding, head, scoring
from ft_scaling.methods import full, lora
from ft_scaling.models import configs, decoder
from ft_scaling.train import losses, optimizers, partitioning, trainer

CONFIG = configs.ModelConfig(vocab_size=128, num_layers=1, embed_dim=32, mlp_dim=64)
LENGTH = 8
CLASSES = 3


def _lm_batch(batch=2, length=LENGTH):
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 128, (batch, length)), jnp.int32)
    return {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": tokens,
        "decoder_loss_weights": jnp.ones((batch, length), jnp.float32),
        "decoder_segment_ids": jnp.ones((batch, length), jnp.int32),
        "decoder_positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)),
    }


def _classifier_batch(kind, batch=4):
    """Head rows or verbalizer candidate rows of random token ids; distill adds a teacher."""
    rng = np.random.default_rng(1)
    rows = [list(rng.integers(2, 128, rng.integers(3, 6))) for _ in range(batch)]
    labels = list(rng.integers(0, CLASSES, batch))
    if kind == "head":
        return encoding.head_arrays([[0, *r, 1] for r in rows], labels, LENGTH)
    verbalizers = [[5], [6, 7], [9]]
    arrays = encoding.candidate_arrays(rows, verbalizers, labels, LENGTH)
    if kind == "distill":
        teacher = rng.dirichlet(np.ones(CLASSES), size=batch)
        arrays["teacher_log_probs"] = np.log(teacher).astype(np.float32)
    return arrays


CLASSIFIERS = {
    "head": lambda model: head.HeadClassifier(model, CLASSES),
    "verbalizer": scoring.VerbalizerClassifier,
    "distill": distill.DistillClassifier,
}


def _setup(kind, method, optimizer, mesh):
    """(loss object, optimizer settings, state, frozen, batch) of a tiny model under `method`."""
    model = method.wrap(decoder.Decoder(CONFIG))
    rules = partitioning.logical_rules()
    params = trainer.init_params(model, jax.random.PRNGKey(0), LENGTH, mesh, rules)
    mask = method.trainable_mask(params)
    settings = optimizers.OptimizerSettings(optimizer, 0.0, 1.0)
    if kind == "lm":
        loss, batch = losses.LMLoss(model), _lm_batch()
    else:
        loss = CLASSIFIERS[kind](model)
        extra = loss.init_extra(jax.random.PRNGKey(3), CONFIG.embed_dim, CLASSES)
        params = {"decoder": params, **extra}
        mask = {"decoder": mask, **jax.tree.map(lambda _: True, extra)}
        batch = jax.device_put(_classifier_batch(kind), trainer.example_sharding(mesh, rules))
    state, frozen = trainer.create_state(params, mask, settings, jax.random.PRNGKey(1), mesh)
    return loss, settings, state, frozen, batch


@pytest.mark.parametrize("kind", ["lm", "head", "distill"])
@pytest.mark.parametrize("method", [full.FullModelTuning(), lora.LoRA(rank=2)], ids=str)
@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_train_step_compiles_once(kind, method, optimizer):
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    loss, settings, state, frozen, batch = _setup(kind, method, optimizer, mesh)
    train_step, _ = trainer.jit_steps(loss, settings, mesh, rules, state, frozen)
    step_losses = []
    for _ in range(3):
        state, metrics = train_step(state, frozen, batch, np.float32(1e-2))
        step_losses.append(float(metrics["loss"]))
    assert train_step.__wrapped__._cache_size() == 1
    assert step_losses[-1] < step_losses[0]


def test_equal_losses_share_one_compiled_step():
    # Two LoRA models built apart hold distinct `functools.partial` fields; the key is content.
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    _, settings, state, frozen, _ = _setup("head", lora.LoRA(rank=2), "adamw", mesh)
    first = head.HeadClassifier(lora.LoRA(rank=2).wrap(decoder.Decoder(CONFIG)), CLASSES)
    second = head.HeadClassifier(lora.LoRA(rank=2).wrap(decoder.Decoder(CONFIG)), CLASSES)
    assert first == second and hash(first) == hash(second)
    assert first != head.HeadClassifier(first.model, CLASSES + 1)
    assert trainer.jit_steps(first, settings, mesh, rules, state, frozen) is not None
    hits = trainer._compiled.cache_info().hits
    trainer.jit_steps(second, settings, mesh, rules, state, frozen)
    assert trainer._compiled.cache_info().hits == hits + 1


def test_lm_step_is_a_token_mean_nll_gradient_step():
    model = decoder.Decoder(CONFIG)
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    params = trainer.init_params(model, jax.random.PRNGKey(0), LENGTH, mesh, rules)
    initial = jax.tree.map(np.asarray, params)  # host copy: the state is donated
    settings = optimizers.OptimizerSettings("sgd", clip_norm=None)
    mask = jax.tree.map(lambda _: True, params)
    state, frozen = trainer.create_state(params, mask, settings, jax.random.PRNGKey(1), mesh)
    batch = _lm_batch(batch=3)
    weights = np.random.default_rng(2).integers(0, 2, (3, LENGTH)).astype(np.float32)
    batch["decoder_loss_weights"] = jnp.asarray(weights)

    def token_mean_nll(p):  # by hand: log_softmax, the target's log-prob, a weighted mean
        logits = model.apply({"params": p}, batch["decoder_input_tokens"])
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        targets = batch["decoder_target_tokens"][..., None]
        nll = -jnp.take_along_axis(log_probs, targets, axis=-1)[..., 0]
        return jnp.sum(nll * weights) / np.sum(weights)

    want_loss, want_grads = jax.value_and_grad(token_mean_nll)(initial)
    train_step, _ = trainer.jit_steps(losses.LMLoss(model), settings, mesh, rules, state, frozen)
    state, metrics = train_step(state, frozen, batch, np.float32(0.5))
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-6)
    assert float(metrics["target_tokens"]) == weights.sum()
    want = jax.tree.map(lambda p, g: p - 0.5 * g, initial, want_grads)
    for got, expected in zip(jax.tree.leaves(state.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["lm", "verbalizer"])
def test_microbatches_add_up_to_the_whole_batch(kind):
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    outcomes = []
    for num_microbatches in (1, 2):
        loss, settings, state, frozen, batch = _setup(kind, full.FullModelTuning(), "sgd", mesh)
        step, _ = trainer.jit_steps(loss, settings, mesh, rules, state, frozen, num_microbatches)
        state, metrics = step(state, frozen, batch, np.float32(0.1))
        outcomes.append((jax.device_get(metrics), jax.device_get(state.params)))
    (whole, whole_params), (micro, micro_params) = outcomes
    assert set(whole) == set(micro) == {"loss", "target_tokens", "grad_norm"}
    for key in whole:
        np.testing.assert_allclose(micro[key], whole[key], rtol=1e-5)
    pairs = zip(jax.tree.leaves(micro_params), jax.tree.leaves(whole_params), strict=True)
    for got, want in pairs:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
