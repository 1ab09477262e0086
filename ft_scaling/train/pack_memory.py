"""How many runs fit in a pack: the base once + K x (trainable + optimizer + activations).

    slots, message = fit(requested, frozen, slot_state, run)   # message: for the log

An estimate, stated as one: the frozen base and each run's trainable params and optimizer
state are counted exactly (their leaves' bytes); a run's activations are those a backward
pass keeps per Transformer block without rematerialisation, 34·s·b·h + 5·a·s²·b bytes at
16 bits (Korthikanti et al. 2022, §4.1), doubled for float32, plus its float32 logits and
their gradient; with remat a block keeps only its input. Everything is taken as evenly
sharded over the mesh's devices, and a pack may use 90% of their memory (on CPU, where JAX
reports none, of the host's physical memory, which all its devices share).
"""

import math
import os

import jax

USABLE_FRACTION = 0.9


def tree_bytes(tree) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def activation_bytes(config, batch_size: int, sequence_length: int) -> int:
    """Bytes of activations one run keeps for its backward pass (module docstring)."""
    b, s, h = batch_size, sequence_length, config.embed_dim
    width = 2 if config.dtype == "bfloat16" else 4
    block = (34 * s * b * h + 5 * config.num_heads * s * s * b) * width // 2
    if config.remat:  # each block keeps its input; one block is recomputed at a time
        kept = config.num_layers * s * b * h * width + block
    else:
        kept = config.num_layers * block
    return int(kept + 2 * b * s * config.vocab_size * 4)


def device_memory() -> tuple[int, str]:
    """(bytes of one device's memory, where that figure comes from)."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} memory"
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host memory"


def fit(requested: int, frozen, slot_state, run) -> tuple[int, str]:
    """(K: at most `requested` runs that fit, a line saying why) for runs like `run`.

    Args:
      requested: Study.pack_runs, or the runs left when fewer.
      frozen: the base params every run shares.
      slot_state: one run's TrainState in the pack's layout (LoRA: padded rank).
      run: that run (settings.Run): its model, batch and mesh.
    """
    devices = run.mesh.size
    spec, microbatches = run.spec, run.settings.loop.num_microbatches
    base = tree_bytes(frozen)
    trainable, optimizer = tree_bytes(slot_state.params), tree_bytes(slot_state.opt_state)
    length = sum(spec.feature_lengths.values())
    activations = activation_bytes(
        run.settings.model_config, spec.batch_size // microbatches, length
    )
    per_run = trainable + optimizer + activations
    memory, source = device_memory()
    pool = memory if source == "host memory" else memory * devices  # CPU devices share it
    room = USABLE_FRACTION * pool - base
    fits = max(1, math.floor(room / per_run)) if room > 0 else 1
    slots = max(1, min(requested, fits))
    total = base + slots * per_run
    message = (
        f"pack of {slots} runs (asked {requested}, {fits} fit): base {_mb(base)} + {slots} x "
        f"(trainable {_mb(trainable)} + optimizer {_mb(optimizer)} + activations "
        f"{_mb(activations)}) = {_mb(total)} estimated, sharded over {devices} device(s); "
        f"{_mb(pool)} of {source} ({USABLE_FRACTION:.0%} usable)"
    )
    return slots, message


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
