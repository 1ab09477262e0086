"""Rematerialisation policies change memory, never the loss or its gradient."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.models import configs, decoder

CONFIG = configs.ModelConfig(vocab_size=64, num_layers=2, num_heads=2, num_kv_heads=1)


def _loss_and_grads(config):
    model = decoder.Decoder(config)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, 64)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), tokens)["params"])

    def loss(p):
        logits = model.apply({"params": p}, tokens)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("policy", configs.REMAT_POLICIES)
def test_remat_policy_gives_identical_loss_and_gradients(policy):
    want_loss, want_grads = _loss_and_grads(CONFIG)
    config = dataclasses.replace(CONFIG, remat=True, remat_policy=policy)
    loss, grads = _loss_and_grads(config)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_unknown_policy_names_the_allowed_ones():
    with pytest.raises(ValueError, match="remat_policy='everything'.*'full', 'dots'"):
        configs.ModelConfig(remat=True, remat_policy="everything")
