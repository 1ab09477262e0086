"""The finetuning-method contract: the trainer sees only this.

    method.wrap(Decoder(config)) -> model      # same call signature as Decoder
    method.trainable_mask(params) -> bool tree # True = trained, False = frozen
    method.new_param_paths(params, base)       # params a base checkpoint cannot provide

The trainer differentiates only the trainable split of the params and keeps optimizer state
only for it, so a method needs no branch in the trainer (STYLE.md rule 4).
"""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
from flax import traverse_util

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Method:
    """Full-model tuning; the base class of every method.

    Subclasses override `wrap` (to add parameters or change the forward pass) and
    `is_trainable` (which parameters train).
    """

    name = "full"

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def is_trainable(self, path: Path) -> bool:
        del path
        return True

    def is_method_param(self, path: Path) -> bool:
        """True for parameters the method adds (initialised fresh when finetuning)."""
        del path
        return False

    def validate(self, config, feature_lengths: Mapping[str, int], packed: bool) -> None:
        """Raises ValueError for settings this method cannot run with (before any step)."""
        del config, feature_lengths, packed

    def trainable_mask(self, params):
        flat = traverse_util.flatten_dict(params)
        mask = {path: self.is_trainable(path) for path in flat}
        return traverse_util.unflatten_dict(mask)


def trainable_param_count(method: Method, params) -> int:
    """The PET 'parameter size' X: number of scalars in the leaves the mask keeps."""
    flat = traverse_util.flatten_dict(params)
    return sum(int(leaf.size) for path, leaf in flat.items() if method.is_trainable(path))


def split(params, mask):
    """(trainable, frozen): two trees of params' structure with None where a leaf is absent."""
    trainable = jax.tree.map(lambda p, m: p if m else None, params, mask)
    frozen = jax.tree.map(lambda p, m: None if m else p, params, mask)
    return trainable, frozen


def merge(trainable, frozen):
    """Inverse of `split`."""
    return jax.tree.map(
        lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None
    )
