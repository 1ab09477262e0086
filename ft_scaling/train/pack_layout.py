"""Which runs can share a pack (packed_step.py), and each run's slot layout in it.

    layout = pack_layout.layout(Decoder(config), methods, optimizer_settings)
    loss = losses.LMLoss(layout.model)                  # the model every slot runs
    slot = layout.to_slot(solo_state, method)           # LoRA: zero-padded to layout.rank
    solo = layout.from_slot(slot, method)               # the solo layout (checkpoints, merge)
    variables = layout.variables(method, mesh)          # per-run model inputs ({} but LoRA)

Runs share a pack when their `pack_key`s are equal: the same method (LoRA: the same targets
and dropout, any rank and alpha) and optimizer settings. The caller adds what the step's
shapes need equal: base model, feature lengths, batch size, microbatches. Prompt tuning's
prompt length is part of its method, so only equal lengths pack (another length is another
sequence length).

LoRA ranks r_i <= r share a model padded to rank r, exactly:

    A = [A_i | 0]  [in, r]       B = [B_i ; 0]  [r, out]       x A B = x A_i B_i
    dA = s x^T dY B^T: its padded columns are x^T dY 0 = 0; dB = s (x A)^T dY: padded rows 0

Each slot keeps its own scale s = alpha_i / r_i, a per-run input (`variables`: the
'lora_scale' collection of `LoRAProjection.per_run_scale`), so a solo run's params, numerics
and checkpoints are unchanged. A slot starts from the solo run's init at rank r_i, padded.
With a zero gradient, AdamW's moments stay 0 and its update is 0 / (0 + eps) = 0 (weight
decay of 0 is 0); SGD's is 0; global-norm clipping adds 0 to the squares. The padded entries
stay exactly zero, and the others get the solo run's updates (to rounding: a matmul of
another width may sum in another order). Adafactor is not elementwise: its update clipping
divides by the RMS over each whole parameter, and factored second moments (a factor of >= 128
rows and columns) average over rows and columns, so the padded zeros would change a run's
update. Mixed ranks under Adafactor are refused; its pack key holds the rank.
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ft_scaling.methods import base, lora
from ft_scaling.train import optimizers, partitioning, trainer


def pack_key(method: base.Method, optimizer_settings: optimizers.OptimizerSettings) -> tuple:
    """Equal for runs that can share a pack (method and optimizer; not shapes or the base)."""
    if isinstance(method, lora.LoRA):
        # Adafactor's statistics see the padding (module docstring): its ranks must be equal.
        rank = method.rank if optimizer_settings.kind == "adafactor" else None
        return ("lora", method.targets, method.dropout_rate, rank, optimizer_settings)
    return (method, optimizer_settings)


@dataclasses.dataclass(frozen=True)
class PackLayout:
    """The model a pack runs and how a solo run's state maps into a slot of it.

    Attributes:
      model: the method-wrapped model of every slot (LoRA: padded rank, per-run scale).
      key: the `pack_key` of every run in it.
      optimizer_settings: every run's optimizer.
      rank: LoRA's padded rank; None for the other methods (their slots are solo states).
    """

    model: nn.Module
    key: tuple
    optimizer_settings: optimizers.OptimizerSettings
    rank: int | None = None

    def check_member(self, method: base.Method) -> None:
        """Raises ValueError unless a run of `method` can take a slot of this pack."""
        key = pack_key(method, self.optimizer_settings)
        if key != self.key:
            raise ValueError(f"{method!r} cannot join this pack: pack key {key} is not {self.key}")
        if self.rank is not None and method.rank > self.rank:
            raise ValueError(f"LoRA rank {method.rank} exceeds this pack's padded rank {self.rank}")

    def to_slot(self, state, method: base.Method):
        """A solo run's TrainState (or params) in this pack's layout."""
        return state if self.rank is None else pad_rank(state, method.rank, self.rank)

    def from_slot(self, state, method: base.Method):
        """Inverse of `to_slot`: the solo layout that checkpoints and `LoRA.merge` expect."""
        return state if self.rank is None else unpad_rank(state, method.rank)

    def variables(self, method: base.Method, mesh) -> dict:
        """The run's never-trained model variables ({} unless LoRA: alpha_i / r_i everywhere).

        As a Python float in a solo run, alpha / r is rounded to float32 once, here too.
        """
        if self.rank is None:
            return {}
        scale = jax.device_put(
            jnp.float32(method.alpha / method.rank), partitioning.replicated(mesh)
        )
        shapes = _scale_shapes(trainer._ModelKey(self.model))
        return {lora.SCALE_COLLECTION: jax.tree.map(lambda _: scale, shapes)}


def layout(
    base_model: nn.Module,
    methods: Sequence[base.Method],
    optimizer_settings: optimizers.OptimizerSettings,
    rank: int | None = None,
) -> PackLayout:
    """The layout of a pack of runs with these methods on `base_model` (the plain decoder).

    Args:
      base_model: the unwrapped model (decoder.Decoder(config)).
      methods: each run's method; their `pack_key`s must be equal.
      optimizer_settings: the runs' optimizer.
      rank: LoRA's padded rank, at least the largest r_i (room for later refills); None: that.

    Raises:
      ValueError: the methods cannot share a pack (naming why), or rank < some r_i.
    """
    if not methods:
        raise ValueError("a pack needs at least one run")
    first = methods[0]
    keys = [pack_key(m, optimizer_settings) for m in methods]
    for index, key in enumerate(keys):
        if key != keys[0] and not _lora_ranks_only(first, methods[index]):
            raise ValueError(
                f"runs 0 and {index} cannot share a pack: {first!r} vs {methods[index]!r} "
                f"(pack keys differ: {keys[0]} vs {key})"
            )
    if isinstance(first, lora.LoRA):  # after the keys: every method is then a LoRA
        _check_lora_ranks(methods, optimizer_settings, rank)
    if not isinstance(first, lora.LoRA):
        return PackLayout(first.wrap(base_model), keys[0], optimizer_settings)
    rank = max(m.rank for m in methods) if rank is None else rank
    first.wrap(base_model)  # its checks: every target pattern matches a module
    projection = functools.partial(
        lora.LoRAProjection,
        rank=rank,
        alpha=float(rank),  # unused: the scale is each run's variable
        dropout_rate=first.dropout_rate,
        targets=first.targets,
        per_run_scale=True,
    )
    return PackLayout(base_model.clone(projection=projection), keys[0], optimizer_settings, rank)


def _lora_ranks_only(a, b) -> bool:
    """Two LoRAs differing in rank only (Adafactor's keys hold it: refused by rank, clearer)."""
    if not (isinstance(a, lora.LoRA) and isinstance(b, lora.LoRA)):
        return False
    return (a.targets, a.dropout_rate) == (b.targets, b.dropout_rate)


def _check_lora_ranks(methods, optimizer_settings, rank):
    ranks = sorted({m.rank for m in methods} | ({rank} if rank else set()))
    if optimizer_settings.kind == "adafactor" and len(ranks) > 1:
        raise ValueError(
            f"LoRA ranks {ranks} cannot share a pack under Adafactor: its update clipping (RMS "
            "over each whole parameter) and factored second moments would count the padded "
            "zeros, so a padded run would not train as alone; pack equal ranks, or use "
            "adamw/sgd (elementwise, exact with padding)"
        )
    if rank is not None and rank < ranks[-1]:
        raise ValueError(f"pack rank {rank} is below the runs' largest LoRA rank {ranks[-1]}")


@functools.lru_cache(maxsize=16)
def _scale_shapes(model_key):
    tokens = jnp.ones((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda: model_key.model.init(jax.random.PRNGKey(0), tokens))
    return nn.meta.unbox(variables[lora.SCALE_COLLECTION])


# --- Rank padding -------------------------------------------------------------------------------


def pad_rank(tree, rank: int, padded_rank: int):
    """`tree` (params, a TrainState, optimizer state) with every LoRA factor padded with zeros
    from `rank` to `padded_rank`: lora_a on its last axis, lora_b on its first. Shardings kept.

    Raises:
      ValueError naming a factor-like leaf whose rank axis is not `rank` (e.g. a factored
      Adafactor moment, which padding cannot extend exactly).
    """
    if padded_rank < rank:
        raise ValueError(f"cannot pad LoRA rank {rank} down to {padded_rank}")
    if padded_rank == rank:
        return tree
    _check_rank_axes(tree, rank)
    return _rank_resizer(_shardings(tree), rank, padded_rank)(tree)


def unpad_rank(tree, rank: int):
    """Inverse of `pad_rank`: every LoRA factor cut back to its first `rank` ranks."""
    padded = [x.shape[_rank_axis(p)] for p, x in _factor_leaves(tree)]
    if not padded or max(padded) == rank:
        return tree
    return _rank_resizer(_shardings(tree), None, rank)(tree)


def _rank_axis(path) -> int | None:
    """Rank axis of a LoRA factor leaf at `path` (A: last, B: first); None for other leaves."""
    name = getattr(path[-1], "key", None) if path else None
    return {lora.LORA_A: -1, lora.LORA_B: 0}.get(name)


def _factor_leaves(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(p, x) for p, x in flat if _rank_axis(p) is not None and getattr(x, "ndim", 0) > 0]


def _check_rank_axes(tree, rank):
    for path, leaf in _factor_leaves(tree):
        if leaf.shape[_rank_axis(path)] != rank:
            raise ValueError(
                f"LoRA rank padding: {jax.tree_util.keystr(path)} has shape {list(leaf.shape)}, "
                f"not rank {rank} on its rank axis (a factored optimizer moment?)"
            )


def _shardings(tree):
    return trainer._Hashable(jax.tree.map(lambda x: x.sharding, tree))


@functools.lru_cache(maxsize=64)
def _rank_resizer(shardings, rank: int | None, new_rank: int):
    """Jitted pad (rank -> new_rank) or cut (rank None: to new_rank) of every factor leaf."""

    def resize(path, x):
        axis = _rank_axis(path)
        if axis is None or x.ndim == 0:
            return x
        if rank is None:
            return jax.lax.slice_in_dim(x, 0, new_rank, axis=axis % x.ndim)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, new_rank - rank)
        return jnp.pad(x, widths)

    def resize_tree(tree):
        return jax.tree_util.tree_map_with_path(resize, tree)

    return jax.jit(resize_tree, out_shardings=shardings.tree)
