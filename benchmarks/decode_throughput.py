"""Greedy decoding speed: ours (KV cache, one jitted loop) vs HF `generate`, and vs no cache.

    pip install -e ".[bench]"
    python benchmarks/decode_throughput.py                     # 25m and 110m, batch 8, 64 tokens
    python benchmarks/decode_throughput.py --shapes 25m --no_cache_reference 1

Both frameworks decode the same shapes (llama_shapes.py: same architecture and parameter count,
random weights) from the same 8 prompts of `--prompt` tokens, `--new_tokens` new tokens per
row, greedy, EOS disabled so every row produces all of them (HF: `min_new_tokens` = max). Ours is
`decoding.greedy_decode`: prefill once, then one token per step through the KV cache, all inside
one compiled `lax.while_loop` (compiled and run once before timing). HF is
`LlamaForCausalLM.generate(use_cache=True, do_sample=False)`, eager PyTorch, one warm-up call.
Timing alternates the two, best of `--repeats`. `--no_cache_reference 1` adds our decoder that
recomputes the full forward pass for every token (the cache's own speed-up; checks the tokens
agree with the cached decoder's).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import llama_shapes  # noqa: E402
from ft_scaling.models import configs  # noqa: E402


def prompts(batch: int, length: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(3, vocab, (batch, length)).astype(np.int32)


def ours(config: configs.ModelConfig, ids: np.ndarray, new_tokens: int, cache: bool = True):
    """A callable that decodes `new_tokens` per row and returns the tokens [batch, new_tokens]."""
    import jax
    import jax.numpy as jnp

    from ft_scaling.eval import decoding
    from ft_scaling.models.decoder import Decoder
    from ft_scaling.train import host_memory

    host_memory.keep_freed_memory()  # as the trainer does
    model = Decoder(config)
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"]
    variables = {"params": params}
    lengths = np.full((ids.shape[0],), ids.shape[1], np.int32)
    decode = decoding.greedy_decode if cache else decoding.reference_greedy_decode
    kwargs = dict(max_decode_length=new_tokens, eos_id=-1)  # no EOS: every row runs fully
    return lambda: np.asarray(decode(model, variables, ids, lengths, **kwargs).tokens)


def hugging_face(config: configs.ModelConfig, ids: np.ndarray, new_tokens: int):
    import torch
    import transformers

    torch.manual_seed(0)
    kwargs = llama_shapes.hf_llama_kwargs(config, ids.shape[1] + new_tokens)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()
    inputs = torch.from_numpy(ids.astype(np.int64))
    mask = torch.ones_like(inputs)

    def run():
        with torch.inference_mode():
            out = model.generate(
                input_ids=inputs,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
                eos_token_id=None,
            )
        return out[:, ids.shape[1] :].numpy()

    return run


def best_of(fns: dict, repeats: int) -> dict:
    """Best wall time of each callable, calls alternating; first call of each is a warm-up."""
    outputs = {name: fn() for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            outputs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], outputs[name]) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["25m", "110m"])
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_cache_reference", type=int, default=0)
    args = parser.parse_args()
    print(
        f"batch {args.batch}, prompt {args.prompt} tokens, {args.new_tokens} new tokens per row, "
        "greedy, EOS off"
    )
    print(f"{'model':6} {'decoder':22} {'tokens/s':>10} {'seconds':>8} {'ours/this':>10}")
    for shape in args.shapes:
        config = llama_shapes.SHAPES[shape]
        ids = prompts(args.batch, args.prompt, config.vocab_size)
        fns = {
            "ours (KV cache, jit)": ours(config, ids, args.new_tokens),
            "HF generate (cache)": hugging_face(config, ids, args.new_tokens),
        }
        if args.no_cache_reference:
            fns["ours, no cache"] = ours(config, ids, args.new_tokens, cache=False)
        results = best_of(fns, args.repeats)
        ours_s = results["ours (KV cache, jit)"][0]
        for name, (seconds, tokens) in results.items():
            assert tokens.shape == (args.batch, args.new_tokens), (name, tokens.shape)
            speed = args.batch * args.new_tokens / seconds
            print(f"{shape:6} {name:22} {speed:>10.1f} {seconds:>8.3f} {seconds / ours_s:>9.2f}x")
        if args.no_cache_reference:
            same = (results["ours, no cache"][1] == results["ours (KV cache, jit)"][1]).all()
            print(f"{shape:6} cached == no-cache tokens: {bool(same)}")


if __name__ == "__main__":
    main()
