"""Trainable parameters of a (model config, method) and the bytes of one of its checkpoints.

`study plan` needs them for every run of a study without building a model: the leaf shapes come
from abstract evaluation (jax.eval_shape: no FLOPs, no memory) of a single block, repeated for
every layer, so a 32B model costs the same fraction of a second as a tiny one.

    trainable leaves   fmt      every param of Decoder(config)
                       prompt   the prompt, [P, embed]
                       LoRA     A [fan_in, r] and B [r, fan_out] of every targeted module
                                (lora.adaptable_modules gives the fan-in/out; lora.is_target
                                picks them, layer by layer)
                       other    method.wrap(Decoder) evaluated and method.trainable_mask
                                applied (all layers: masks may depend on the layer)
    a checkpoint       the trainable params in float32 (checkpoints.saved_tree: a finetuning
                       checkpoint holds only the trainable split) + the optimizer state the
                       run's optimizer initialises for them (Adafactor factors a leaf whose
                       two largest dims are >= 128 into a row and a column vector, keeps a
                       full second moment otherwise; AdamW two moments; SGD none)

LoRA's factors are counted flattened ([fan_in, r]); the decoder keeps some as [heads,
head_dim, r], which Adafactor may factor differently (tests compare with the real trees).
"""

import dataclasses
import functools
import math

from ft_scaling.models import configs

PARAM_BYTES = 4  # params are float32 whatever the compute dtype (ModelConfig.dtype)
_LAYER = "layers_0"


@functools.cache
def trainable_and_checkpoint_bytes(config, method, optimizer_kind: str) -> tuple[int, int]:
    """(trainable params, bytes of one checkpoint) of a run of `method` on `config`."""
    shapes = trainable_shapes(config, method)
    count = sum(math.prod(shape) for shape in shapes)
    return count, count * PARAM_BYTES + _state_bytes(optimizer_kind, shapes)


def trainable_shapes(config: configs.ModelConfig, method) -> list[tuple[int, ...]]:
    """The shapes of the params `method` trains on `config` (see the module docstring)."""
    name = getattr(method, "name", "fmt")
    if name == "fmt":
        return [shape for _, shape in _all_layers(config, _base_leaves(_one_block(config)))]
    if name == "prompt":
        return [(method.prompt_length, config.embed_dim)]
    if name == "lora":
        from ft_scaling.methods import lora  # noqa: PLC0415

        shapes = []
        for path, (fan_in, fan_out) in _all_layers(config, _adaptable(_one_block(config))):
            if lora.is_target("/".join(path), method.targets):
                shapes += [(fan_in, method.rank), (method.rank, fan_out)]
        return shapes
    return _masked_shapes(config, method)


def _one_block(config):
    return dataclasses.replace(config, num_layers=1)


def _all_layers(config, block_items) -> list[tuple[tuple, object]]:
    """(path, value) of a one-block tree's items, the block's repeated for every layer."""
    items = []
    for path, value in block_items:
        if path[0] == _LAYER:
            items += [((f"layers_{i}", *path[1:]), value) for i in range(config.num_layers)]
        else:
            items.append((path, value))
    return items


@functools.cache
def _base_leaves(one_block) -> tuple:
    """((path, shape), ...) of Decoder(one_block)'s params."""
    from ft_scaling.methods import base  # noqa: PLC0415

    return tuple((path, leaf.shape) for path, leaf in _abstract(one_block, base.Method()))


@functools.cache
def _adaptable(one_block) -> tuple:
    """((module path, (fan_in, fan_out)), ...) of the modules LoRA can adapt."""
    from ft_scaling.methods import lora  # noqa: PLC0415
    from ft_scaling.models import decoder  # noqa: PLC0415

    modules = lora.adaptable_modules(decoder.Decoder(one_block))
    return tuple((tuple(path.split("/")), dims) for path, dims in modules.items())


def _abstract(config, method) -> list:
    """[(path, ShapeDtypeStruct)] of method.wrap(Decoder(config))'s params."""
    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    from flax import traverse_util  # noqa: PLC0415

    from ft_scaling.models import decoder  # noqa: PLC0415

    model = method.wrap(decoder.Decoder(config))
    tokens = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens))["params"]
    return list(traverse_util.flatten_dict(nn.meta.unbox(shapes)).items())


def _masked_shapes(config, method) -> list[tuple[int, ...]]:
    """Any other method: its own mask over the whole abstract tree."""
    from flax import traverse_util  # noqa: PLC0415

    flat = dict(_all_layers(config, _abstract(_one_block(config), method)))
    mask = traverse_util.flatten_dict(method.trainable_mask(traverse_util.unflatten_dict(flat)))
    return [leaf.shape for path, leaf in flat.items() if mask[path]]


def _state_bytes(optimizer_kind: str, shapes: list[tuple[int, ...]]) -> int:
    """Bytes of the optimizer state the run's optimizer initialises for float32 leaves of
    `shapes`: its per-leaf part (cached per shape) plus the part shared by all leaves (step
    counters), each from the optimizer's own init, abstractly."""
    per_leaf = sum(_leaf_state_bytes(optimizer_kind, shape) for shape in shapes)
    one = _tree_state_bytes(optimizer_kind, ((1,),))
    return per_leaf + 2 * one - _tree_state_bytes(optimizer_kind, ((1,), (1,)))


@functools.cache
def _leaf_state_bytes(optimizer_kind: str, shape: tuple[int, ...]) -> int:
    twice = _tree_state_bytes(optimizer_kind, (shape, shape))
    return twice - _tree_state_bytes(optimizer_kind, (shape,))


@functools.cache
def _tree_state_bytes(optimizer_kind: str, shapes: tuple) -> int:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from ft_scaling.train import optimizers  # noqa: PLC0415

    init = optimizers.OptimizerSettings(optimizer_kind).build().init
    leaves = [jax.ShapeDtypeStruct(tuple(shape), jnp.float32) for shape in shapes]
    state = jax.eval_shape(init, leaves)
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))


def lora_skipped_input_gradient(config: configs.ModelConfig, method) -> int:
    """FLOPs per token a LoRA backward pass skips in the first block, on top of the frozen
    weights' gradients: nothing below the first block trains, so the modules that read the
    block's input (query, key, value; with parallel residuals the MLP input projections too)
    need no input gradient, through their kernel or their A factor. Counted only when LoRA
    targets every such module (else the whole branch may be skipped: we keep the upper bound).
    """
    from ft_scaling.methods import lora  # noqa: PLC0415

    readers = ("query", "key", "value")
    if config.norm_placement == "parallel":
        readers += ("wi", "wi_0", "wi_1")
    modules = {path[-1]: (path, dims) for path, dims in _adaptable(_one_block(config))}
    first = [modules[name] for name in readers if name in modules]
    if not all(lora.is_target("/".join(path), method.targets) for path, _ in first):
        return 0
    return sum(2 * fan_in * (fan_out + method.rank) for _, (fan_in, fan_out) in first)
