"""On an accelerator: train-step MFU of the paper's 1B config, and packed runs vs one by one.

    python benchmarks/accelerator.py                       # all sections, ~6 min on one H200
    python benchmarks/accelerator.py --sections gemm mfu --mfu_batch 8

The CPU benchmarks (train_throughput.py, packed_runs.py) measure the same steps on this
project's 2-core VM; this script is what to run on a GPU or TPU host, one process, compiles
reported and excluded from every rate. Sections, in order (`--budget_s` skips what no longer fits):
gemm   the device's bf16 peak: the best of 10 [8192, 8192] x [8192, 8192] products (jax).
pack   LoRA packs of `--runs` runs (ranks cycling 4/8/16, padded to 16; own seeds, learning
       rates and batches) stepped by the packed step vs the same runs one after another by the
       solo step (packed_runs.throughput: modes alternating, every step waited for):
       the 25m benchmark model at `--small_batch` x `--small_length` tokens per run, then the
       1B config at `--pack_batch` x `--pack_length`, then the demo's FMT pack on tiny_2.
mfu    the 1B config (t5x_configs/models/1b.gin: bf16 compute, float32 master weights, remat,
       vocab 256K) trained by `trainer.jit_steps`, FMT and LoRA (r 8 on q, k, v, o) with AdamW,
       `--mfu_batch` x `--mfu_length` tokens: tok/s, model TFLOP/s and MFU against the measured
       peak (train_throughput's FLOP count: 6 per weight, 4 per frozen weight under LoRA, attention
       in full).
Figures go to stdout and, as JSON, to `--json` (each section as it ends).
"""

import argparse
import json
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import llama_shapes, packed_runs, train_throughput  # noqa: E402
from ft_scaling.methods import full  # noqa: E402

RESULTS: dict = {}
GIB = 2**30


def gemm_section(args) -> None:
    size = 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, a))
    best = train_throughput._best(lambda: jax.block_until_ready(matmul(a, a)), 10)
    RESULTS["bf16_peak_tflops"] = 2 * size**3 / best / 1e12
    print(f"\nbf16 GEMM peak ({size}^3, best of 10): {RESULTS['bf16_peak_tflops']:.0f} TFLOP/s")


def pack_section(args) -> None:
    runs_of = packed_runs.lora_methods(args.ranks, args.runs)
    cases = [
        ("25m LoRA", llama_shapes.SHAPES["25m"], runs_of, args.small_batch, args.small_length),
        (
            f"{args.model} LoRA",
            packed_runs.tiny_config(args.model),
            runs_of,
            args.pack_batch,
            args.pack_length,
        ),
        (
            "tiny_2 FMT",
            packed_runs.tiny_config("tiny_2"),
            [full.FullModelTuning()] * args.runs,
            16,
            96,
        ),
    ]
    for label, config, methods, batch, length in cases:
        if _out_of_time(args, f"pack {label}"):
            return
        start = time.perf_counter()
        runs = packed_runs.build(config, methods, batch, length)
        print(f"\n{label}: built in {time.perf_counter() - start:.1f} s", flush=True)
        ratio = packed_runs.throughput(label, runs, args.repeats, args.steps)
        RESULTS[f"pack {label}"] = {
            "runs": len(methods),
            "tokens_per_run_step": batch * length,
            "packed_over_one_by_one": ratio,
        }
        del runs
        _dump(args)


def mfu_section(args) -> None:
    config = packed_runs.tiny_config(args.model)
    peak = RESULTS.get("bf16_peak_tflops")
    for method in ("fmt", "lora"):
        if _out_of_time(args, f"mfu {args.model} {method}"):
            return
        start = time.perf_counter()
        variant = train_throughput.ours(
            config, method, "bfloat16", batch=args.mfu_batch, length=args.mfu_length
        )
        variant.step()  # compile
        shape = f"{args.mfu_batch} x {args.mfu_length} tokens"
        took, peak_gib = time.perf_counter() - start, variant.static_peak_bytes / GIB
        print(
            f"\n{args.model} {method} bf16, {shape}: built and compiled in {took:.1f} s; "
            f"XLA peak {peak_gib:.1f} GiB",
            flush=True,
        )
        times = []
        for _ in range(args.mfu_steps):
            begin = time.perf_counter()
            variant.step()
            times.append(time.perf_counter() - begin)
        seconds = statistics.median(times)
        speed = args.mfu_batch * args.mfu_length / seconds
        tflops = variant.flops_per_token * speed / 1e12
        row = {"step_s": seconds, "tokens_per_s": speed, "model_tflops": tflops}
        line = f"  step {seconds * 1e3:.1f} ms (median of {len(times)}), {speed:,.0f} tok/s, "
        line += f"{tflops:.0f} TFLOP/s"
        if peak:
            row["mfu"] = tflops / peak
            line += f", MFU {row['mfu']:.1%} of the measured {peak:.0f}"
        print(line, flush=True)
        RESULTS[f"mfu {args.model} {method}"] = row
        del variant
        _dump(args)


def _out_of_time(args, what: str) -> bool:
    left = args.budget_s - (time.perf_counter() - START)
    if left < 60:
        print(f"\nskipped {what}: {left:.0f} s of the budget left", flush=True)
        return True
    return False


def _dump(args) -> None:
    if args.json:
        with open(args.json + ".tmp", "w") as handle:
            json.dump(RESULTS, handle, indent=1)
        os.replace(args.json + ".tmp", args.json)


SECTIONS = {"gemm": gemm_section, "pack": pack_section, "mfu": mfu_section}
START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--model", default="1b", help="t5x_configs/models/NAME.gin: pack, mfu")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--small_batch", type=int, default=8)
    parser.add_argument("--small_length", type=int, default=256)
    parser.add_argument("--pack_batch", type=int, default=4)
    parser.add_argument("--pack_length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mfu_batch", type=int, default=16)
    parser.add_argument("--mfu_length", type=int, default=1024)
    parser.add_argument("--mfu_steps", type=int, default=8)
    parser.add_argument("--budget_s", type=float, default=540)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    device = jax.devices()[0]
    RESULTS["device"] = f"{device.platform} {getattr(device, 'device_kind', '')}"
    print(f"jax {jax.__version__}, {RESULTS['device']}, {os.cpu_count()} CPUs", flush=True)
    for name in args.sections:
        try:
            SECTIONS[name](args)
        except Exception:  # one failed section must not cost the others' device time
            traceback.print_exc()
            RESULTS.setdefault("failed", []).append(name)
    _dump(args)


if __name__ == "__main__":
    main()
