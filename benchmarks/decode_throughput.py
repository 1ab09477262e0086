"""Decoding speed: KV-cached greedy decoding vs recomputing the full forward pass per token.

    python benchmarks/decode_throughput.py [--new_tokens 128] [--batch 8] [--prompt 64]

Both decoders run the same model on the same left-padded prompts inside one jitted
`jax.lax.while_loop`; each is compiled and run once before timing. The cache-free decoder runs a
full forward pass over [prompt + max_new_tokens] for every new token (fixed shapes, as a
recompiling growing-length loop would be slower still). EOS is disabled so every row produces
exactly `new_tokens` tokens. Prints tokens/s of each and the ratio; checks the tokens agree.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.eval import decoding
from ft_scaling.models.configs import ModelConfig
from ft_scaling.models.decoder import Decoder


def _time(fn, repeats: int) -> tuple[float, np.ndarray]:
    tokens = np.asarray(fn().tokens)  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn().tokens)
        best = min(best, time.perf_counter() - start)
    return best, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = ModelConfig(
        vocab_size=4096,
        num_layers=4,
        num_heads=4,
        num_kv_heads=1,
        head_dim=32,
        embed_dim=128,
        mlp_dim=512,
        tie_embeddings=False,
    )
    model = Decoder(config)
    variables = {"params": model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"]}
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.prompt // 2, args.prompt + 1, size=args.batch)
    prompts, lengths = decoding.left_pad([rng.integers(2, 4096, size=n).tolist() for n in lengths])
    kwargs = dict(max_decode_length=args.new_tokens, eos_id=-1)  # no EOS: every row runs fully
    cached_s, cached = _time(
        lambda: decoding.greedy_decode(model, variables, prompts, lengths, **kwargs), args.repeats
    )
    full_s, full = _time(
        lambda: decoding.reference_greedy_decode(model, variables, prompts, lengths, **kwargs),
        args.repeats,
    )
    new_tokens = args.batch * args.new_tokens
    print(f"model: {config.num_layers} layers, embed {config.embed_dim}, vocab {config.vocab_size}")
    print(
        f"batch {args.batch}, prompts {args.prompt // 2}-{args.prompt} tokens, "
        f"{args.new_tokens} new tokens per row, {jax.devices()[0].platform}"
    )
    print(f"with cache:    {new_tokens / cached_s:10.1f} tokens/s  ({cached_s:.3f} s)")
    print(f"without cache: {new_tokens / full_s:10.1f} tokens/s  ({full_s:.3f} s)")
    print(f"speed-up (cache / no cache): {full_s / cached_s:.2f}x")
    print(f"same tokens: {bool((cached == full).all())}")


if __name__ == "__main__":
    main()
