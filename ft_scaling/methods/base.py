"""The finetuning-method contract: the trainer sees only this.

    model = method.wrap(Decoder(config))       # same call signature as Decoder
    method.validate(config, feature_lengths, packed)   # before any step; ValueError if unusable
    params = model.init(...)["params"]          # plain nested dict (unboxed)
    params = method.after_restore(params, rng)  # once, after INITIAL_CHECKPOINT_PATH restored
                                                #   the base params into the fresh tree
    mask = method.trainable_mask(params)        # bool tree: True = trained, False = frozen
    trainable, frozen = split(params, mask)     # grad and optimizer state cover `trainable` only
    params = merge(trainable, frozen)

`is_method_param(path)` names the leaves a base checkpoint cannot provide (the prompt, LoRA
factors): those are initialised fresh when finetuning starts, any other missing leaf is an error.
The trainer differentiates only the trainable split and keeps optimizer state only for it, so a
method needs no branch in the trainer (STYLE.md rule 4). Paths are tuples of keys into the params
collection, e.g. ('layers_0', 'attention', 'query', 'kernel').
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

    Subclasses override `wrap` (to add parameters or change the forward pass), `is_trainable`
    (which parameters train; or `trainable_mask` when the answer depends on the whole tree) and
    `is_method_param` (which parameters they add).
    """

    name = "fmt"

    def wrap(self, model: nn.Module) -> nn.Module:
        """Returns the model to train; its params tree extends the base model's unchanged."""
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

    def after_restore(self, params, rng: jax.Array):
        """Re-derives method params from restored base params; identity unless overridden.

        The trainer calls it once, right after restoring a base checkpoint into freshly
        initialised params (not when resuming this run's own checkpoint): a method whose
        initial value depends on the base weights (prompt tuning copies vocabulary
        embeddings) must see the pretrained weights, not the random ones of `model.init`.
        """
        del rng
        return params

    def trainable_mask(self, params):
        flat = traverse_util.flatten_dict(params)
        mask = {path: self.is_trainable(path) for path in flat}
        return traverse_util.unflatten_dict(mask)


def trainable_param_count(method: Method, params) -> int:
    """The PET 'parameter size' X: number of scalars in the leaves the mask keeps."""
    flat = traverse_util.flatten_dict(params)
    mask = traverse_util.flatten_dict(method.trainable_mask(params))
    return sum(int(leaf.size) for path, leaf in flat.items() if mask[path])


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


def leaf_name(path: Path) -> str:
    """The parameter's own name, e.g. 'kernel' for ('layers_0', 'mlp', 'wo', 'kernel')."""
    return path[-1] if path else ""
