"""Packed runs vs the same runs one by one: a study's runs/min, step tokens/s, peak memory.

    python benchmarks/packed_runs.py                                # all sections, ~9 min
    python benchmarks/packed_runs.py --sections study --preset '' --pack 8   # the full demo
    python benchmarks/packed_runs.py --sections tokens --repeats 5 --steps 4
    python benchmarks/packed_runs.py --sections memory --batch 8 --length 256

One process; every figure is a ratio against a reference measured in the same run.

tokens   A LoRA pack of `--runs` runs (ranks cycling through `--ranks`, padded to the largest;
         own seeds, learning rates and random batches of `--batch` x `--length` tokens each;
         AdamW, clipping at 1.0) on the 25m benchmark model (llama_shapes.py), stepped by the
         packed step (`packed_step.jit_packed_steps`: one program, the frozen base read once),
         vs the same runs stepped one after another by the solo step every run uses
         (`trainer.jit_steps`). The two modes alternate in timed rounds (each: `--steps` steps
         of every run), after one untimed warm-up round each (compiles excluded); every step
         ends in block_until_ready. Then the same for an FMT pack on a tiny model (`--fmt_model`,
         the demo's batch shape), whose whole param tree is on the run axis.
study    The demo study (`--preset`, default the smoke preset; '' = the full demo), run by
         `ft-scaling study` once per mode and round in a fresh directory, the modes
         alternating: its finetuning phase's runs per minute (the line the study prints)
         with Study.pack_runs = `--pack` vs 1. Pretraining, the same in both, is not counted.
memory   XLA's account of the compiled steps (`Compiled.memory_analysis()`: arguments + outputs
         + temporaries - donated aliases) of the pack vs one solo run of the pack's padded rank,
         and (`--rss 1`) the growth of a fresh process's resident set from before the base
         model exists to the peak of steady-state steps, one subprocess per mode.
"""

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402

from benchmarks import llama_shapes  # noqa: E402
from benchmarks.train_throughput import proc_status  # noqa: E402
from ft_scaling.config import flags  # noqa: E402
from ft_scaling.methods import full, lora  # noqa: E402
from ft_scaling.models import configs, decoder  # noqa: E402
from ft_scaling.train import (  # noqa: E402
    losses,
    optimizers,
    pack_layout,
    packed_step,
    partitioning,
    trainer,
)

MIB = 2**20
SETTINGS = optimizers.OptimizerSettings("adamw", 0.0, 1.0)
LORA_ALPHA = 4.0  # the demo's (gin/methods/lora.gin): scale 1 at r = 4
MEMORY_TARGET = 1.5  # issue 17: a LoRA pack of 8 within 1.5x one run's peak


# --- Building the runs -----------------------------------------------------------------------


@dataclasses.dataclass
class Runs:
    """K runs of one base model, as a pack and as K solo states, with both compiled steps."""

    config: configs.ModelConfig
    methods: list
    batch: int
    length: int
    mesh: object
    rules: tuple
    frozen: dict = None
    solo_states: list = None
    solo_batches: list = None
    pack_state: object = None
    pack_variables: dict = None
    pack_batch: dict = None
    rates: list = None

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one step of every run (K x batch x length)."""
        return len(self.methods) * self.batch * self.length

    def solo_fn(self, index: int):
        loss = losses.LMLoss(self.methods[index].wrap(decoder.Decoder(self.config)))
        state = self.solo_states[index]
        return trainer.jit_steps(loss, SETTINGS, self.mesh, self.rules, state, self.frozen)[0]

    def pack_fn(self):
        model = self.layout().model
        return packed_step.jit_packed_steps(
            losses.LMLoss(model),
            SETTINGS,
            self.mesh,
            self.rules,
            self.pack_state,
            self.frozen,
            run_variables=self.pack_variables,
        )[0]

    def layout(self):
        return pack_layout.layout(decoder.Decoder(self.config), self.methods, SETTINGS)


def build(config, methods, batch: int, length: int, solo: bool = True, pack: bool = True) -> Runs:
    """Random base params, each run's own random method params, rates and batch."""
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    runs = Runs(config, list(methods), batch, length, mesh, rules)
    base = _base_params(config, length, mesh, rules)
    built = [_solo_state(m, seed, base, runs) for seed, m in enumerate(methods)]
    runs.frozen = built[0][1]  # the same base arrays in every run
    states = [b[0] for b in built]
    runs.rates = [np.float32(1e-3 * (1 + 0.1 * k)) for k in range(len(methods))]
    batches = [_batch(config, batch, length, seed) for seed in range(len(methods))]
    if pack:
        layout = runs.layout()
        runs.pack_state = packed_step.stack(
            [layout.to_slot(s, m) for s, m in zip(states, methods, strict=True)]
        )
        runs.pack_variables = packed_step.stack([layout.variables(m, mesh) for m in methods])
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)
        runs.pack_batch = jax.device_put(stacked, packed_step.stacked_batch_sharding(mesh, rules))
    if solo:
        runs.solo_states = states
        sharding = trainer.example_sharding(mesh, rules)
        runs.solo_batches = [jax.device_put(b, sharding) for b in batches]
    return runs


