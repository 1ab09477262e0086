"""The decoder shapes the train/decode benchmarks compare, ours and Hugging Face's alike.

Llama-like: multi-head attention (kv heads = heads), head dim 64, SwiGLU, RMSNorm, RoPE, no
biases, tied input/output embeddings. `hf_llama_kwargs` gives the `transformers.LlamaConfig`
of the same model, so both frameworks train exactly the same parameter count
(tests/benchmarks/llama_shapes_test.py checks it on the real `LlamaForCausalLM`).
"""

from ft_scaling.models.configs import ModelConfig

SHAPES = {
    # ~25M: 4.2M embedding + 8 x 2.6M blocks.
    "25m": ModelConfig(
        vocab_size=8192,
        num_layers=8,
        num_heads=8,
        num_kv_heads=8,
        head_dim=64,
        embed_dim=512,
        mlp_dim=1024,
    ),
    # ~110M (GPT-2 small / BERT-base widths): 24.6M embedding + 12 x 7.1M blocks.
    "110m": ModelConfig(
        vocab_size=32000,
        num_layers=12,
        num_heads=12,
        num_kv_heads=12,
        head_dim=64,
        embed_dim=768,
        mlp_dim=2048,
    ),
}


def hf_llama_kwargs(config: ModelConfig, sequence_length: int) -> dict:
    """`transformers.LlamaConfig(**kwargs)` for the same architecture and parameter count."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.embed_dim,
        intermediate_size=config.mlp_dim,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=sequence_length,
        rms_norm_eps=1e-6,
        rope_theta=config.rope_max_wavelength,
        tie_word_embeddings=config.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=config.dropout_rate,
    )
