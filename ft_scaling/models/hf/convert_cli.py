"""`ft-scaling convert`: a converted copy of a checkpoint, Hugging Face <-> ours (orbax).

    ft-scaling convert hf-to-orbax SRC DST    SRC: HF directory or hub id; DST: a MODEL_DIR
    ft-scaling convert orbax-to-hf SRC DST    SRC: a MODEL_DIR (or .../checkpoints/<step>)
                                              [--source=HF_DIR] [--lora_alpha=ALPHA]

hf-to-orbax writes DST/checkpoints/0 (the params, as a pretraining run saves them; usable as
INITIAL_CHECKPOINT_PATH) and DST/hf_source/ (config.json and the tokenizer files), so that

    --gin_file=t5x_configs/models/hf.gin --gin.HF_CHECKPOINT="'DST/hf_source'"
    --gin.INITIAL_CHECKPOINT_PATH="'DST'"

finetunes from the converted copy. orbax-to-hf writes what transformers loads
(`save_pretrained`): the checkpoint's params laid over its base, LoRA folded into the kernels
in float32. The architecture and tokenizer come from --source, else from the HF checkpoint the
run (or its base, and so on) started from, else from a converted copy's hf_source/. LoRA's
alpha comes from --lora_alpha, else from the run's fingerprint (its method's settings).
"""

import argparse
import ast
import os
import shutil
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ft_scaling import files
from ft_scaling.models import configs, decoder
from ft_scaling.models.hf import config_conversion, export, loading, run_setup

HF_SOURCE = "hf_source"
_SOURCE_FILES = ("config.json", *export.COPIED)


def hf_to_orbax(source: str, out_dir: str) -> str:
    """Imports `source` and saves its params as our checkpoint under `out_dir`; returns it."""
    from ft_scaling.train import checkpoints  # noqa: PLC0415  (orbax: only this direction)

    directory = run_setup.local_directory(source)
    config, params = loading.load_pretrained(directory)
    store = checkpoints.CheckpointStore(out_dir, checkpoints.RetentionPolicy(keep_best=False))
    try:
        meta = {"step": 0, "data_position": 0, "base_checkpoint": None, "hf_source": source}
        store.save(0, {"step": jnp.int32(0), "params": params}, meta)
    finally:
        store.close()
    os.makedirs(os.path.join(out_dir, HF_SOURCE), exist_ok=True)
    for name in _SOURCE_FILES:
        if os.path.exists(os.path.join(directory, name)):
            shutil.copy(os.path.join(directory, name), os.path.join(out_dir, HF_SOURCE, name))
    architecture = config_conversion.architecture(loading.read_config(directory))
    print(f"{source} ({architecture}, {configs.param_count(config):,} params) -> {out_dir}")
    return out_dir


def orbax_to_hf(
    checkpoint: str, out_dir: str, source: str | None = None, lora_alpha: float | None = None
) -> str:
    """Writes our checkpoint `checkpoint` as an HF directory that transformers loads.

    Args:
      checkpoint: a MODEL_DIR or MODEL_DIR/checkpoints/<step>.
      out_dir: the HF directory to write.
      source: the HF checkpoint giving config.json and the tokenizer (default: found from
        the checkpoint's base chain).
      lora_alpha: LoRA's alpha when the checkpoint has LoRA factors (default: the run's).

    Returns:
      out_dir.
    """
    from ft_scaling.train import checkpoints  # noqa: PLC0415

    params, meta = checkpoints.load_params(checkpoint)
    source = run_setup.local_directory(source) if source else _hf_source(checkpoint, meta)
    config = config_conversion.to_model_config(loading.read_config(source))
    params = _merged(params, checkpoint, lora_alpha)
    _check_shapes(config, params, checkpoint)
    export.save_pretrained(config, params, out_dir, source=source)
    print(f"{checkpoint} -> {out_dir} ({source})")
    return out_dir


