"""Layer freezing: train only the top-k Transformer blocks, or the blocks a pattern selects.

    top_k=2, num_layers=6:  layers_0..layers_3 frozen | layers_4, layers_5 trained
                            (+ final_norm if train_final_norm, + embedding if train_embedding)

A selective-updating baseline; it adds no parameters. The number of blocks comes from the params
tree itself (the 'layers_<i>' keys), so the same gin works for every model size.
"""

import dataclasses
import re
from collections.abc import Mapping

from flax import traverse_util

import gin
from ft_scaling.methods import base

_LAYER = re.compile(r"layers_(\d+)$")


def _layer_index(path: base.Path) -> int | None:
    match = _LAYER.match(path[0]) if path else None
    return int(match.group(1)) if match else None


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LayerFreeze(base.Method):
    """Trains the top `top_k` blocks, or the blocks whose name matches `layer_pattern`.

    Attributes:
      top_k: number of top blocks to train (layers_{L-k} .. layers_{L-1}); None with a pattern.
      layer_pattern: regular expression fully matching block names, e.g. 'layers_(0|5)';
        exclusive with top_k.
      train_final_norm: also train the final RMSNorm scale.
      train_embedding: also train the (tied) embedding; large for big vocabularies.
    """

    name = "freeze"
    top_k: int | None = 1
    layer_pattern: str | None = None
    train_final_norm: bool = True
    train_embedding: bool = False

    def __post_init__(self):
        if (self.top_k is None) == (self.layer_pattern is None):
            raise ValueError(
                "LayerFreeze needs exactly one of top_k and layer_pattern, got "
                f"top_k={self.top_k}, layer_pattern={self.layer_pattern!r}"
            )
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
        ):
            raise ValueError(f"LayerFreeze.top_k must be an integer, got {self.top_k!r}")
        if self.top_k is not None and self.top_k <= 0:
            raise ValueError(f"LayerFreeze.top_k must be positive, got {self.top_k}")

    def trainable_layers(self, num_layers: int) -> list[int]:
        """Indices of the trained blocks; ValueError if the selection is empty or too large."""
        if self.top_k is not None:
            if self.top_k > num_layers:
                raise ValueError(f"LayerFreeze.top_k={self.top_k} > num_layers={num_layers}")
            return list(range(num_layers - self.top_k, num_layers))
        chosen = [i for i in range(num_layers) if re.fullmatch(self.layer_pattern, f"layers_{i}")]
        if not chosen:
            raise ValueError(
                f"LayerFreeze.layer_pattern={self.layer_pattern!r} matches none of "
                f"layers_0..layers_{num_layers - 1}"
            )
        return chosen

    def validate(self, config, feature_lengths: Mapping[str, int], packed: bool) -> None:
        del feature_lengths, packed
        self.trainable_layers(config.num_layers)

    def trainable_mask(self, params):
        flat = traverse_util.flatten_dict(params)
        indices = {_layer_index(path) for path in flat} - {None}
        trained = set(self.trainable_layers(len(indices)))
        mask = {path: self._trains(path, trained) for path in flat}
        return traverse_util.unflatten_dict(mask)

    def _trains(self, path: base.Path, trained_layers: set[int]) -> bool:
        index = _layer_index(path)
        if index is not None:
            return index in trained_layers
        if path[0] == "final_norm":
            return self.train_final_norm
        if path[0] in ("embedding", "logits_projection"):
            return self.train_embedding
        return False

    def is_trainable(self, path: base.Path) -> bool:
        raise TypeError(
            "LayerFreeze decides from the whole tree (the number of blocks): use trainable_mask"
        )
