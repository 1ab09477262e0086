"""Where each of our parameters lives in a Hugging Face checkpoint, and in which layout.

    ours                                       Llama-like (Llama, Mistral, Qwen, OLMo-2, Gemma)
    embedding [vocab, embed]                   model.embed_tokens.weight [vocab, embed]
    layers_i/attention/query/kernel [d, h, k]  model.layers.i.self_attn.q_proj.weight [h*k, d]
    layers_i/attention/out/kernel [h, k, d]    ...self_attn.o_proj.weight [d, h*k]
    layers_i/mlp/wi_0, wi_1, wo                ...mlp.gate_proj, up_proj, down_proj
    layers_i/attention_norm, mlp_norm          ...input_layernorm, post_attention_layernorm
    layers_i/attention_post_norm, mlp_post_norm  OLMo-2: post_attention_layernorm,
                                               post_feedforward_layernorm
    final_norm, logits_projection/kernel       model.norm, lm_head.weight [vocab, embed]

    GPT-NeoX: gpt_neox.embed_in, gpt_neox.layers.i.{input_layernorm, post_attention_layernorm,
    attention.query_key_value (q, k, v fused per head: rows [heads, 3, head_dim]),
    attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h}, gpt_neox.final_layer_norm, embed_out.

A `Source` says how our array's dims map to the HF tensor's: `groups[j]` lists our dims that,
flattened row-major, form HF dim j (a torch Linear weight is [out, in], ours [in..., out...]).
"""

import dataclasses
import math

_LLAMA_MODULES = {
    "attention/query": "self_attn.q_proj",
    "attention/key": "self_attn.k_proj",
    "attention/value": "self_attn.v_proj",
    "attention/out": "self_attn.o_proj",
    "attention/query_norm": "self_attn.q_norm",
    "attention/key_norm": "self_attn.k_norm",
    "mlp/wi_0": "mlp.gate_proj",
    "mlp/wi_1": "mlp.up_proj",
    "mlp/wo": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
    "attention_post_norm": "post_attention_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
}
_NEOX_MODULES = {
    "attention/query": "attention.query_key_value",
    "attention/key": "attention.query_key_value",
    "attention/value": "attention.query_key_value",
    "attention/out": "attention.dense",
    "mlp/wi": "mlp.dense_h_to_4h",
    "mlp/wo": "mlp.dense_4h_to_h",
    "attention_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
}
_TOP = {
    # ours: (Llama-like, GPT-NeoX)
    "embedding": ("model.embed_tokens.weight", "gpt_neox.embed_in.weight"),
    "final_norm/scale": ("model.norm.weight", "gpt_neox.final_layer_norm.weight"),
    "final_norm/bias": ("model.norm.bias", "gpt_neox.final_layer_norm.bias"),
    "logits_projection/kernel": ("lm_head.weight", "embed_out.weight"),
}
_FUSED_CHUNK = {"attention/query": 0, "attention/key": 1, "attention/value": 2}
# Buffers some checkpoints carry that are not parameters (older Pythia revisions).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")


@dataclasses.dataclass(frozen=True)
class Source:
    """An HF tensor and how our array's dims form its dims.

    Attributes:
      name: the tensor's name in the checkpoint.
      groups: per HF dim, our dims flattened (row-major) into it.
      chunk: (index, count) for a fused tensor whose HF dim 0 is [lead, count, rest] with our
        group-0 dims being (lead, rest...): GPT-NeoX's query_key_value, q = 0, k = 1, v = 2.
    """

    name: str
    groups: tuple[tuple[int, ...], ...]
    chunk: tuple[int, int] | None = None

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        dims = [math.prod(shape[d] for d in group) for group in self.groups]
        if self.chunk:
            dims[0] *= self.chunk[1]
        return tuple(dims)


def source(path: tuple[str, ...], ndim: int, neox: bool) -> Source:
    """The HF tensor of our parameter `path` (a tuple of keys) with `ndim` dims."""
    key = "/".join(path)
    if key in _TOP:
        name = _TOP[key][neox]
        return Source(name, _linear_groups(1, ndim) if key.endswith("kernel") else _same(ndim))
    layer, *module, leaf = path
    prefix = f"{'gpt_neox' if neox else 'model'}.layers.{layer.removeprefix('layers_')}."
    module_key = "/".join(module)
    table = _NEOX_MODULES if neox else _LLAMA_MODULES
    if not layer.startswith("layers_") or module_key not in table:
        raise KeyError(f"no Hugging Face name for our parameter {key!r}")
    name = prefix + table[module_key] + (".bias" if leaf == "bias" else ".weight")
    chunk = (_FUSED_CHUNK[module_key], 3) if neox and module_key in _FUSED_CHUNK else None
    if leaf == "kernel":
        n_in = 2 if module_key == "attention/out" else 1
        return Source(name, _linear_groups(n_in, ndim), chunk)
    return Source(name, (tuple(range(ndim)),), chunk)  # biases and norm scales: flattened


def _same(ndim: int) -> tuple[tuple[int, ...], ...]:
    return tuple((d,) for d in range(ndim))


def _linear_groups(n_in: int, ndim: int) -> tuple[tuple[int, ...], ...]:
    """A torch Linear weight [out, in] from our kernel [in..., out...]."""
    return (tuple(range(n_in, ndim)), tuple(range(n_in)))