def _hf_source(checkpoint: str, meta: dict) -> str:
    """The HF directory a checkpoint descends from: its base chain, or a converted copy's."""
    from ft_scaling.train import checkpoints  # noqa: PLC0415

    while True:
        copy = os.path.join(_model_dir(checkpoint), HF_SOURCE)
        if os.path.isdir(copy):
            return copy
        base = meta.get("base_checkpoint")
        if base and run_setup.is_hf_directory(base):
            return base
        if not base:
            raise ValueError(
                f"{checkpoint} descends from no Hugging Face checkpoint; pass --source=HF_DIR "
                "(its config.json and tokenizer are written with the params)"
            )
        checkpoint, meta = base, checkpoints.load_params(base)[1]


def _model_dir(checkpoint: str) -> str:
    path = os.path.abspath(checkpoint)
    parent, leaf = os.path.split(path)
    if leaf.isdigit() and os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent)
    return path


def _merged(params: dict, checkpoint: str, lora_alpha: float | None) -> dict:
    """Base-shaped params: LoRA factors folded in; other method params refused."""
    from ft_scaling.methods import lora  # noqa: PLC0415

    flat = traverse_util.flatten_dict(params)
    if ("prompt",) in flat:
        raise ValueError(f"{checkpoint} holds a soft prompt, which an HF model cannot carry")
    factors = [p for p in flat if p[-1] == lora.LORA_A]
    if not factors:
        return params
    rank = int(flat[factors[0]].shape[-1])
    alpha = lora_alpha if lora_alpha is not None else _fingerprint_alpha(checkpoint)
    return lora.LoRA(rank=rank, alpha=alpha).merge(jax.tree.map(np.asarray, params))


def _fingerprint_alpha(checkpoint: str) -> float:
    """LoRA's alpha from the run's fingerprint (the repr of its LoRA method)."""
    fingerprint = files.read_fingerprint(_model_dir(checkpoint)) or {}
    text = str(fingerprint.get("method", ""))
    call = ast.parse(text, mode="eval").body if text.startswith("LoRA(") else None
    keywords = {k.arg: k.value for k in getattr(call, "keywords", [])}
    if "alpha" not in keywords:
        raise ValueError(
            f"{checkpoint} has LoRA factors but its run fingerprint names no LoRA alpha "
            f"({text!r}); pass --lora_alpha"
        )
    return float(ast.literal_eval(keywords["alpha"]))


def _check_shapes(config, params: dict, checkpoint: str) -> None:
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    abstract = jax.eval_shape(
        lambda t: decoder.Decoder(config).init(jax.random.PRNGKey(0), t), tokens
    )
    want = traverse_util.flatten_dict(nn.meta.unbox(abstract["params"]))
    got = traverse_util.flatten_dict(params)
    problems = sorted(set(map("/".join, want)) ^ set(map("/".join, got)))
    problems += [
        f"{'/'.join(p)}: {tuple(got[p].shape)} vs {tuple(s.shape)}"
        for p, s in want.items()
        if p in got and tuple(got[p].shape) != tuple(s.shape)
    ]
    if problems:
        raise ValueError(f"{checkpoint} does not match the source's architecture: {problems[:8]}")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="ft-scaling convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="direction", required=True)
    to_orbax = sub.add_parser("hf-to-orbax", help="HF directory or hub id -> our checkpoint")
    to_hf = sub.add_parser("orbax-to-hf", help="our checkpoint -> HF directory")
    for command in (to_orbax, to_hf):
        command.add_argument("src")
        command.add_argument("dst")
    to_hf.add_argument("--source", default=None, help="HF dir with config.json and tokenizer")
    to_hf.add_argument("--lora_alpha", type=float, default=None, help="default: the run's")
    args = parser.parse_args(list(argv))
    if args.direction == "hf-to-orbax":
        hf_to_orbax(args.src, args.dst)
    else:
        orbax_to_hf(args.src, args.dst, args.source, args.lora_alpha)
    return 0
