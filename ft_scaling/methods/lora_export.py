"""LoRA factors in PEFT's adapter layout: adapter_config.json + adapter_model.safetensors.

    ours:  A [in..., r]  B [r, out...]      (kernel [in..., out...], y = x W)
    PEFT:  lora_A.weight [r, in]  lora_B.weight [out, r]   (torch Linear: weight [out, in])

Multi-dimensional sides are flattened in C order, which is head-major for attention ([heads,
head_dim] -> heads * head_dim), as Hugging Face q/k/v/o projections lay out their features.
Tensor names are `base_model.model.<our module path, dotted>.lora_{A,B}.weight`, e.g.
`base_model.model.layers.0.attention.query.lora_A.weight`: our own module names, which PEFT
cannot match against a transformers model. For a model imported from Hugging Face pass
`hf_source` (its HF directory): the adapter then names the family's modules
(`model.layers.0.self_attn.q_proj`) and loads with `PeftModel.from_pretrained`
(ft_scaling/models/hf/export.py).

The safetensors file is written directly (the `safetensors` package is not a dependency): an
8-byte little-endian header length, a JSON header of dtypes, shapes and byte offsets, then the
raw little-endian tensors.
"""

import json
import os
import struct

import numpy as np
from flax import traverse_util

from ft_scaling import files
from ft_scaling.methods import lora

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
PREFIX = "base_model.model."


def peft_tensors(method: lora.LoRA, params) -> dict[str, np.ndarray]:
    """PEFT-named float32 tensors of every LoRA factor in `params`."""
    flat = traverse_util.flatten_dict(params)
    tensors = {}
    for path, leaf in flat.items():
        if path[-1] != lora.LORA_A:
            continue
        name = PREFIX + ".".join(p.replace("layers_", "layers.") for p in path[:-1])
        a = np.asarray(leaf, np.float32).reshape(-1, method.rank)  # [in, r]
        b = np.asarray(flat[(*path[:-1], lora.LORA_B)], np.float32).reshape(method.rank, -1)
        tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(a.T)  # [r, in]
        tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(b.T)  # [out, r]
    return tensors


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata=None) -> None:
    header, offset = {}, 0
    for name in sorted(tensors):
        array = tensors[name]
        header[name] = {
            "dtype": _DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8-byte alignment
    parts = [struct.pack("<Q", len(encoded)), encoded]
    parts += [
        tensors[n].astype(tensors[n].dtype.newbyteorder("<")).tobytes() for n in sorted(tensors)
    ]
    files.atomic_write_bytes(path, b"".join(parts))


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (F32/F16 only), for checks and round trips."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    names = {v: k for k, v in _DTYPES.items()}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], names[info["dtype"]].newbyteorder("<"))
        out[name] = array.reshape(info["shape"])
    return out


def export_peft(
    method: lora.LoRA, params, directory: str, base_model: str = "", hf_source: str | None = None
) -> list[str]:
    """Writes the adapter of `params` to `directory`; returns the two file paths.

    With `hf_source` (the HF directory the base model was imported from, or its export) the
    adapter uses that family's module names and PEFT loads it onto the HF model.
    """
    if hf_source is not None:
        from ft_scaling.models.hf import export  # noqa: PLC0415  (needs safetensors)

        export.save_peft_adapter(method, params, directory, source=hf_source)
        names = ("adapter_config.json", "adapter_model.safetensors")
        return [os.path.join(directory, name) for name in names]
    tensors = peft_tensors(method, params)
    modules = sorted({name[len(PREFIX) :].rsplit(".lora_", 1)[0] for name in tensors})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": method.rank,
        "lora_alpha": method.alpha,
        "lora_dropout": method.dropout_rate,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    config_path = os.path.join(directory, "adapter_config.json")
    files.atomic_write_text(config_path, json.dumps(config, indent=2))  # PEFT's key order
    weights_path = os.path.join(directory, "adapter_model.safetensors")
    write_safetensors(weights_path, tensors, {"format": "pt"})
    return [config_path, weights_path]
