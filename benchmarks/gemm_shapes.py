"""The train step's own matmuls, one by one: XLA:CPU vs torch on the exact shapes and layouts.

    python benchmarks/gemm_shapes.py                 # 25m
    python benchmarks/gemm_shapes.py --size 110m

`train_throughput.py` compares whole steps; this splits the step into its GEMMs so a gap can be
attributed. For every weight matmul of the model (activations reshaped to [tokens, features], as
both frameworks run them) it times the forward product, the input gradient `dy @ W^T` and the
weight gradient `x^T @ dy` with the operands stored as the step stores them (no copy before the
product), plus attention's batched score and value products and their gradients. Each is timed
alone (jitted in jax, eager in torch; best of `--repeats` after a warm-up), multiplied by how
often a step runs it, and summed: the GEMM time a step could not go below with that library.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import llama_shapes, train_throughput  # noqa: E402
from benchmarks.train_throughput import BATCH, LENGTH  # noqa: E402


def step_gemms(config) -> list[tuple[str, str, tuple, tuple, int]]:
    """(name, kind, lhs shape, rhs shape, count per step) for a float32 FMT step.

    kind says how the operands are stored: 'nn' lhs @ rhs, 'nt' lhs @ rhs^T (rhs stored
    transposed), 'tn' lhs^T @ rhs (lhs stored transposed); 'b..' the batched variants.
    """
    tokens, d, layers = BATCH * LENGTH, config.embed_dim, config.num_layers
    q_out = config.num_heads * config.head_dim
    kv_out = config.num_kv_heads * config.head_dim
    weights = [  # (name, in, out, count)
        ("q", d, q_out, layers),
        ("k,v", d, kv_out, 2 * layers),
        ("o", q_out, d, layers),
        ("gate,up", d, config.mlp_dim, 2 * layers),
        ("down", config.mlp_dim, d, layers),
    ]
    rows = []
    for name, fan_in, fan_out, count in weights:
        rows.append((f"{name} fwd", "nn", (tokens, fan_in), (fan_in, fan_out), count))
        rows.append((f"{name} dx", "nt", (tokens, fan_out), (fan_in, fan_out), count))
        rows.append((f"{name} dW", "tn", (tokens, fan_in), (tokens, fan_out), count))
    vocab = config.vocab_size  # tied: the table is [vocab, d]
    rows.append(("logits fwd", "nt", (tokens, d), (vocab, d), 1))
    rows.append(("logits dx", "nn", (tokens, vocab), (vocab, d), 1))
    rows.append(("logits dW", "tn", (tokens, vocab), (tokens, d), 1))
    heads, hd, t = BATCH * config.num_heads, config.head_dim, LENGTH
    rows.append(("scores fwd+dq", "bnt", (heads, t, hd), (heads, t, hd), 2 * layers))
    rows.append(("scores dk", "btn", (heads, t, t), (heads, t, hd), layers))
    rows.append(("values fwd+dp", "bnn", (heads, t, t), (heads, t, hd), 2 * layers))
    rows.append(("values dv", "btn", (heads, t, t), (heads, t, hd), layers))
    return rows


def flops(kind: str, lhs: tuple, rhs: tuple) -> float:
    batch = lhs[0] if kind.startswith("b") else 1
    lhs2, rhs2 = (lhs[1:], rhs[1:]) if kind.startswith("b") else (lhs, rhs)
    m, k = (lhs2[1], lhs2[0]) if kind.endswith("tn") else lhs2
    n = rhs2[0] if kind.endswith("nt") else rhs2[1]
    return 2.0 * batch * m * k * n


def jax_timer(kind: str, lhs: tuple, rhs: tuple, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    equations = {
        "nn": "mk,kn->mn",
        "nt": "mk,nk->mn",
        "tn": "km,kn->mn",
        "bnn": "bmk,bkn->bmn",
        "bnt": "bmk,bnk->bmn",
        "btn": "bkm,bkn->bmn",
    }
    product = jax.jit(lambda a, b: jnp.einsum(equations[kind], a, b))
    a = jax.random.normal(jax.random.PRNGKey(0), lhs, jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), rhs, jnp.float32)
    return _best(lambda: product(a, b).block_until_ready(), repeats)


def torch_timer(kind: str, lhs: tuple, rhs: tuple, repeats: int) -> float:
    import torch

    a, b = torch.randn(*lhs), torch.randn(*rhs)
    if kind.endswith("nt"):
        return _best(lambda: a @ b.transpose(-1, -2), repeats)
    if kind.endswith("tn"):
        return _best(lambda: a.transpose(-1, -2) @ b, repeats)
    return _best(lambda: a @ b, repeats)


def _best(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, first touch)
    return train_throughput._best(fn, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="25m", choices=sorted(llama_shapes.SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = llama_shapes.SHAPES[args.size]
    print(f"{args.size}: float32 GEMMs of one FMT step (batch {BATCH} x {LENGTH})")
    print(
        f"{'matmul':14} {'kind':4} {'lhs':>16} {'rhs':>16} {'n':>3} {'jax GF/s':>9} "
        f"{'torch GF/s':>10} {'jax/torch':>9}"
    )
    totals = {"jax": 0.0, "torch": 0.0}
    for name, kind, lhs, rhs, count in step_gemms(config):
        seconds = {
            "jax": jax_timer(kind, lhs, rhs, args.repeats),
            "torch": torch_timer(kind, lhs, rhs, args.repeats),
        }
        for framework in totals:
            totals[framework] += count * seconds[framework]
        work = flops(kind, lhs, rhs)
        print(
            f"{name:14} {kind:4} {str(lhs):>16} {str(rhs):>16} {count:>3} "
            f"{work / seconds['jax'] / 1e9:>9.1f} {work / seconds['torch'] / 1e9:>10.1f} "
            f"{seconds['torch'] / seconds['jax']:>8.2f}x",
            flush=True,
        )
    print(
        f"GEMM time per step: jax {totals['jax']:.3f} s, torch {totals['torch']:.3f} s "
        f"(jax speed / torch speed {totals['torch'] / totals['jax']:.2f}x)"
    )


if __name__ == "__main__":
    main()
