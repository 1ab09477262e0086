"""The published `config.json` of the open suites we study, so their shapes are known offline.

`ft-scaling study plan` sizes a study before anything is downloaded; a suite base model given
by hub id ('EleutherAI/pythia-1b@step48000') has no local config.json then. These are the keys
of the public config.json files that `config_conversion.to_model_config` reads (bookkeeping
keys such as token ids and dropout are left out); every revision of a repository shares its
config, so the revision is ignored.

    Pythia (GPT-NeoX)  https://huggingface.co/EleutherAI/pythia-<size>/blob/main/config.json
                       14m 31m 70m 160m 410m 1b 1.4b 2.8b 6.9b 12b, and the -deduped models
                       (70m and up; the same shapes). Biderman et al. 2023, "Pythia", Table 1;
                       vocab_size is the padded embedding: 50304 up to 2.8b, 50432 (6.9b),
                       50688 (12b).
    OLMo-2             https://huggingface.co/allenai/OLMo-2-0425-1B/blob/main/config.json,
                       .../OLMo-2-1124-7B, .../OLMo-2-1124-13B, .../OLMo-2-0325-32B.
                       OLMo 2 Team 2025, "2 OLMo 2 Furious" (arXiv 2501.00656); vocab 100352
                       (the 100278-token tokenizer padded), untied embeddings.

tests/models/hf/published_configs_test.py checks the parameter counts these give against the
ones the suites publish (Pythia's Table 1: 1,011,781,632 for pythia-1b, ...).
"""

from collections.abc import Mapping

from ft_scaling.models.configs import ModelConfig
from ft_scaling.models.hf import config_conversion

_PYTHIA = {
    "architectures": ["GPTNeoXForCausalLM"],
    "model_type": "gpt_neox",
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "use_parallel_residual": True,
}
# name: (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size)
_PYTHIA_SHAPES = {
    "pythia-14m": (128, 6, 4, 512, 50304),
    "pythia-31m": (256, 6, 8, 1024, 50304),
    "pythia-70m": (512, 6, 8, 2048, 50304),
    "pythia-160m": (768, 12, 12, 3072, 50304),
    "pythia-410m": (1024, 24, 16, 4096, 50304),
    "pythia-1b": (2048, 16, 8, 8192, 50304),
    "pythia-1.4b": (2048, 24, 16, 8192, 50304),
    "pythia-2.8b": (2560, 32, 32, 10240, 50304),
    "pythia-6.9b": (4096, 32, 32, 16384, 50432),
    "pythia-12b": (5120, 36, 40, 20480, 50688),
}
_NO_DEDUPED = ("pythia-14m", "pythia-31m")  # trained on the deduplicated Pile only

_OLMO2 = {
    "architectures": ["Olmo2ForCausalLM"],
    "model_type": "olmo2",
    "attention_bias": False,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 500000,
    "tie_word_embeddings": False,
    "vocab_size": 100352,
}
# repository: (hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
#              intermediate_size)
_OLMO2_SHAPES = {
    "OLMo-2-0425-1B": (2048, 16, 16, 16, 8192),
    "OLMo-2-1124-7B": (4096, 32, 32, 32, 11008),
    "OLMo-2-1124-13B": (5120, 40, 40, 40, 13824),
    "OLMo-2-0325-32B": (5120, 64, 40, 8, 27648),
}


def _pythia(shape) -> dict:
    hidden, layers, heads, mlp, vocab = shape
    return {
        **_PYTHIA,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": mlp,
        "vocab_size": vocab,
    }


def _olmo2(shape) -> dict:
    hidden, layers, heads, kv_heads, mlp = shape
    return {
        **_OLMO2,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": mlp,
    }


def _table() -> dict[str, dict]:
    table = {}
    for name, shape in _PYTHIA_SHAPES.items():
        table[f"EleutherAI/{name}"] = _pythia(shape)
        if name not in _NO_DEDUPED:
            table[f"EleutherAI/{name}-deduped"] = _pythia(shape)
    for name, shape in _OLMO2_SHAPES.items():
        table[f"allenai/{name}"] = _olmo2(shape)
    return table


PUBLISHED: Mapping[str, Mapping] = _table()


def repository(hub_id: str) -> str:
    """'org/name' of 'org/name' or 'org/name@revision'."""
    return hub_id.partition("@")[0]


def hf_config(hub_id: str) -> dict:
    """The published config.json (its architecture keys) of a hub id, any revision.

    Raises:
      KeyError: the repository is not in the table; the message lists the known ones.
    """
    repo = repository(hub_id)
    by_lower = {name.lower(): name for name in PUBLISHED}  # hub ids are case-insensitive
    if repo.lower() not in by_lower:
        raise KeyError(
            f"no published config.json for {repo!r} in ft_scaling/models/hf/published_configs.py "
            f"(known: {', '.join(PUBLISHED)}); give a local directory with its config.json"
        )
    return dict(PUBLISHED[by_lower[repo.lower()]])


def model_config(hub_id: str, **overrides) -> ModelConfig:
    """The `ModelConfig` that loading `hub_id` would build (config_conversion), plus overrides."""
    return config_conversion.to_model_config(hf_config(hub_id), **overrides)
