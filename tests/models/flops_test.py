"""configs.train_flops_per_token against a hand count and against the model's own matmuls."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import llama_shapes
from ft_scaling.models import configs, decoder

TINY = configs.ModelConfig(
    vocab_size=10, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, embed_dim=6, mlp_dim=8
)


def test_hand_count_of_a_tiny_config():
    # Matmul weights of the block: q 6x8 + k 6x4 + v 6x4 + o 8x6 = 144; SwiGLU 3 x 6x8 = 144.
    # Tied output layer 10x6 = 60. Forward: 2 FLOPs per weight = 2 x 348 = 696 per token.
    # Attention at T = 5: scores 2*T*head_dim + mixing 2*T*head_dim per head = 4*5*4*2 = 160.
    # Training = 3 x forward = 3 x 856.
    assert configs.train_flops_per_token(TINY, 5) == 3 * (2 * 348 + 160) == 2568


def _forward_matmul_flops(jaxpr) -> int:
    """2*M*N*K summed over every dot_general of a jaxpr, nested ones (custom_vjp, remat) too."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
            contracted = int(np.prod([lhs[d] for d in lhs_contract]))
            total += 2 * int(np.prod(out)) * contracted
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _forward_matmul_flops(sub)
    return total


@pytest.mark.parametrize("config", [TINY, llama_shapes.SHAPES["25m"]], ids=["tiny", "25m"])
def test_formula_equals_the_matmuls_the_model_runs(config):
    length = 16
    model = decoder.Decoder(config)
    tokens = jnp.ones((1, length), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens))
    jaxpr = jax.make_jaxpr(lambda p: model.apply(p, tokens))(params).jaxpr
    per_token = _forward_matmul_flops(jaxpr) / length
    assert 3 * per_token == configs.train_flops_per_token(config, length)
