"""Device mesh, logical-to-mesh rules, sharded initialisation and multi-host batches.

The mesh always has the axes ('data', 'fsdp', 'model'). Model code names only logical axes
(models/axes.py); the rules below, overridable in gin (t5x_configs/partitioning/*.gin), map each
logical name to a mesh axis (or a tuple of them, or None = replicated). Entry points take the
mesh and rules as arguments, injected by the run gins as t5x injects its partitioner:

    train.mesh = @partitioning.make_mesh()       # t5x_configs/runs/*.gin (also eval, infer)
    train.rules = @partitioning.logical_rules()  # shape and overrides: partitioning/*.gin

Multi-host: every process computes the same global batch stream and keeps the rows of its own
devices, so the global batch (and therefore every loss) is identical for any device layout. On a
pod with large data one would shard the input files by host instead; that trades the exact
layout-independence for I/O and is not needed at this project's data sizes.
"""

import math
import os
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gin

MESH_AXES = ("data", "fsdp", "model")

# FSDP-style defaults: weights sharded over 'fsdp' on their embed dim and over 'model' on
# heads/mlp/vocab; activations' batch over ('data', 'fsdp').
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", None),
    ("kv", None),
    ("vocab", "model"),
    ("prompt", None),
    ("lora_rank", None),
    ("cache_length", None),
)


@gin.configurable
def mesh_shape(shape: Sequence[int] = (-1, 1, 1), num_devices: int | None = None) -> tuple:
    """Resolves a ('data','fsdp','model') shape with at most one -1 against the device count."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape {shape} must have 3 entries for axes {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {shape}: entries must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
        raise ValueError(
            f"mesh shape {shape} does not divide the {num_devices} devices "
            f"(the fixed axes multiply to {known})"
        )
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh shape {shape} has {math.prod(shape)} devices but {num_devices} are present"
        )
    return shape


@gin.configurable
def make_mesh(shape: Sequence[int] | None = None) -> Mesh:
    """The ('data','fsdp','model') mesh over all devices of all processes, in process order.

    The run gins inject it (`train.mesh = @partitioning.make_mesh()`, as t5x injects its
    partitioner), so gin calls it before the run starts: it joins the distributed runtime first
    (`initialize_distributed`, a no-op unless configured), since the devices of the other
    processes are visible only after that.

    Args:
      shape: ('data', 'fsdp', 'model') sizes, one may be -1; None: `mesh_shape` (gin-bound by
        t5x_configs/partitioning/*.gin).
    """
    initialize_distributed()
    shape = mesh_shape() if shape is None else mesh_shape(shape)
    devices = np.array(jax.devices()).reshape(shape)
    return Mesh(devices, MESH_AXES)


@gin.configurable
def logical_rules(overrides: Sequence[tuple[str, object]] = ()) -> tuple:
    """The default rules with `overrides` (same format) replacing entries by logical name."""
    rules = dict(DEFAULT_RULES)
    for name, target in overrides:
        if name not in rules:
            raise ValueError(f"unknown logical axis {name!r}; known: {sorted(rules)}")
        rules[name] = tuple(target) if isinstance(target, list) else target
    return tuple(rules.items())


def param_shardings(boxed_abstract_params, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree of nn.Partitioned (e.g. from jax.eval_shape(model.init))."""
    specs = nn.get_partition_spec(boxed_abstract_params)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of [batch, length] input arrays."""
    spec = nn.logical_to_mesh_axes(("batch", "length"), rules)
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def step_compiler_options(mesh: Mesh) -> dict[str, str]:
    """XLA options of the train and eval steps on `mesh`'s platform.

    On CPU, XLA expands `jax.checkpoint`'s optimization barriers before its CSE passes
    (`cse_barrier_expander`), so CSE merges each rematerialised forward pass back into the
    first one and remat (`ModelConfig.remat`) saves no memory at all: a 25m LoRA step's
    temporaries were the same with and without it. Keeping the barriers makes remat work as
    on GPU/TPU (8-layer 25m pack of 2: 203.8 -> 45.8 MiB of temporaries; results bit-equal);
    a step without remat has no barriers, so nothing else changes. GPU and TPU keep theirs.
    """
    if mesh.devices.flat[0].platform == "cpu":
        return {"xla_disable_hlo_passes": "cse_barrier_expander"}
    return {}


def check_batch_divides(batch_size: int, mesh: Mesh, rules) -> None:
    spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
    names = (spec,) if isinstance(spec, str) else tuple(spec or ())
    ways = math.prod(mesh.shape[name] for name in names)
    if batch_size % ways:
        raise ValueError(
            f"BATCH_SIZE={batch_size} does not divide over the {ways} batch shards of mesh axes "
            f"{names} (mesh {dict(mesh.shape)}); use a multiple of {ways}"
        )


def global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
    """Turns a host-identical global numpy batch into global arrays; each process keeps its rows.

    Single process: a plain `device_put`. Several: this process's contiguous block of rows is
    handed to `jax.make_array_from_process_local_data` (devices are in process order).
    """
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    out = {}
    for key, value in batch.items():
        rows = value.shape[0] // jax.process_count()
        start = jax.process_index() * rows
        local = value[start : start + rows]
        out[key] = jax.make_array_from_process_local_data(sharding, local, value.shape)
    return out


@gin.configurable
def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cpu_collectives: str = "gloo",
) -> bool:
    """Starts `jax.distributed` when configured (gin or the JAX_COORDINATOR_ADDRESS, JAX_NUM_
    PROCESSES, JAX_PROCESS_ID environment variables); on TPU pods it needs no arguments
    (`coordinator_address='auto'`). Returns whether it was started.
    """
    if jax.distributed.is_initialized():  # a study trains many runs in one process
        return True
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator_address:
        return False
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    # Harmless off CPU; must be set before the backend starts (asking for the backend here
    # would start it too early), so it is set unconditionally.
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator_address == "auto":
        # jax reads JAX_COORDINATOR_ADDRESS itself and would take 'auto' for an address.
        os.environ.pop("JAX_COORDINATOR_ADDRESS", None)
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
