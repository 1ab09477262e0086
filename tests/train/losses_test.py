"""The token NLL and its hand-written gradient equal jax's log_softmax reference; LMLoss returns
its sums and compares by content."""

import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.methods import lora
from ft_scaling.models import configs, decoder
from ft_scaling.train import losses


def _reference(logits, targets):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def _case(scale=3.0):
    logits = scale * jax.random.normal(jax.random.PRNGKey(0), (2, 5, 11))
    targets = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 11)
    weights = jnp.asarray(np.random.default_rng(0).integers(0, 2, (2, 5)), jnp.float32)
    return logits, targets, weights


def test_values_match_log_softmax():
    logits, targets, _ = _case()
    np.testing.assert_allclose(
        losses.token_nll(logits, targets), _reference(logits, targets), rtol=1e-6, atol=1e-6
    )


def test_gradient_matches_autodiff_of_reference():
    logits, targets, weights = _case()
    ours = jax.grad(lambda x: losses.weighted_nll_sum(x, targets, weights)[0])(logits)
    want = jax.grad(lambda x: jnp.sum(_reference(x, targets) * weights))(logits)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(ours[weights == 0]).max()) == 0.0  # padding contributes nothing


def test_large_logits_stay_finite():
    logits, targets, weights = _case(scale=1e4)
    value, grad = jax.value_and_grad(lambda x: losses.weighted_nll_sum(x, targets, weights)[0])(
        logits
    )
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(value, jnp.sum(_reference(logits, targets) * weights), rtol=1e-6)


def _lm_case():
    config = configs.ModelConfig(vocab_size=64, num_layers=1, embed_dim=16, mlp_dim=32)
    model = decoder.Decoder(config)
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(1, 64, (2, 7)), jnp.int32)
    batch = {
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": jnp.asarray(rng.integers(0, 2, (2, 6)), jnp.float32),
    }
    params = model.init(jax.random.PRNGKey(0), batch["decoder_input_tokens"])["params"]
    return model, params, batch


def test_lm_loss_returns_sums_of_the_reference_nll():
    model, params, batch = _lm_case()
    logits = model.apply({"params": params}, batch["decoder_input_tokens"])
    weights = batch["decoder_loss_weights"]
    want = jnp.sum(_reference(logits, batch["decoder_target_tokens"]) * weights)
    loss = losses.LMLoss(model)
    loss_sum, weight_sum, metrics = loss.loss(params, batch, jax.random.PRNGKey(1))
    np.testing.assert_allclose(loss_sum, want, rtol=1e-6)
    assert float(weight_sum) == float(jnp.sum(weights)) and metrics == {}
    evaluated = loss.evaluate(params, batch)
    assert set(evaluated) == {"loss_sum", "target_tokens"}
    np.testing.assert_allclose(evaluated["loss_sum"], want, rtol=1e-6)
    assert float(evaluated["target_tokens"]) == float(jnp.sum(weights))


def test_lm_losses_of_equal_models_are_equal():
    # Each wrap makes new `functools.partial` fields: equality must come from the content.
    lora_model = lambda rank: lora.LoRA(rank=rank).wrap(decoder.Decoder(configs.ModelConfig()))
    first, second = losses.LMLoss(lora_model(2)), losses.LMLoss(lora_model(2))
    assert first == second and hash(first) == hash(second)
    assert first != losses.LMLoss(lora_model(4))