def _base_params(config, length, mesh, rules) -> dict:
    """Random base params drawn on the host (no init compile); norm scales 1."""
    values = np.random.default_rng(99)

    def draw(path, leaf):
        if path[-1] == "scale":
            return np.ones(leaf.shape, np.float32)
        return (0.02 * values.standard_normal(leaf.shape, np.float32)).astype(leaf.dtype)

    return _host_params(decoder.Decoder(config), length, mesh, rules, draw)


def _host_params(model, length, mesh, rules, draw) -> dict:
    boxed = trainer.abstract_params(model, length)
    shardings = traverse_util.flatten_dict(
        nn.meta.unbox(partitioning.param_shardings(boxed, mesh, rules))
    )
    leaves = traverse_util.flatten_dict(nn.meta.unbox(boxed))
    drawn = {p: jax.device_put(draw(p, x), shardings[p]) for p, x in leaves.items()}
    return traverse_util.unflatten_dict(drawn)


def _solo_state(method, seed: int, base: dict, runs: Runs):
    """(state, frozen) of one run: the base's arrays (shared) + its own method params."""
    values = np.random.default_rng(seed)
    flat_base = traverse_util.flatten_dict(base)

    def draw(path, leaf):
        if path in flat_base and not isinstance(method, full.FullModelTuning):
            return flat_base[path]  # the same frozen array in every run
        if path in flat_base:
            return np.asarray(flat_base[path])  # FMT: a copy per run (its state is donated)
        return (0.02 * values.standard_normal(leaf.shape, np.float32)).astype(leaf.dtype)

    model = method.wrap(decoder.Decoder(runs.config))
    params = _host_params(model, runs.length, runs.mesh, runs.rules, draw)
    mask = method.trainable_mask(params)
    rng = jax.random.PRNGKey(seed)
    return trainer.create_state(params, mask, SETTINGS, rng, runs.mesh)


def _batch(config, batch: int, length: int, seed: int) -> dict:
    tokens = np.random.default_rng(1000 + seed).integers(3, config.vocab_size, (batch, length + 1))
    return {
        "decoder_input_tokens": tokens[:, :-1].astype(np.int32),
        "decoder_target_tokens": tokens[:, 1:].astype(np.int32),
        "decoder_loss_weights": np.ones((batch, length), np.float32),
        "decoder_segment_ids": np.ones((batch, length), np.int32),
        "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)),
    }


def lora_methods(ranks, count: int) -> list:
    return [lora.LoRA(rank=ranks[k % len(ranks)], alpha=LORA_ALPHA) for k in range(count)]


def tiny_config(name: str) -> configs.ModelConfig:
    flags.parse_gin([f"t5x_configs/models/{name}.gin"], [])
    return configs.ModelConfig()


# --- Section: tokens/s -----------------------------------------------------------------------


@dataclasses.dataclass
class Mode:
    name: str
    round: Callable[[int], None]  # runs `steps` steps of every run
    times: list = dataclasses.field(default_factory=list)


