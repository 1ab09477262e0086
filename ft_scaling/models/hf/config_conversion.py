"""Hugging Face `config.json` -> `ModelConfig`, per family; what we cannot honour is refused.

    architectures[0]         family    what differs from the paper's decoder
    LlamaForCausalLM         llama     no embedding scale, rms_norm_eps, rope_theta, llama3 RoPE
    MistralForCausalLM       llama     + sliding_window (honoured, not ignored)
    Qwen2ForCausalLM         llama     + q/k/v biases
    Qwen3ForCausalLM         llama     + q/k RMSNorm per head
    Olmo2ForCausalLM         llama     + norms after each sublayer, q/k norm over the projection
    GemmaForCausalLM         llama     + RMSNorm (1 + w), embeddings x sqrt(d), GeGLU (tanh)
    GPTNeoXForCausalLM       gpt_neox  LayerNorm, parallel residual, partial RoPE, biases

Keys are read as transformers writes them (v5: `rope_parameters`) and as older checkpoints do
(`rope_theta` + `rope_scaling`, GPT-NeoX's `rotary_pct` / `rotary_emb_base`); a missing key
takes the family's transformers default. A setting that would change the numbers and that the
decoder does not implement (a RoPE type other than llama3, per-layer sliding windows, logit
soft-capping, bidirectional attention, another activation) raises `UnsupportedConfigError`
naming the key; harmless bookkeeping keys (token ids, dropout, initializer range) are ignored.
"""

import dataclasses
from collections.abc import Mapping

from ft_scaling.models.configs import ModelConfig

LLAMA_LIKE = {
    # architecture: (model_type, defaults that differ between families)
    "LlamaForCausalLM": ("llama", {"tie_word_embeddings": False, "rms_norm_eps": 1e-6}),
    "MistralForCausalLM": ("mistral", {"tie_word_embeddings": False, "rms_norm_eps": 1e-6}),
    "Qwen2ForCausalLM": ("qwen2", {"tie_word_embeddings": False, "rms_norm_eps": 1e-6}),
    "Qwen3ForCausalLM": ("qwen3", {"tie_word_embeddings": False, "rms_norm_eps": 1e-6}),
    "Olmo2ForCausalLM": ("olmo2", {"tie_word_embeddings": False, "rms_norm_eps": 1e-5}),
    "GemmaForCausalLM": ("gemma", {"tie_word_embeddings": True, "rms_norm_eps": 1e-6}),
}
SUPPORTED = (*LLAMA_LIKE, "GPTNeoXForCausalLM")
# ModelConfig fields that are run settings, not architecture: a run may set them freely.
RUN_FIELDS = ("dtype", "remat", "remat_policy", "dropout_rate")
_REFUSED_ARCHITECTURES = {
    "Gemma2ForCausalLM": "logit soft-capping and alternating sliding-window layers",
    "Gemma3ForCausalLM": "alternating sliding-window layers and separate local/global RoPE",
}


class UnsupportedConfigError(ValueError):
    """A checkpoint's config asks for something the decoder does not implement."""


def architecture(hf_config: Mapping) -> str:
    """The checkpoint's architecture name, checked against SUPPORTED."""
    names = hf_config.get("architectures") or []
    if len(names) != 1:
        raise UnsupportedConfigError(
            f"config.json 'architectures' = {names!r}: expected exactly one of {list(SUPPORTED)}"
        )
    name = names[0]
    if name in _REFUSED_ARCHITECTURES:
        raise UnsupportedConfigError(
            f"architecture {name!r} is not supported ({_REFUSED_ARCHITECTURES[name]} are not "
            f"implemented); supported: {list(SUPPORTED)}"
        )
    if name not in SUPPORTED:
        raise UnsupportedConfigError(
            f"architecture {name!r} is not supported; supported: {list(SUPPORTED)}"
        )
    return name


def to_model_config(hf_config: Mapping, **overrides) -> ModelConfig:
    """The `ModelConfig` of a checkpoint's config.json (dict), plus `overrides` (e.g. dtype).

    Raises:
      UnsupportedConfigError: unsupported architecture or a key we cannot honour.
    """
    name = architecture(hf_config)
    if name == "GPTNeoXForCausalLM":
        fields = _gpt_neox(hf_config)
    else:
        fields = _llama_like(name, hf_config)
    return ModelConfig(**{**fields, **overrides})


def check_architecture(config: ModelConfig, hf_config: Mapping, what: str = "the params'") -> None:
    """Raises ValueError unless `config` is the checkpoint's architecture (run fields aside)."""
    source_config = to_model_config(hf_config)
    run = {field: getattr(config, field) for field in RUN_FIELDS}
    if dataclasses.replace(source_config, **run) != config:
        differ = {
            field.name: (getattr(config, field.name), getattr(source_config, field.name))
            for field in dataclasses.fields(config)
            if field.name not in RUN_FIELDS
            and getattr(config, field.name) != getattr(source_config, field.name)
        }
        raise ValueError(
            f"{what} model config is not the checkpoint's architecture; differing fields "
            f"(ours, the checkpoint's): {differ}"
        )


def _get(hf_config: Mapping, key: str, default):
    value = hf_config.get(key)
    return default if value is None else value


