"""Peak memory and step time of one train step per finetuning method, on the same model.

    python benchmarks/method_memory.py                       # paper-shaped model, 4 x 64 tokens
    python benchmarks/method_memory.py --model tiny_4 --batch 8 --length 128

Every method runs the trainer's own compiled train step (`trainer.jit_steps`): same model, same
batch, same optimizer (Adafactor, the paper's). Memory is XLA's account of the compiled step
(`Compiled.memory_analysis()`): peak = arguments + outputs + temporaries - donated aliases, i.e.
everything live during the step: params (frozen and trainable), optimizer state, gradients and
the activations kept for the backward pass. On CPU the runtime offers no allocator statistics, so
this static figure is the one comparable across methods; on an accelerator the same numbers
bound the allocator's peak. Step time is the median of `--steps` timed steps after one warm-up.
"""

import argparse
import dataclasses
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.config import flags
from ft_scaling.methods import base, bitfit, freeze, full, lora, prompt
from ft_scaling.models import configs, decoder
from ft_scaling.train import losses, optimizers, partitioning, trainer

SETTINGS = optimizers.OptimizerSettings("adafactor", 0.0, 1.0)
MIB = 2**20
# The paper's shape family (PAPER.md §1, Table 3: head dim 256, FFN = 4 x model dim, multi-query
# attention) at 2 layers and model dim 1024, so that, as at 1B and above, the weights and their
# gradients rather than a tiny model's activations dominate a step's memory.
PAPER_SHAPE = configs.ModelConfig(
    vocab_size=4096,
    num_layers=2,
    num_heads=4,
    num_kv_heads=1,
    head_dim=256,
    embed_dim=1024,
    mlp_dim=4096,
    remat=True,
)


def methods(prompt_length: int, rank: int) -> list[base.Method]:
    return [
        full.FullModelTuning(),
        prompt.PromptTuning(prompt_length=prompt_length),
        lora.LoRA(rank=rank),
        bitfit.BitFit(),
        freeze.LayerFreeze(top_k=1),
    ]


def batch_of(config: configs.ModelConfig, batch: int, length: int) -> dict:
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, config.vocab_size, (batch, length)), jnp.int32)
    return {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": jnp.roll(tokens, -1, axis=1),
        "decoder_loss_weights": jnp.ones((batch, length), jnp.float32),
        "decoder_segment_ids": jnp.ones((batch, length), jnp.int32),
        "decoder_positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape),
    }


def measure(method: base.Method, config, batch: dict, steps: int) -> dict:
    """Compiled memory (bytes) and median step time (s) of `method`'s train step."""
    model = method.wrap(decoder.Decoder(config))
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    length = batch["decoder_input_tokens"].shape[1]
    params = trainer.init_params(model, jax.random.PRNGKey(0), length, mesh, rules)
    mask = method.trainable_mask(params)
    state, frozen = trainer.create_state(params, mask, SETTINGS, jax.random.PRNGKey(1), mesh)
    train_step, _ = trainer.jit_steps(losses.LMLoss(model), SETTINGS, mesh, rules, state, frozen)
    learning_rate = jnp.float32(1e-3)
    # The same context the trainer's wrapper sets (mesh + logical rules) for lowering.
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = train_step.__wrapped__.lower(state, frozen, batch, learning_rate).compile()
    memory = compiled.memory_analysis()
    state, metrics = train_step(state, frozen, batch, learning_rate)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = train_step(state, frozen, batch, learning_rate)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    return {
        "trainable": base.trainable_param_count(method, params),
        "peak": peak,
        "temp": memory.temp_size_in_bytes,
        "step_s": statistics.median(times),
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="paper_shape", help="'paper_shape' or t5x_configs/models/<model>.gin"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompt_length", type=int, default=100)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument(
        "--remat", type=int, default=1, help="rematerialise blocks, as the paper-size gins do"
    )
    args = parser.parse_args()
    if args.model == "paper_shape":
        config = dataclasses.replace(PAPER_SHAPE, remat=bool(args.remat))
    else:
        remat = f"ModelConfig.remat = {bool(args.remat)}"
        flags.parse_gin([f"t5x_configs/models/{args.model}.gin"], [remat])
        config = configs.ModelConfig()
    batch = batch_of(config, args.batch, args.length)
    print(
        f"model {args.model}: {configs.param_count(config):,} params; batch {args.batch} x "
        f"{args.length} tokens; remat {config.remat}; {jax.devices()[0].platform}; "
        f"optimizer {SETTINGS.kind}; |P| {args.prompt_length}, r {args.rank}"
    )
    header = f"{'method':8} {'trainable':>11} {'peak MiB':>9} {'temp MiB':>9} {'step ms':>8}"
    print(header + f" {'peak/FMT':>9} {'time/FMT':>9}")
    rows = {}
    for method in methods(args.prompt_length, args.rank):
        rows[method.name] = row = measure(method, config, batch, args.steps)
        ref = rows["fmt"]
        print(
            f"{method.name:8} {row['trainable']:>11,} {row['peak'] / MIB:>9.1f} "
            f"{row['temp'] / MIB:>9.1f} {1e3 * row['step_s']:>8.1f} "
            f"{row['peak'] / ref['peak']:>9.3f} {row['step_s'] / ref['step_s']:>9.3f}"
        )
    for name in ("prompt", "lora"):
        if rows[name]["peak"] >= rows["fmt"]["peak"]:
            raise SystemExit(f"{name} does not use less memory than FMT: {rows}")


if __name__ == "__main__":
    main()
