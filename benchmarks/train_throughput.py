"""Train-step throughput and memory: ours (JAX) vs Hugging Face transformers + PEFT, vs GEMM peak.

    pip install -e ".[bench]"
    python benchmarks/train_throughput.py                        # 25m and 110m, fp32 and bf16
    python benchmarks/train_throughput.py --sizes 25m --dtypes float32 --rounds 2   # quick look

One process, interleaved: every round runs each variant for `--steps` steps in turn (the first
step after a switch is discarded: the other framework's idle worker threads are still spinning),
so machine load drifts hit all variants alike. Reported: median tokens/s over all kept steps
(>= 10 by default) with min and max, model GFLOP/s, MFU = model FLOPs per token x tokens/s /
the measured GEMM peak of that dtype (the best of jax and torch on a large square matmul), and
peak memory. Variants, all with AdamW (no weight decay), gradient clipping at 1.0, batch 8 x 256:
  ours FMT / LoRA (r=8, alpha=16, on attention q, k, v, o): `trainer.jit_steps`, the step every
    `ft-scaling train` run uses; float32, or bfloat16 compute with float32 master weights.
  HF FMT / HF+PEFT LoRA (same rank, alpha, targets): `LlamaForCausalLM` of the same shapes and
    parameter count (llama_shapes.py), eager PyTorch, `torch.autocast(bfloat16)` for bf16.

Model FLOPs per token (configs.train_flops_per_token): 6 per matmul weight (tied output layer
included) + 12 * T * d_model per layer for attention (counted in full, not halved for causality).
A LoRA step skips the weight gradients of frozen matmuls: 4 per frozen weight + 6 per LoRA weight.

Memory: ours = XLA's account of the compiled step (arguments + outputs + temporaries - donated);
both frameworks also get the growth of the resident set in a fresh process from before the model
exists to the steady-state peak of later steps (`--memory`, one subprocess per variant). Our
LoRA vs FMT peak is also tabulated without and with remat (policies 'dots', 'full') under both
XLA:CPU schedulers (`--remat_memory 110m`, compile only).
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import llama_shapes  # noqa: E402
from ft_scaling.models import configs  # noqa: E402

BATCH, LENGTH, RANK, ALPHA = 8, 256, 8, 16.0
MIB = 2**20


@dataclasses.dataclass
class Variant:
    name: str
    step: Callable[[], None]
    flops_per_token: float
    static_peak_bytes: float | None = None
    times: list = dataclasses.field(default_factory=list)


def tokens(batch: int = BATCH, length: int = LENGTH) -> np.ndarray:
    return np.random.default_rng(0).integers(3, 8000, (batch, length)).astype(np.int32)


def lora_flops_per_token(config: configs.ModelConfig, length: int = LENGTH) -> float:
    """FMT FLOPs minus the frozen weights' gradients, plus the rank-r factors of q, k, v, o."""
    full = configs.train_flops_per_token(config, length)
    d, heads, kv = config.embed_dim, config.num_heads, config.num_kv_heads
    base_weights = config.num_layers * (configs.block_param_count(config) - 2 * d)
    base_weights += config.vocab_size * d
    out_dims = (heads + 2 * kv) * config.head_dim + d  # q, k, v outputs; o's output is d
    in_dims = 3 * d + heads * config.head_dim
    lora_weights = config.num_layers * RANK * (in_dims + out_dims)
    return full - 2 * base_weights + 6 * lora_weights


