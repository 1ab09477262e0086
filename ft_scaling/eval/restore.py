"""A finetuned checkpoint as a ready model: restore, check against the model, merge, shard.

params, meta = train.checkpoints.load_params(path)   # base + method leaves, host arrays
check_params(params, model)                          # every path and shape, or an error
LoRA: fold A B into the kernels and use the plain decoder (same tokens, faster; tested)
place the params on the ('data','fsdp','model') mesh with the run's logical rules
"""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from ft_scaling import files
from ft_scaling.methods import base
from ft_scaling.models import configs, decoder
from ft_scaling.train import checkpoints, partitioning


@dataclasses.dataclass(frozen=True)
class RestoredModel:
    """Attributes: model (wrapped or plain decoder), variables ({'params': ...}, sharded),
    step (of the checkpoint), meta (the checkpoint's metadata), mesh and rules (use them as
    context: `with jax.set_mesh(mesh), nn.logical_axis_rules(rules)`)."""

    model: nn.Module
    variables: dict
    step: int
    meta: dict
    mesh: object
    rules: tuple


def abstract_params(model: nn.Module):
    """Boxed param shapes of `model` (nothing allocated)."""
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t)["params"], tokens)


def run_dir(checkpoint_path: str) -> str:
    """The MODEL_DIR of a MODEL_DIR or of a MODEL_DIR/checkpoints/<step> path."""
    path = files.absolute(checkpoint_path)  # a local path or gs://
    parent, leaf = os.path.split(path)
    if leaf.isdigit() and os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent)
    return path


def check_params(params, model: nn.Module, source: str) -> None:
    """Raises CheckpointError naming the paths where `params` and `model` disagree."""
    expected = traverse_util.flatten_dict(nn.meta.unbox(abstract_params(model)))
    got = {p: v for p, v in traverse_util.flatten_dict(params).items() if v is not None}
    problems = [f"missing {'/'.join(p)}" for p in expected if p not in got]
    problems += [f"unexpected {'/'.join(p)}" for p in got if p not in expected]
    problems += [
        f"{'/'.join(p)} has shape {tuple(got[p].shape)}, the model expects {tuple(s.shape)}"
        for p, s in expected.items()
        if p in got and tuple(got[p].shape) != tuple(s.shape)
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" * (len(problems) > 8))
        raise checkpoints.CheckpointError(
            f"checkpoint {source} does not match the configured model and method: {shown}. "
            "Pass the model and method gins the run was trained with."
        )


def restore(
    checkpoint_path: str,
    model_config: configs.ModelConfig,
    method: base.Method | None = None,
    prefer_best: bool = True,
    merge_lora: bool = True,
    mesh=None,
    rules=None,
) -> RestoredModel:
    """Loads a run's checkpoint into its model, ready to evaluate.

    Args:
      checkpoint_path: a MODEL_DIR (best checkpoint by dev loss, else the latest) or
        MODEL_DIR/checkpoints/<step>.
      model_config: the decoder's shapes (the run's model gin).
      method: the run's finetuning method (None = full finetuning).
      prefer_best: for a MODEL_DIR, take the best checkpoint rather than the latest.
      merge_lora: fold LoRA updates into the kernels (methods with a `merge`).
      mesh, rules: where to place the params (the eval/infer gins inject them); None: the
        default `partitioning.make_mesh()` and `partitioning.logical_rules()`.

    Returns:
      RestoredModel.

    Raises:
      CheckpointError: no checkpoint there, or one that does not match the model.
    """
    method = method or base.Method()
    model = method.wrap(decoder.Decoder(model_config))
    params, meta = checkpoints.load_params(checkpoint_path, prefer_best=prefer_best)
    check_params(params, model, checkpoint_path)
    if merge_lora and hasattr(method, "merge"):
        params = method.merge(params)
        model = decoder.Decoder(model_config)
    mesh = partitioning.make_mesh() if mesh is None else mesh
    rules = partitioning.logical_rules() if rules is None else rules
    shardings = nn.meta.unbox(partitioning.param_shardings(abstract_params(model), mesh, rules))
    params = jax.device_put(params, shardings)
    step = int(meta.get("step", 0))
    return RestoredModel(model, {"params": params}, step, dict(meta), mesh, rules)
