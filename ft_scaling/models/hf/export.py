"""Our params -> a Hugging Face directory (`save_pretrained`), and LoRA -> a PEFT adapter with the
family's module names (`save_peft_adapter`).

    save_pretrained(config, params, out_dir, source=hf_dir)
      out_dir/config.json        the source's, dtype float32 (checked: it converts to `config`)
      out_dir/model.safetensors  every param in the HF name and layout (param_names.Source,
                                 inverted); GPT-NeoX's q/k/v fused back into query_key_value
      tokenizer / generation files copied from the source
    save_peft_adapter(method, params, out_dir, source=hf_dir)
      adapter_config.json + adapter_model.safetensors, modules named as transformers names them
      (model.layers.0.self_attn.q_proj); loaded by `PeftModel.from_pretrained`

PEFT adds lora_B @ lora_A * lora_alpha / r to a torch weight [out, in]; ours adds
(A [in..., r] @ B [r, out...]) * alpha / r to a kernel [in..., out...]. GPT-NeoX fuses q, k and v
into one Linear, so its adapter stacks the (up to three) factor pairs as one of rank 3r, with
rank_pattern / alpha_pattern keeping the scale alpha / r: B's rows of q hold B_q in columns
[0, r), k's hold B_k in [r, 2r), ... which is exactly the three separate updates.
The arrays are gathered to this host (single-process export).
"""

import json
import os
import re
import shutil

import numpy as np
from flax import traverse_util

from ft_scaling.models import configs
from ft_scaling.models.hf import config_conversion, loading, param_names

# Copied from the source beside the weights.
COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
)


def save_pretrained(config: configs.ModelConfig, params, out_dir: str, source: str) -> str:
    """Writes `params` as a transformers checkpoint of the source's architecture.

    Args:
      config: the params' config; must equal the source's conversion (run fields aside).
      params: our decoder's params (a LoRA must be merged first: `LoRA.merge`).
      out_dir: the directory to write.
      source: the HF directory (or hub id) the model was imported from.

    Returns:
      out_dir.
    """
    source = loading.resolve(source)
    hf_config = loading.read_config(source)
    _check_same_architecture(config, hf_config)
    neox = config_conversion.architecture(hf_config) == "GPTNeoXForCausalLM"
    flat = {path: np.asarray(leaf, np.float32) for path, leaf in _flat(params).items()}
    tensors = {}
    for path, array in flat.items():
        src = param_names.source(path, array.ndim, neox)
        target = tensors.setdefault(src.name, np.zeros(src.hf_shape(array.shape), np.float32))
        write_block(target, src, array)
    os.makedirs(out_dir, exist_ok=True)
    _save_safetensors(tensors, os.path.join(out_dir, "model.safetensors"))
    hf_config = {**hf_config, "torch_dtype": "float32", "dtype": "float32"}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    for name in COPIED:
        if os.path.exists(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), os.path.join(out_dir, name))
    return out_dir


def write_block(target: np.ndarray, src: param_names.Source, array: np.ndarray) -> None:
    """Writes our whole `array` into the HF tensor `target` where `src` says it lives."""
    ranges = [np.arange(n) for n in array.shape]
    flat = [
        loading.hf_indices(src, group, ranges, array.shape, j) for j, group in enumerate(src.groups)
    ]
    order = [d for group in src.groups for d in group]
    block = array.transpose(order).reshape([len(f) for f in flat])
    target[np.ix_(*flat)] = block


def _save_safetensors(tensors: dict, path: str) -> None:
    import safetensors.numpy  # noqa: PLC0415  (optional: importing the package needs none)

    safetensors.numpy.save_file(tensors, path, {"format": "pt"})


def _flat(params) -> dict:
    return traverse_util.flatten_dict(dict(params))


def _check_same_architecture(config: configs.ModelConfig, hf_config: dict) -> None:
    try:
        config_conversion.check_architecture(config, hf_config)
    except ValueError as error:
        raise ValueError(
            f"{error}: export writes the source's config.json, so it must describe these params"
        ) from error


def save_peft_adapter(method, params, out_dir: str, source: str) -> str:
    """Writes the LoRA factors in `params` as a PEFT adapter for the source's HF model.

    Args:
      method: the `LoRA` method the params were trained with (rank, alpha, dropout).
      params: LoRA-wrapped params (base kernels plus lora_a / lora_b).
      out_dir: the adapter directory to write.
      source: the base model's HF directory (e.g. written by `save_pretrained`).

    Returns:
      out_dir.
    """
    source = loading.resolve(source)
    hf_config = loading.read_config(source)
    neox = config_conversion.architecture(hf_config) == "GPTNeoXForCausalLM"
    modules = _hf_modules(method, params, neox)
    tensors, patterns = {}, {}
    for module, parts in sorted(modules.items()):
        a, b = _stack(parts, method.rank)
        name = f"base_model.model.{module}"
        tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = a, b
        if a.shape[0] != method.rank:
            patterns[module] = a.shape[0]
    os.makedirs(out_dir, exist_ok=True)
    _save_safetensors(tensors, os.path.join(out_dir, "adapter_model.safetensors"))
    adapter = _adapter_config(method, source, sorted(modules), patterns)
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(adapter, f, indent=2)
    return out_dir


def _adapter_config(method, source: str, modules: list, patterns: dict) -> dict:
    """PEFT's adapter_config.json; `patterns` maps fused modules to their stacked rank."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": source,
        "r": method.rank,
        "lora_alpha": method.alpha,
        "lora_dropout": method.dropout_rate,
        "target_modules": modules,
        # A fused module stacks k factor pairs: rank k r, alpha k alpha, so the scale stays.
        "rank_pattern": {re.escape(m): r for m, r in patterns.items()},
        "alpha_pattern": {
            re.escape(m): method.alpha * r / method.rank for m, r in patterns.items()
        },
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }


def _hf_modules(method, params, neox: bool) -> dict:
    """{HF module name: [(Source of the kernel, A [in..., r], B [r, out...]), ...]}."""
    flat = _flat(params)
    modules = {}
    for path, a in flat.items():
        if path[-1] != "lora_a":
            continue
        kernel = np.asarray(flat[(*path[:-1], "kernel")])
        src = param_names.source((*path[:-1], "kernel"), kernel.ndim, neox)
        b = np.asarray(flat[(*path[:-1], "lora_b")], np.float32)
        entry = (src, kernel.shape, np.asarray(a, np.float32), b)
        modules.setdefault(src.name.removesuffix(".weight"), []).append(entry)
    return modules


def _stack(parts, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """PEFT lora_A [k r, in] and lora_B [out, k r] of the k factor pairs of one HF module."""
    src0, shape0, _, _ = parts[0]
    out_features, in_features = src0.hf_shape(shape0)
    a_all = np.zeros((rank * len(parts), in_features), np.float32)
    b_all = np.zeros((out_features, rank * len(parts)), np.float32)
    for i, (src, shape, a, b) in enumerate(parts):
        ranges = [np.arange(n) for n in shape]
        rows = loading.hf_indices(src, src.groups[0], ranges, shape, 0)  # out features
        a_all[i * rank : (i + 1) * rank] = a.reshape(-1, rank).T  # in features: row-major
        b_all[rows, i * rank : (i + 1) * rank] = b.reshape(rank, -1).T
    return a_all, b_all