def gemm_peak(dtype: str, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of a [size, size] x [size, size] matmul in jax and in torch."""
    import jax
    import jax.numpy as jnp
    import torch

    flops = 2 * size**3
    a = jnp.ones((size, size), getattr(jnp, dtype))
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, a))
    found = {"jax": _best(lambda: jax.block_until_ready(matmul(a, a)), repeats)}
    t = torch.ones(size, size, dtype=getattr(torch, dtype))
    found["torch"] = _best(lambda: t @ t, repeats + 1)
    return {name: flops / seconds / 1e9 for name, seconds in found.items()}


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def ours(
    config: configs.ModelConfig, method: str, dtype: str, batch: int = BATCH, length: int = LENGTH
) -> Variant:
    """Our compiled train step on a fixed batch; the state is carried between calls."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from ft_scaling.methods import full, lora
    from ft_scaling.models import decoder
    from ft_scaling.train import losses, optimizers, partitioning, trainer

    config = dataclasses.replace(config, dtype=dtype)
    if method == "lora":
        chosen = lora.LoRA(rank=RANK, alpha=ALPHA, targets=("attention/(query|key|value|out)$",))
    else:
        chosen = full.FullModelTuning()
    model = chosen.wrap(decoder.Decoder(config))
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    params = trainer.init_params(model, jax.random.PRNGKey(0), length, mesh, rules)
    settings = optimizers.OptimizerSettings("adamw", 0.0, 1.0)
    state, frozen = trainer.create_state(
        params, chosen.trainable_mask(params), settings, jax.random.PRNGKey(1), mesh
    )
    train_step, _ = trainer.jit_steps(losses.LMLoss(model), settings, mesh, rules, state, frozen)
    batch = _our_batch(jnp, batch, length)
    learning_rate = jnp.float32(1e-4)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        memory = train_step.__wrapped__.lower(state, frozen, batch, learning_rate).compile()
    memory = memory.memory_analysis()
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    box = [state]

    def step():
        box[0], metrics = train_step(box[0], frozen, batch, learning_rate)
        jax.block_until_ready(metrics["loss"])

    flops = lora_flops_per_token(config, length) if method == "lora" else None
    flops = flops or configs.train_flops_per_token(config, length)
    return Variant(f"ours {method} {dtype}", step, flops, peak)


def _our_batch(jnp, batch: int = BATCH, length: int = LENGTH) -> dict:
    ids = tokens(batch, length)
    return {
        "decoder_input_tokens": jnp.asarray(ids),
        "decoder_target_tokens": jnp.asarray(np.roll(ids, -1, axis=1)),
        "decoder_loss_weights": jnp.ones((batch, length), jnp.float32),
        "decoder_segment_ids": jnp.ones((batch, length), jnp.int32),
        "decoder_positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), ids.shape),
    }


def hugging_face(config: configs.ModelConfig, method: str, dtype: str) -> Variant:
    """LlamaForCausalLM (+ PEFT LoRA) with torch AdamW, eager, optionally under autocast."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(**llama_shapes.hf_llama_kwargs(config, LENGTH))
    model = transformers.LlamaForCausalLM(hf_config)
    step = hf_step(model, method, dtype)
    flops = lora_flops_per_token(config) if method == "lora" else None
    flops = flops or configs.train_flops_per_token(config, LENGTH)
    return Variant(f"HF {method} {dtype}", step, flops)


def hf_step(model, method: str, dtype: str = "float32"):
    """One eager torch AdamW step of an HF model (in PEFT LoRA for 'lora'), optionally
    under bfloat16 autocast: the reference step every HF variant of the benchmarks times."""
    import contextlib

    import torch

    if method == "lora":
        import peft

        lora_config = peft.LoraConfig(
            r=RANK,
            lora_alpha=ALPHA,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )
        model = peft.get_peft_model(model, lora_config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    ids = torch.from_numpy(tokens().astype(np.int64))
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if dtype == "bfloat16"
        else contextlib.nullcontext
    )

    def step():
        with autocast():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


BUILDERS = {"ours": ours, "HF": hugging_face}


def interleave(variants: list[Variant], rounds: int, steps: int) -> None:
    for variant in variants:  # compile / first-touch warm-up
        variant.step()
        variant.step()
    for round_index in range(rounds):
        for variant in variants:
            for index in range(steps):
                start = time.perf_counter()
                variant.step()
                if index:  # the first step after a switch shares the CPU with spinning threads
                    variant.times.append(time.perf_counter() - start)
        medians = ", ".join(f"{v.name} {statistics.median(v.times):.2f}s" for v in variants)
        print(f"  round {round_index + 1}/{rounds}: {medians}", flush=True)


def measure_memory(size: str, framework: str, method: str, dtype: str) -> float:
    """Growth of the resident set (MiB) in a fresh process: before the model -> step peak."""
    argv = [sys.executable, __file__, "--_memory_of", f"{size},{framework},{method},{dtype}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"memory run {argv[-1]} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])["rss_growth_mib"]


def _memory_child(spec: str) -> None:
    size, framework, method, dtype = spec.split(",")
    if framework == "ours":
        import jax

        jax.numpy.ones(1).block_until_ready()  # runtime up before the baseline
    else:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    baseline = proc_status("VmRSS")
    variant = BUILDERS[framework](llama_shapes.SHAPES[size], method, dtype)
    variant.step()
    variant.step()
    with open("/proc/self/clear_refs", "w") as handle:  # reset VmHWM to the current RSS
        handle.write("5")
    for _ in range(2):
        variant.step()
    peak = max(proc_status("VmHWM"), proc_status("VmRSS"))
    print(json.dumps({"rss_growth_mib": (peak - baseline) / 1024}))


REMAT_VARIANTS = (("fmt", None), ("lora", None), ("lora", "dots"), ("lora", "full"))
MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def remat_memory(size: str) -> None:
    """XLA's peak (MiB) of our FMT and LoRA steps, without and with remat, per XLA:CPU scheduler.

    The scheduler is a process-wide XLA flag (per-jit `compiler_options` do not reach it on
    CPU), so each scheduler compiles in its own subprocess.
    """
    print(f"\n{size}: XLA peak MiB of our float32 steps (static; compile only)")
    print(f"{'scheduler':22} " + " ".join(f"{_remat_name(*v):>14}" for v in REMAT_VARIANTS))
    for label, flags in (("default (concurrency)", ""), ("memory-aware", MEMORY_SCHEDULER)):
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
        argv = [sys.executable, __file__, "--_remat_memory_of", size]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            raise RuntimeError(f"remat memory run failed:\n{done.stderr[-2000:]}")
        peaks = json.loads(lines[-1])
        cells = [
            f"{peaks[_remat_name(*v)]:>7.0f} ({peaks[_remat_name(*v)] / peaks['fmt']:.2f})"
            for v in REMAT_VARIANTS
        ]
        print(f"{label:22} " + " ".join(f"{cell:>14}" for cell in cells))


def _remat_name(method: str, policy: str | None) -> str:
    return method if policy is None else f"{method}+remat:{policy}"


def _remat_memory_child(size: str) -> None:
    peaks = {}
    for method, policy in REMAT_VARIANTS:
        config = llama_shapes.SHAPES[size]
        if policy:
            config = dataclasses.replace(config, remat=True, remat_policy=policy)
        peaks[_remat_name(method, policy)] = ours(config, method, "float32").static_peak_bytes / MIB
    print(json.dumps(peaks))


def proc_status(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    raise KeyError(key)


def report(size, variants: list[Variant], peaks: dict, memory: dict) -> None:
    print(
        f"\n{size}: {configs.param_count(llama_shapes.SHAPES[size]):,} params, "
        f"batch {BATCH} x {LENGTH} tokens"
    )
    print(
        f"{'variant':24} {'tok/s':>8} {'(min-max)':>15} {'GFLOP/s':>8} {'MFU':>6} "
        f"{'XLA peak MiB':>12} {'RSS MiB':>8} {'ours/HF':>8}"
    )
    by_name = {v.name: v for v in variants}
    for v in variants:
        speed = BATCH * LENGTH / statistics.median(v.times)
        low, high = BATCH * LENGTH / max(v.times), BATCH * LENGTH / min(v.times)
        gflops = v.flops_per_token * speed / 1e9
        dtype = v.name.split()[-1]
        static = f"{v.static_peak_bytes / MIB:.0f}" if v.static_peak_bytes else "-"
        rss = f"{memory[v.name]:.0f}" if v.name in memory else "-"
        ratio = "-"
        twin = by_name.get(v.name.replace("ours", "HF"))
        if v.name.startswith("ours") and twin:
            ratio = f"{statistics.median(twin.times) / statistics.median(v.times):.2f}x"
        print(
            f"{v.name:24} {speed:>8.0f} {f'({low:.0f}-{high:.0f})':>15} {gflops:>8.1f} "
            f"{gflops / peaks[dtype]:>6.1%} {static:>12} {rss:>8} {ratio:>8}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=["25m", "110m"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--methods", nargs="+", default=["fmt", "lora"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="per round; the first is dropped")
    parser.add_argument("--memory", type=int, default=1, help="also measure RSS per variant")
    parser.add_argument("--remat_memory", nargs="*", default=["110m"], help="sizes")
    parser.add_argument("--_memory_of", help=argparse.SUPPRESS)
    parser.add_argument("--_remat_memory_of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_of:
        return _memory_child(args._memory_of)
    if args._remat_memory_of:
        return _remat_memory_child(args._remat_memory_of)
    from ft_scaling.train import host_memory

    host_memory.keep_freed_memory()  # as the trainer does; applies to torch in this process too
    peaks = {}
    for dtype in args.dtypes:
        found = gemm_peak(dtype)
        peaks[dtype] = max(found.values())
        print(f"GEMM peak {dtype}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in found.items()))
    for size in args.sizes:
        config = llama_shapes.SHAPES[size]
        specs = [(f, m, d) for d in args.dtypes for m in args.methods for f in ("ours", "HF")]
        print(f"\n{size}: building {len(specs)} variants", flush=True)
        variants = [BUILDERS[f](config, m, d) for f, m, d in specs]
        interleave(variants, args.rounds, args.steps)
        memory = {}
        if args.memory:
            for (framework, method, dtype), variant in zip(specs, variants, strict=True):
                memory[variant.name] = measure_memory(size, framework, method, dtype)
        report(size, variants, peaks, memory)
        del variants
    for size in args.remat_memory:
        remat_memory(size)


if __name__ == "__main__":
    main()