def packed_steps(runs: Runs) -> Callable[[int], None]:
    """steps -> that many packed steps (all K runs at once; the state carried between calls)."""
    fn, rates = runs.pack_fn(), jnp.asarray(runs.rates)

    def packed(steps: int):
        for _ in range(steps):
            runs.pack_state, metrics = fn(
                runs.pack_state, runs.frozen, runs.pack_batch, rates, runs.pack_variables
            )
            jax.block_until_ready(metrics["loss"])

    return packed


def solo_steps(runs: Runs) -> Callable[[int], None]:
    """steps -> that many solo steps of run 0, then of run 1, ... (one run after another)."""
    fns = [runs.solo_fn(k) for k in range(len(runs.methods))]

    def one_by_one(steps: int):
        for k, fn in enumerate(fns):
            for _ in range(steps):
                runs.solo_states[k], metrics = fn(
                    runs.solo_states[k], runs.frozen, runs.solo_batches[k], runs.rates[k]
                )
                jax.block_until_ready(metrics["loss"])

    return one_by_one


def interleave(mode_list: list[Mode], repeats: int, steps: int) -> None:
    for mode in mode_list:  # compiles and first touch, untimed
        start = time.perf_counter()
        mode.round(1)
        print(f"  warm-up {mode.name}: {time.perf_counter() - start:.1f} s (compiles)", flush=True)
    for index in range(repeats):
        # Alternate which mode goes first, so a drift in machine load hits both alike.
        for mode in mode_list if index % 2 == 0 else mode_list[::-1]:
            start = time.perf_counter()
            mode.round(steps)
            mode.times.append(time.perf_counter() - start)
        line = ", ".join(f"{m.name} {m.times[-1]:.2f} s" for m in mode_list)
        print(f"  round {index + 1}/{repeats} ({steps} steps of every run): {line}", flush=True)


def throughput(label: str, runs: Runs, repeats: int, steps: int) -> float:
    """Prints tokens/s of both modes and packed / one by one; returns the ratio."""
    print(
        f"\n{label}: {configs.param_count(runs.config):,} params, {len(runs.methods)} runs of "
        f"{runs.batch} x {runs.length} tokens",
        flush=True,
    )
    mode_list = [Mode("packed", packed_steps(runs)), Mode("one by one", solo_steps(runs))]
    interleave(mode_list, repeats, steps)
    tokens = runs.tokens_per_step * steps
    speed = {}
    for mode in mode_list:
        speed[mode.name] = tokens / statistics.median(mode.times)
        low, high = tokens / max(mode.times), tokens / min(mode.times)
        print(f"  {mode.name:11} {speed[mode.name]:>8.0f} tok/s  ({low:.0f}-{high:.0f})")
    ratio = speed["packed"] / speed["one by one"]
    print(f"  packed / one by one: {ratio:.2f}x")
    return ratio


def tokens_section(args) -> None:
    config = llama_shapes.SHAPES["25m"]
    methods = lora_methods(args.ranks, args.runs)
    ranks = "/".join(str(m.rank) for m in methods)
    runs = build(config, methods, args.batch, args.length)
    throughput(f"25m LoRA (ranks {ranks}, AdamW)", runs, args.repeats, args.steps)
    del runs
    if args.fmt_model:
        config = tiny_config(args.fmt_model)
        methods = [full.FullModelTuning()] * args.runs
        runs = build(config, methods, args.fmt_batch, args.fmt_length)
        throughput(f"{args.fmt_model} FMT (AdamW)", runs, args.repeats, args.steps)


# --- Section: peak memory --------------------------------------------------------------------


def compiled_peak(fn, *args) -> dict:
    """XLA's memory account (bytes) of `fn` (a trainer/packed_step wrapper) on `args`."""
    mesh, rules = args[-1]
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        analysis = fn.__wrapped__.lower(*args[:-1]).compile().memory_analysis()
    parts = {
        "arguments": analysis.argument_size_in_bytes,
        "outputs": analysis.output_size_in_bytes,
        "temporaries": analysis.temp_size_in_bytes,
        "aliased": analysis.alias_size_in_bytes,
    }
    parts["peak"] = parts["arguments"] + parts["outputs"] + parts["temporaries"] - parts["aliased"]
    return parts


