"""Importing a Hugging Face checkpoint: ours vs `transformers.from_pretrained`, then training it.

    pip install -e ".[bench]"
    python benchmarks/hf_import.py                       # 110m Llama, ~10 min on 2 cores
    python benchmarks/hf_import.py --repeats 1 --rounds 1 --steps 2     # quick look

1. A Llama-shaped checkpoint (`llama_shapes.SHAPES[--size]`, float32, random weights) is
   written by `LlamaForCausalLM.save_pretrained` into a temporary directory (or --checkpoint).
2. Import, each in a fresh process, `--repeats` times alternating: ours
   (`ft_scaling.models.hf.load_pretrained`, params placed on the device) vs
   `AutoModelForCausalLM.from_pretrained` (float32). Reported: wall time of the call (median,
   min) and the peak host RSS growth during it (VmHWM reset by /proc/self/clear_refs before,
   minus VmRSS before), as a multiple of the model's float32 bytes, and again once every
   weight has been read (transformers keeps weights as views of the memory-mapped file, whose
   pages become resident only when read); ratios ours / HF.
3. Train steps on the imported model (batch 8 x 256, AdamW, clipping 1.0, as
   train_throughput.py): our compiled step (`trainer.jit_steps`) on the imported config and
   params vs the HF model from `from_pretrained`, FMT and LoRA (r 8, alpha 16, attention q, k,
   v, o; PEFT for HF), interleaved with train_throughput's timers. tokens/s and ours / HF.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import llama_shapes, train_throughput  # noqa: E402

LENGTH = train_throughput.LENGTH
_CHILD = """
import json, sys, time
framework, directory = sys.argv[1], sys.argv[2]

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

if framework == "ours":
    import jax
    from ft_scaling.models.hf import load_pretrained
    jax.numpy.ones(4).block_until_ready()  # the runtime up before the baseline
    def load():
        config, params = load_pretrained(directory)
        jax.block_until_ready(params)
        return params
    def touch(params):
        return float(sum(float(x.sum()) for x in jax.tree.leaves(params)))
else:
    import torch, transformers
    def load():
        return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    def touch(model):
        return float(sum(float(p.sum()) for p in model.parameters()))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = status("VmRSS:")
start = time.perf_counter()
loaded = load()
seconds = time.perf_counter() - start
growth = status("VmHWM:") - before
touch(loaded)  # every weight read once: pages of a memory-mapped file become resident
print(json.dumps({"seconds": seconds, "growth": growth, "touched": status("VmHWM:") - before}))
"""


def write_checkpoint(size: str, directory: str) -> int:
    """LlamaForCausalLM of `size` saved by transformers; returns its float32 bytes."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        **llama_shapes.hf_llama_kwargs(llama_shapes.SHAPES[size], LENGTH),
        architectures=["LlamaForCausalLM"],
    )
    model = transformers.LlamaForCausalLM(hf_config)
    model.save_pretrained(directory)
    return 4 * sum(p.numel() for p in model.parameters())


