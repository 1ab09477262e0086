"""Hugging Face checkpoints of public decoder families in our sharded Flax decoder.

    config, params = load_pretrained("path/to/hf_dir", mesh=None)
    logits = Decoder(config).apply({"params": params}, tokens)

Families: see config_conversion.SUPPORTED (Llama, Mistral, Qwen2, Qwen3, OLMo-2, Gemma,
GPT-NeoX/Pythia). Loading reads each device's slice only (loading.py).
"""

from ft_scaling.models.hf.checkpoint_files import CheckpointError
from ft_scaling.models.hf.config_conversion import SUPPORTED, UnsupportedConfigError
from ft_scaling.models.hf.loading import load_pretrained

__all__ = ["SUPPORTED", "CheckpointError", "UnsupportedConfigError", "load_pretrained"]
