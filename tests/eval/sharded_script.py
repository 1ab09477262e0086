"""Decodes and evaluates a tiny model on a ('data','fsdp','model') mesh; prints JSON results.

Run by sharded_test.py in a subprocess, because the CPU device count is fixed at JAX start:
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python sharded_script.py 2 1 2
"""

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.eval import beam_search, decoding, perplexity
from ft_scaling.models.configs import ModelConfig
from ft_scaling.models.decoder import Decoder
from ft_scaling.train import partitioning

# Every sharded dimension divides by 2 (vocab, heads, mlp over 'model'; batch over 'data').
CONFIG = ModelConfig(
    vocab_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    embed_dim=32,
    mlp_dim=64,
    tie_embeddings=False,
)


def main(shape):
    mesh, rules = partitioning.make_mesh(shape), partitioning.logical_rules()
    model = Decoder(CONFIG)
    tokens = jnp.ones((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t)["params"], tokens)
    shardings = nn.meta.unbox(partitioning.param_shardings(boxed, mesh, rules))
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens)["params"])
    params = jax.device_put(jax.tree.map(lambda p: 2.0 * p, params), shardings)
    variables = {"params": params}
    rng = np.random.default_rng(0)
    rows = [rng.integers(2, 96, size=n).tolist() for n in (5, 9, 3, 7)]
    prompts, lengths = decoding.left_pad(rows)
    batch = {
        "decoder_input_tokens": rng.integers(2, 96, size=(4, 16)).astype(np.int32),
        "decoder_target_tokens": rng.integers(2, 96, size=(4, 16)).astype(np.int32),
        "decoder_loss_weights": (rng.random((4, 16)) > 0.3).astype(np.float32),
    }
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        greedy = decoding.greedy_decode(model, variables, prompts, lengths, max_decode_length=10)
        beam = beam_search.beam_search(
            model, variables, prompts, lengths, max_decode_length=10, beam_size=3
        )
        ppl = perplexity.evaluate(model, variables, [batch])
    print(
        json.dumps(
            {
                "devices": len(mesh.devices.flat),
                "embedding_sharded": not params["embedding"].sharding.is_fully_replicated,
                "greedy": np.asarray(greedy.tokens).tolist(),
                "beam": np.asarray(beam.tokens[:, 0]).tolist(),
                "loss": ppl.loss,
            }
        )
    )


if __name__ == "__main__":
    main(tuple(int(x) for x in sys.argv[1:4]))
