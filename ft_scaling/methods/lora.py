"""LoRA (Hu et al. 2021): a trained low-rank update beside each targeted frozen kernel.

    y = x W + (alpha / r) * dropout(x) A B    W: [in..., out...]  frozen base kernel
                                              A: [in..., r]  random  axes (in..., lora_rank)
                                              B: [r, out...] zeros   axes (lora_rank, out...)

`LoRAProjection` subclasses the decoder's `Projection`, which every block matmul goes through, so
the decoder is unchanged and the LoRA factors sit beside the kernel they adapt:
('layers_0', 'attention', 'query', {'kernel', 'lora_a', 'lora_b'}). B = 0 makes a fresh model
compute exactly the base model's outputs. Targets are regular expressions searched in a module's
path ('layers_3/attention/query'); the default covers attention and feed-forward projections, as
the paper applies LoRA to both (PAPER.md §3). Every pattern must match a module: a typo would
otherwise silently train less than intended (PEFT only errors when none match, peft#1959).

`merge(params)` folds the update into the kernels in float32 and returns base-shaped params for
the plain decoder (inference, export); `lora_export.py` writes PEFT's adapter layout.

Packed runs (train/packed_step.py) of different ranks share one model padded to the largest rank;
there each run's alpha / r_i is an input, the 'lora_scale' variable collection
(`LoRAProjection.per_run_scale`), not the constant alpha / rank. A solo run never has it.
"""

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

import gin
from ft_scaling.methods import base
from ft_scaling.models import axes, decoder

LORA_A, LORA_B = "lora_a", "lora_b"
SCALE_COLLECTION, SCALE = "lora_scale", "scale"  # packed runs' per-run alpha / r_i
# 'wi' is the input projection of the ungated GELU MLP (GPT-NeoX); wi_0/wi_1 of gated ones.
DEFAULT_TARGETS = ("attention/(query|key|value|out)$", "mlp/(wi|wi_0|wi_1|wo)$")
_MATCH_ALL = (".*",)


class LoRAProjection(decoder.Projection):
    """`Projection` plus a low-rank update when its module path matches one of `targets`."""

    rank: int = 4
    alpha: float = 4.0
    dropout_rate: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    # True: the update's scale is the SCALE_COLLECTION variable (a packed run's alpha / r_i,
    # whose factors are zero-padded to `rank`); False (every solo run): alpha / rank.
    per_run_scale: bool = False

    def setup(self):
        super().setup()
        self.is_target = is_target(module_path(self.path), self.targets)
        if not self.is_target:
            return
        if self.per_run_scale:
            self.scale = self.variable(
                SCALE_COLLECTION, SCALE, lambda: jnp.float32(self.alpha / self.rank)
            )
        n_in = len(self.in_shape)
        in_axes, out_axes = tuple(self.kernel_axes[:n_in]), tuple(self.kernel_axes[n_in:])
        fan_in = decoder._flat(self.in_shape)
        # Same fan-in scaling as the base kernel (PEFT's kaiming-uniform differs by a constant).
        normal = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0)
        a_init = lambda key, shape: normal(key, (fan_in, self.rank)).reshape(shape)
        self.lora_a = self.param(
            LORA_A,
            nn.with_logical_partitioning(a_init, (*in_axes, axes.LORA_RANK)),
            (*self.in_shape, self.rank),
        )
        self.lora_b = self.param(
            LORA_B,
            nn.with_logical_partitioning(nn.initializers.zeros, (axes.LORA_RANK, *out_axes)),
            (self.rank, *self.out_shape),
        )

    def __call__(self, x):
        y = self.add_bias(self.matmul(x, self.kernel))  # the bias (if any) stays frozen
        if not self.is_target:
            return y
        # Dropout is active only when the caller supplies a 'dropout' rng (the trainer does so
        # for train steps): Projection's signature has no `deterministic` flag.
        if self.dropout_rate > 0.0 and self.has_rng("dropout"):
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout_rate), 0.0).astype(x.dtype)
        n_in = len(self.in_shape)
        lead = x.shape[: x.ndim - n_in]
        x2 = x.reshape(-1, decoder._flat(self.in_shape)).astype(self.dtype)
        a2 = self.lora_a.reshape(-1, self.rank).astype(self.dtype)
        b2 = self.lora_b.reshape(self.rank, -1).astype(self.dtype)
        update = ((x2 @ a2) @ b2).reshape(*lead, *self.out_shape)  # [..., out...]
        if self.per_run_scale:  # cast as a Python float is: the same product as a solo run's
            return y + self.scale.value.astype(update.dtype) * update
        return y + (self.alpha / self.rank) * update


def _as_tuple(targets) -> tuple[str, ...]:
    if isinstance(targets, str):
        raise ValueError(f"LoRA.targets must be a list of patterns, got the string {targets!r}")
    return tuple(targets)


def module_path(path: Sequence[str]) -> str:
    return "/".join(path)


