"""Hugging Face checkpoints of public decoder families in our sharded Flax decoder.

    config, params = load_pretrained("path/to/hf_dir", mesh=None)
    logits = Decoder(config).apply({"params": params}, tokens)
    save_pretrained(config, params, "out_dir", source="path/to/hf_dir")   # transformers loads it
    save_peft_adapter(lora_method, lora_params, "adapter_dir", source="out_dir")   # PEFT loads it

Families: see config_conversion.SUPPORTED (Llama, Mistral, Qwen2, Qwen3, OLMo-2, Gemma,
GPT-NeoX/Pythia). Loading reads each device's slice only (loading.py).
"""

from ft_scaling.models.hf.checkpoint_files import CheckpointError
from ft_scaling.models.hf.config_conversion import SUPPORTED, UnsupportedConfigError
from ft_scaling.models.hf.export import save_peft_adapter, save_pretrained
from ft_scaling.models.hf.loading import load_pretrained

__all__ = [
    "SUPPORTED",
    "CheckpointError",
    "UnsupportedConfigError",
    "load_pretrained",
    "save_peft_adapter",
    "save_pretrained",
]