def _shapes(hf_config: Mapping, tie_default: bool) -> dict:
    heads = hf_config["num_attention_heads"]
    hidden = hf_config["hidden_size"]
    return dict(
        vocab_size=hf_config["vocab_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=_get(hf_config, "num_key_value_heads", heads),
        head_dim=_get(hf_config, "head_dim", hidden // heads),
        embed_dim=hidden,
        mlp_dim=hf_config["intermediate_size"],
        tie_embeddings=bool(_get(hf_config, "tie_word_embeddings", tie_default)),
    )


def _llama_like(name: str, hf_config: Mapping) -> dict:
    model_type, defaults = LLAMA_LIKE[name]
    _refuse_windows(model_type, hf_config)
    _refuse_present(hf_config, ("attn_logit_softcapping", "final_logit_softcapping"))
    if hf_config.get("use_bidirectional_attention"):
        raise UnsupportedConfigError("use_bidirectional_attention=True: the decoder is causal")
    fields = _shapes(hf_config, defaults["tie_word_embeddings"])
    fields.update(
        norm_epsilon=float(_get(hf_config, "rms_norm_eps", defaults["rms_norm_eps"])),
        embed_scale="none",
        **_rope(hf_config, default_theta=10_000.0, default_fraction=1.0),
    )
    attention_bias = bool(hf_config.get("attention_bias", False))
    fields.update(qkv_bias=attention_bias, attention_out_bias=attention_bias)
    fields["mlp_bias"] = bool(hf_config.get("mlp_bias", False))
    if model_type == "qwen2":
        fields["qkv_bias"], fields["attention_out_bias"] = True, False
    elif model_type == "qwen3":
        fields["qk_norm"] = "head"
    elif model_type == "olmo2":
        fields.update(qk_norm="projection", norm_placement="post")
    elif model_type == "gemma":
        fields.update(norm="rms_plus_one", embed_scale="sqrt", mlp="geglu_tanh")
    elif model_type == "mistral":  # honoured: a window shorter than the run is not ignored
        fields["sliding_window"] = int(hf_config.get("sliding_window") or 0)
    _check_activation(hf_config, model_type)
    return fields


def _gpt_neox(hf_config: Mapping) -> dict:
    fields = _shapes(hf_config, tie_default=False)
    fields["num_kv_heads"] = fields["num_heads"]
    bias = bool(hf_config.get("attention_bias", True))
    parallel = bool(hf_config.get("use_parallel_residual", True))
    fields.update(
        norm="layernorm",
        norm_epsilon=float(_get(hf_config, "layer_norm_eps", 1e-5)),
        embed_scale="none",
        norm_placement="parallel" if parallel else "pre",
        qkv_bias=bias,
        attention_out_bias=bias,
        mlp_bias=True,
        mlp="gelu",
        **_rope(hf_config, default_theta=10_000.0, default_fraction=0.25, neox=True),
    )
    _check_activation(hf_config, "gpt_neox")
    return fields


def _rope(hf_config: Mapping, default_theta: float, default_fraction: float, neox=False) -> dict:
    """RoPE base, rotated fraction and Llama-3 scaling from v5 or legacy keys."""
    params = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
    theta_key, fraction_key = ("rotary_emb_base", "rotary_pct") if neox else ("rope_theta", "")
    theta = params.get("rope_theta", hf_config.get("rope_theta", hf_config.get(theta_key)))
    fraction = params.get("partial_rotary_factor", hf_config.get("partial_rotary_factor"))
    if fraction is None and fraction_key:
        fraction = hf_config.get(fraction_key)
    rope_type = params.get("rope_type", params.get("type", "default"))
    fields = dict(
        rope_max_wavelength=float(_get({"t": theta}, "t", default_theta)),
        rotary_fraction=float(_get({"f": fraction}, "f", default_fraction)),
    )
    if rope_type == "llama3":
        original = params.get(
            "original_max_position_embeddings", hf_config.get("max_position_embeddings")
        )
        keys = ("factor", "low_freq_factor", "high_freq_factor")
        fields["rope_scaling"] = ("llama3", *(float(params[k]) for k in keys), int(original))
    elif rope_type != "default":
        raise UnsupportedConfigError(
            f"rope type {rope_type!r} ({params}) is not implemented; supported: default, llama3"
        )
    return fields


def _refuse_windows(model_type: str, hf_config: Mapping) -> None:
    """Qwen's per-layer windows and any non-global layer types are not implemented."""
    if model_type in ("qwen2", "qwen3") and hf_config.get("use_sliding_window"):
        raise UnsupportedConfigError(
            "use_sliding_window=True: Qwen's sliding windows on layers past max_window_layers "
            "(per-layer attention) are not implemented"
        )
    layer_types = hf_config.get("layer_types") or []
    if any(kind != "full_attention" for kind in layer_types):
        raise UnsupportedConfigError(
            f"layer_types={sorted(set(layer_types))}: only full_attention layers are implemented"
        )


def _refuse_present(hf_config: Mapping, keys) -> None:
    for key in keys:
        if hf_config.get(key) is not None:
            raise UnsupportedConfigError(f"config key {key}={hf_config[key]!r} is not implemented")


_ACTIVATIONS = {
    "gpt_neox": ("gelu",),
    "gemma": ("gelu_pytorch_tanh", "gelu"),  # transformers reads Gemma's legacy 'gelu' as tanh
}


def _check_activation(hf_config: Mapping, model_type: str) -> None:
    allowed = _ACTIVATIONS.get(model_type, ("silu",))
    default = "gelu_pytorch_tanh" if model_type == "gemma" else allowed[0]
    act = hf_config.get("hidden_activation") or hf_config.get("hidden_act") or default
    if act not in allowed:
        raise UnsupportedConfigError(
            f"hidden_act={act!r} is not implemented for {model_type}; supported: {allowed}"
        )