def is_target(path: str, targets: Sequence[str]) -> bool:
    return any(re.search(pattern, path) for pattern in targets)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoRA(base.Method):
    """Trains rank-r factors beside the targeted kernels; the base model is frozen.

    Attributes:
      rank: r (paper default 4, swept 4-128; PAPER.md §3).
      alpha: the update is scaled by alpha / rank ([not stated] in the paper; default alpha = 4
        = the default r, scale 1). Kept fixed when sweeping the rank, as Hu et al. do.
      dropout_rate: dropout on the LoRA branch's input ([not stated]; default 0).
      targets: regular expressions searched in module paths such as 'layers_3/attention/query'.
    """

    name = "lora"
    rank: int = 4
    alpha: float = 4.0
    dropout_rate: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self):
        object.__setattr__(self, "targets", _as_tuple(self.targets))  # gin passes lists
        if isinstance(self.rank, bool) or not isinstance(self.rank, int):
            raise ValueError(f"LoRA.rank (LORA_RANK) must be an integer, got {self.rank!r}")
        if self.rank <= 0:
            raise ValueError(f"LoRA.rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"LoRA.dropout_rate={self.dropout_rate} not in [0, 1)")
        if not self.targets:
            raise ValueError(f"LoRA.targets must be a non-empty list of patterns: {self.targets!r}")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"LoRA.targets: bad pattern {pattern!r}: {error}") from error

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def _projection(self, targets: Sequence[str]):
        return functools.partial(
            LoRAProjection,
            rank=self.rank,
            alpha=self.alpha,
            dropout_rate=self.dropout_rate,
            targets=tuple(targets),
        )

    def wrap(self, model: nn.Module) -> nn.Module:
        check_targets(self.targets, valid_module_paths(model))
        return model.clone(projection=self._projection(self.targets))

    def is_trainable(self, path: base.Path) -> bool:
        return self.is_method_param(path)

    def is_method_param(self, path: base.Path) -> bool:
        return base.leaf_name(path) in (LORA_A, LORA_B)

    def validate(self, config, feature_lengths: Mapping[str, int], packed: bool) -> None:
        del feature_lengths, packed  # LoRA works with any features and with packing
        modules = adaptable_modules(decoder.Decoder(config))
        check_targets(self.targets, sorted(modules))
        # A rank above a kernel's smaller side adds parameters but no rank: W + AB is then
        # any matrix already (and LORA_RANK=1000 on a 64-wide model is a typo, not a sweep).
        targeted = {p: dims for p, dims in modules.items() if is_target(p, self.targets)}
        path = min(targeted, key=lambda p: (min(targeted[p]), p))
        if self.rank > min(targeted[path]):
            raise ValueError(
                f"LoRA.rank (LORA_RANK) = {self.rank} exceeds the smaller side of the targeted "
                f"kernel {path} (fan-in, fan-out = {targeted[path]}); the largest useful rank "
                f"is {min(targeted[path])}"
            )

    def merge(self, params):
        """Base-shaped params with W + (alpha/r) A B folded into every targeted kernel.

        The product and the sum run in float32 whatever the params' dtype, then cast back.
        """
        flat = traverse_util.flatten_dict(params)
        merged = {}
        for path, leaf in flat.items():
            if self.is_method_param(path):
                continue
            module = path[:-1]
            if base.leaf_name(path) == "kernel" and (*module, LORA_A) in flat:
                a, b = flat[(*module, LORA_A)], flat[(*module, LORA_B)]
                update = a.reshape(-1, self.rank).astype(jnp.float32) @ b.reshape(
                    self.rank, -1
                ).astype(jnp.float32)
                leaf = (leaf.astype(jnp.float32) + self.scale * update.reshape(leaf.shape)).astype(
                    leaf.dtype
                )
            merged[path] = leaf
        return traverse_util.unflatten_dict(merged)


def valid_module_paths(model: nn.Module) -> list[str]:
    """Paths of the modules LoRA can adapt (those built through `model.projection`)."""
    return sorted(adaptable_modules(model))


def adaptable_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{module path: (fan-in, fan-out) of its kernel} of every module LoRA can adapt.

    Found by abstract evaluation (no FLOPs, no memory) of the model with every projection
    targeted at rank 1: the modules that then own a LORA_A leaf are exactly the swappable
    ones, and A [in..., 1] and B [1, out...] give the kernel's flattened sides.
    """
    probe = model.clone(projection=functools.partial(LoRAProjection, rank=1, targets=_MATCH_ALL))
    tokens = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: probe.init(jax.random.PRNGKey(0), tokens))["params"]
    flat = traverse_util.flatten_dict(nn.meta.unbox(shapes))
    return {
        module_path(path[:-1]): (
            decoder._flat(leaf.shape[:-1]),
            decoder._flat(flat[(*path[:-1], LORA_B)].shape[1:]),
        )
        for path, leaf in flat.items()
        if path[-1] == LORA_A
    }


def check_targets(targets: Sequence[str], valid_paths: Sequence[str]) -> None:
    """Raises ValueError naming every pattern that matches no module, and the valid paths."""
    unmatched = [p for p in targets if not any(re.search(p, path) for path in valid_paths)]
    if unmatched:
        raise ValueError(
            f"LoRA.targets {unmatched} match no module; patterns are searched in these module "
            f"paths: {list(valid_paths)}"
        )