def memory_config(args) -> configs.ModelConfig:
    return dataclasses.replace(llama_shapes.SHAPES["25m"], remat=bool(args.remat))


def memory_section(args) -> None:
    config = memory_config(args)
    methods = lora_methods(args.ranks, args.runs)
    largest = max(m.rank for m in methods)
    one = lora.LoRA(rank=largest, alpha=LORA_ALPHA)  # the pack's padded rank, alone
    print(
        f"\n25m LoRA peak memory: pack of {len(methods)} (padded rank {largest}) vs one run of "
        f"rank {largest}; {args.batch} x {args.length} tokens per run; remat {config.remat}",
        flush=True,
    )
    pack = build(config, methods, args.batch, args.length, solo=False)
    solo = build(config, [one], args.batch, args.length, pack=False)
    rates = jnp.asarray(pack.rates)
    pack_args = (pack.pack_state, pack.frozen, pack.pack_batch, rates, pack.pack_variables)
    solo_args = (solo.solo_states[0], solo.frozen, solo.solo_batches[0], jnp.float32(1e-3))
    context = (pack.mesh, pack.rules)
    peaks = {
        "pack": compiled_peak(pack.pack_fn(), *pack_args, context),
        "one run": compiled_peak(solo.solo_fn(0), *solo_args, context),
    }
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(solo.frozen))
    del pack, solo, pack_args, solo_args
    print(f"  {'XLA MiB':10} " + " ".join(f"{k:>11}" for k in peaks["pack"]))
    for name, parts in peaks.items():
        print(f"  {name:10} " + " ".join(f"{v / MIB:>11.1f}" for v in parts.values()))
    ratio = peaks["pack"]["peak"] / peaks["one run"]["peak"]
    _verdict("XLA peak", ratio)
    # Peak = base + K x per-run: the target holds while K - 1 further runs fit in half a run.
    per_run = (peaks["pack"]["peak"] - peaks["one run"]["peak"]) / (len(methods) - 1)
    fits = 1 + int((MEMORY_TARGET - 1) * peaks["one run"]["peak"] // max(per_run, 1))
    print(
        f"  each further run adds {per_run / MIB:.1f} MiB (its state and activations); the "
        f"frozen base is {base_bytes / MIB:.1f} MiB, once; at this shape a pack of <= {fits} "
        f"stays within {MEMORY_TARGET}x"
    )
    if args.rss:
        rss = {name: _rss_growth(name, args) for name in ("pack", "one run")}
        print(f"  RSS growth MiB: pack {rss['pack']:.0f}, one run {rss['one run']:.0f}")
        _verdict("RSS growth", rss["pack"] / rss["one run"])


def _verdict(what: str, ratio: float) -> None:
    verdict = "pass" if ratio <= MEMORY_TARGET else "FAIL"
    print(f"  {what} pack / one run: {ratio:.2f}x (target <= {MEMORY_TARGET}x: {verdict})")


def _rss_growth(mode: str, args) -> float:
    """Growth of a fresh process's resident set (MiB): before the base model -> step peak."""
    argv = [sys.executable, __file__, "--_rss_of", mode, "--batch", str(args.batch)]
    argv += ["--length", str(args.length), "--runs", str(args.runs)]
    argv += ["--ranks", *map(str, args.ranks), "--remat", str(args.remat)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"RSS run of {mode!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])["rss_growth_mib"]


def _rss_child(mode: str, args) -> None:
    jnp.ones(1).block_until_ready()  # the runtime up before the baseline
    baseline = proc_status("VmRSS")
    config = memory_config(args)
    methods = lora_methods(args.ranks, args.runs)
    if mode == "one run":
        methods = [lora.LoRA(rank=max(m.rank for m in methods), alpha=LORA_ALPHA)]
    runs = build(config, methods, args.batch, args.length, solo=mode != "pack", pack=mode == "pack")
    step = packed_steps(runs) if mode == "pack" else solo_steps(runs)
    step(2)
    with open("/proc/self/clear_refs", "w") as handle:  # VmHWM back to the current RSS
        handle.write("5")
    step(2)
    peak = max(proc_status("VmHWM"), proc_status("VmRSS"))
    print(json.dumps({"rss_growth_mib": (peak - baseline) / 1024}))


# --- The demo's finetuning phase ------------------------------------------------------------

PHASE_LINE = re.compile(r"finetuning phase: (\d+) runs (.+?) in ([\d.]+) s \(([\d.]+) runs/min\)")
RUNS_TARGET = 4.0  # issue 17: runs per minute of the demo's finetuning phase, packed / solo


def study_section(args) -> None:
    """`ft-scaling study` on the demo (or a preset of it), one subprocess per mode and
    repeat, the modes alternating; each study's own 'finetuning phase' line gives its runs
    per minute (its pretraining, the same in both modes, is not counted)."""
    preset = f" --preset={args.preset}" if args.preset else ""
    print(
        f"\ndemo study{preset or ' (full)'}, finetuning phase: packs of {args.pack} vs one by "
        f"one, {args.study_repeats} round(s), modes alternating",
        flush=True,
    )
    rates = {"one by one": [], f"packs of {args.pack}": []}
    with tempfile.TemporaryDirectory(prefix="packed_runs_") as scratch:
        for repeat in range(args.study_repeats):
            modes = [(1, "one by one"), (args.pack, f"packs of {args.pack}")]
            for pack, label in modes if repeat % 2 == 0 else modes[::-1]:
                out = os.path.join(scratch, f"{repeat}_{pack}")
                runs, seconds, rate = _study_phase(out, args.preset, pack)
                rates[label].append(rate)
                print(f"  {label:12} {runs} runs in {seconds:7.1f} s: {rate:6.2f} runs/min")
                shutil.rmtree(out, ignore_errors=True)
    solo, packed = (statistics.median(v) for v in rates.values())
    ratio = packed / solo
    verdict = "pass" if ratio >= RUNS_TARGET else "FAIL"
    print(f"  runs/min packed / one by one: {ratio:.2f}x (target >= {RUNS_TARGET}x: {verdict})")


def _study_phase(out: str, preset: str, pack: int) -> tuple[int, float, float]:
    main = "import sys; from ft_scaling.study.main import main; sys.exit(main())"
    argv = [sys.executable, "-c", main, "--gin_file=gin/studies/demo.gin"]
    argv += [f"--out={out}", "--no_report", f"--gin.Study.pack_runs={pack}"]
    argv += [f"--preset={preset}"] if preset else []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(argv, capture_output=True, text=True, cwd=root, check=False)
    found = PHASE_LINE.findall(done.stderr)
    if done.returncode or not found:
        raise RuntimeError(f"study in {out} (pack_runs={pack}) failed:\n{done.stderr[-3000:]}")
    runs, _, seconds, rate = found[-1]
    return int(runs), float(seconds), float(rate)


# --- Entry point -----------------------------------------------------------------------------

SECTIONS = {"tokens": tokens_section, "memory": memory_section, "study": study_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--runs", type=int, default=8, help="K, runs per pack")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16], help="LoRA, cycled")
    parser.add_argument("--batch", type=int, default=2, help="25m: examples per run and step")
    parser.add_argument("--length", type=int, default=128, help="25m: tokens per example")
    parser.add_argument("--fmt_model", default="tiny_2", help="t5x_configs/models/; '' skips")
    parser.add_argument("--fmt_batch", type=int, default=16, help="the demo's batch")
    parser.add_argument("--fmt_length", type=int, default=96, help="the demo's 48 + 48 tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per mode")
    parser.add_argument("--steps", type=int, default=1, help="steps of every run per round")
    parser.add_argument("--remat", type=int, default=0, help="memory: rematerialise blocks")
    parser.add_argument("--rss", type=int, default=1, help="also measure RSS (2 subprocesses)")
    parser.add_argument("--preset", default="smoke", help="study: demo preset ('' = full)")
    parser.add_argument("--pack", type=int, default=8, help="study: Study.pack_runs")
    parser.add_argument("--study_repeats", type=int, default=1, help="study: rounds per mode")
    parser.add_argument("--_rss_of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._rss_of:
        return _rss_child(args._rss_of, args)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    for name in args.sections:
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
