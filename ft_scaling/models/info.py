"""`ft-scaling info`: parameter counts of gin-configured models, without allocating them."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from ft_scaling.config import flags
from ft_scaling.models import configs, decoder


def abstract_param_count(config: configs.ModelConfig) -> int:
    """Counts parameters through `jax.eval_shape` of the real init: nothing is allocated."""
    model = decoder.Decoder(config)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t), tokens)
    leaves = jax.tree_util.tree_leaves(nn.meta.unbox(shapes["params"]))
    return sum(leaf.size for leaf in leaves)


def describe(config: configs.ModelConfig) -> str:
    total = abstract_param_count(config)
    non_embedding = configs.non_embedding_param_count(config)
    return (
        f"layers={config.num_layers} heads={config.num_heads} kv_heads={config.num_kv_heads} "
        f"head_dim={config.head_dim} embed={config.embed_dim} mlp={config.mlp_dim} "
        f"vocab={config.vocab_size}\n"
        f"params={total:,} ({total / 1e9:.3f}B)  non-embedding={non_embedding:,}"
    )


def main(argv: Sequence[str]) -> int:
    flags.parse_flags(argv, "print parameter counts of a gin-configured model")
    print(describe(configs.ModelConfig()))
    return 0