def measure_import(directory: str, repeats: int) -> dict[str, list[dict]]:
    """{framework: [{'seconds', 'growth'}, ...]}, fresh processes, frameworks alternating."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = {"ours": [], "HF": []}
    for _ in range(repeats):
        for framework in found:
            argv = [sys.executable, "-c", _CHILD, framework, directory]
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                raise RuntimeError(f"{framework} import failed:\n{done.stderr[-2000:]}")
            found[framework].append(json.loads(lines[-1]))
    return found


def report_import(found: dict, model_bytes: int) -> None:
    mib = train_throughput.MIB
    print(f"\nimport of {model_bytes / mib:.0f} MiB (float32), {len(found['ours'])} runs each")
    print(
        f"{'':6} {'median s':>9} {'min s':>7} {'peak RSS growth MiB':>20} {'x model':>8} "
        f"{'+ every weight read MiB':>24} {'x model':>8}"
    )
    summary = {}
    for framework, runs in found.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        growth, touched = (max(r[key] for r in runs) for key in ("growth", "touched"))
        summary[framework] = (seconds, growth, touched)
        print(
            f"{framework:6} {seconds:>9.2f} {min(r['seconds'] for r in runs):>7.2f} "
            f"{growth / mib:>20.0f} {growth / model_bytes:>8.2f} "
            f"{touched / mib:>24.0f} {touched / model_bytes:>8.2f}"
        )
    ours, hf = summary["ours"], summary["HF"]
    print(
        f"ours / HF: time {ours[0] / hf[0]:.2f}x, peak memory {ours[1] / hf[1]:.2f}x "
        f"(after every weight is read: {ours[2] / hf[2]:.2f}x)"
    )


def ours_imported(directory: str, method: str) -> train_throughput.Variant:
    """Our compiled step on the imported config and params (method params fresh)."""
    import jax
    import jax.numpy as jnp

    from ft_scaling.methods import full, lora
    from ft_scaling.models import configs, decoder
    from ft_scaling.models.hf import load_pretrained
    from ft_scaling.train import checkpoints, losses, optimizers, partitioning, trainer

    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    config, imported = load_pretrained(directory, mesh, rules)
    chosen = full.FullModelTuning()
    if method == "lora":
        targets = ("attention/(query|key|value|out)$",)
        chosen = lora.LoRA(
            rank=train_throughput.RANK, alpha=train_throughput.ALPHA, targets=targets
        )
    model = chosen.wrap(decoder.Decoder(config))
    fresh = trainer.init_params(model, jax.random.PRNGKey(0), LENGTH, mesh, rules)
    params = checkpoints.initial_params(fresh, imported, chosen.is_method_param)
    settings = optimizers.OptimizerSettings("adamw", 0.0, 1.0)
    state, frozen = trainer.create_state(
        params, chosen.trainable_mask(params), settings, jax.random.PRNGKey(1), mesh
    )
    step_fn, _ = trainer.jit_steps(losses.LMLoss(model), settings, mesh, rules, state, frozen)
    batch, learning_rate, box = train_throughput._our_batch(jnp), jnp.float32(1e-4), [state]

    def step():
        box[0], metrics = step_fn(box[0], frozen, batch, learning_rate)
        jax.block_until_ready(metrics["loss"])

    flops = configs.train_flops_per_token(config, LENGTH)
    if method == "lora":
        flops = train_throughput.lora_flops_per_token(config)
    return train_throughput.Variant(f"ours {method} (imported)", step, flops)


def hf_imported(directory: str, method: str) -> train_throughput.Variant:
    """The `from_pretrained` model (+ PEFT LoRA) with torch AdamW, eager float32."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    step = train_throughput.hf_step(model, method)
    return train_throughput.Variant(f"HF {method} (from_pretrained)", step, 0.0)


def report_steps(variants: list) -> None:
    tokens = train_throughput.BATCH * LENGTH
    print(f"\ntrain step on the imported model, batch {train_throughput.BATCH} x {LENGTH}")
    print(f"{'variant':28} {'tok/s':>8} {'(min-max)':>15} {'ours/HF':>8}")
    by_name = {v.name: v for v in variants}
    for v in variants:
        speed = tokens / statistics.median(v.times)
        low, high = tokens / max(v.times), tokens / min(v.times)
        twin = by_name.get(v.name.replace("ours", "HF").replace("(imported)", "(from_pretrained)"))
        ratio = "-"
        if twin is not None and v is not twin:
            ratio = f"{statistics.median(twin.times) / statistics.median(v.times):.2f}x"
        print(f"{v.name:28} {speed:>8.0f} {f'({low:.0f}-{high:.0f})':>15} {ratio:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="110m", choices=sorted(llama_shapes.SHAPES))
    parser.add_argument("--checkpoint", default=None, help="reuse (or write) this directory")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process imports each")
    parser.add_argument("--methods", nargs="*", default=["fmt", "lora"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="per round; the first is dropped")
    args = parser.parse_args()
    directory = args.checkpoint or tempfile.mkdtemp(prefix="hf_import_bench_")
    start = time.perf_counter()
    model_bytes = write_checkpoint(args.size, directory)
    print(f"{args.size}: wrote {directory} in {time.perf_counter() - start:.1f} s", flush=True)
    report_import(measure_import(directory, args.repeats), model_bytes)
    if not args.methods:
        return
    from ft_scaling.train import host_memory

    host_memory.keep_freed_memory()  # as the trainer does (and train_throughput.py)
    variants = []
    for method in args.methods:
        variants += [ours_imported(directory, method), hf_imported(directory, method)]
    train_throughput.interleave(variants, args.rounds, args.steps)
    report_steps(variants)


if __name__ == "__main__":
    main()
