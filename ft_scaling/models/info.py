"""`ft-scaling info`: parameter counts of a model, without allocating it.

ft-scaling info --gin_file=t5x_configs/models/1b.gin     a gin-configured model
ft-scaling info --hf=DIR|ORG/NAME[@REVISION]             a Hugging Face checkpoint: its
                                                        architecture, our ModelConfig of it
                                                        and the counts (a hub id fetches
                                                        only config.json)
"""

import argparse
import dataclasses
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


def describe_hf(path_or_id: str) -> str:
    """Architecture, the ModelConfig fields that differ from the paper's defaults, and counts."""
    from ft_scaling.models.hf import config_conversion, loading  # noqa: PLC0415

    hf_config = loading.read_config(loading.resolve(path_or_id, config_only=True))
    config = config_conversion.to_model_config(hf_config)
    default = configs.ModelConfig()
    fields = [
        f"{field.name}={getattr(config, field.name)!r}"
        for field in dataclasses.fields(config)
        if getattr(config, field.name) != getattr(default, field.name)
    ]
    return (
        f"{path_or_id}: {config_conversion.architecture(hf_config)}\n"
        f"ModelConfig({', '.join(fields)})\n{describe(config)}"
    )


def main(argv: Sequence[str]) -> int:
    bindings, rest = flags.split_gin_bindings(argv)
    parser = argparse.ArgumentParser(description="print parameter counts of a model")
    flags.add_gin_flags(parser)
    parser.add_argument("--hf", default=None, help="Hugging Face directory or hub id")
    args = parser.parse_args(rest)
    if args.hf:
        print(describe_hf(args.hf))
        return 0
    flags.parse_gin(args.gin_file, bindings, args.gin_search_paths)
    print(describe(configs.ModelConfig()))
    return 0
