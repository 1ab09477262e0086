"""Tiny random checkpoints of each family, written by transformers' own `save_pretrained`.

Nothing is downloaded: transformers builds each architecture from a config, the weights are
random (perturbed away from their init so norms and biases are not trivially 1 / 0), and
`save_pretrained` writes the real file layout (several shards with `max_shard_size`).
"""

import functools
import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="test extras: pip install -e '.[bench]'")
transformers = pytest.importorskip("transformers")

VOCAB = 128
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
    "rope_theta": 500000.0,
}
FAMILIES = {
    # name: (config class, kwargs); tied and untied, GQA and MQA, explicit head_dim.
    "llama2": ("LlamaConfig", dict(num_key_value_heads=2, rms_norm_eps=1e-5)),
    "llama2_tied": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3.1": ("LlamaConfig", dict(num_key_value_heads=2, rope_parameters=_LLAMA3_ROPE)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=4)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=16)),
    "olmo2": ("Olmo2Config", dict(num_key_value_heads=2)),
    "gemma": ("GemmaConfig", dict(num_key_value_heads=1, head_dim=16)),
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(rotary_pct=0.25, use_parallel_residual=True, vocab_size=VOCAB + 16),
    ),
}
_ROOT = tempfile.mkdtemp(prefix="ft_scaling_hf_ckpt_")


@functools.cache
def hf_model(family: str):
    """The transformers model of `family` (float32, eval mode), deterministic weights."""
    class_name, kwargs = FAMILIES[family]
    config = getattr(transformers, class_name)(
        **{**_COMMON, **kwargs}, pad_token_id=0, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(sorted(FAMILIES).index(family))
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@functools.cache
def checkpoint(family: str, sharded: bool = True, dtype: str = "float32") -> str:
    """A directory holding `family`'s checkpoint as transformers writes it."""
    model = hf_model(family)
    directory = os.path.join(_ROOT, f"{family}_{'sharded' if sharded else 'single'}_{dtype}")
    if dtype != "float32":
        model = type(model)(model.config).eval()
        model.load_state_dict(hf_model(family).state_dict())
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(directory, max_shard_size="40KB" if sharded else "1GB")
    return directory


def padded_batch(seed: int = 0, width: int = 11):
    """Left-padded tokens [3, width], lengths and (segment ids, positions) as ours expects."""
    rng = np.random.RandomState(seed)
    lengths = np.array([width, width - 4, 3])
    tokens = np.zeros((3, width), np.int64)
    segments = np.zeros((3, width), np.int32)
    positions = np.zeros((3, width), np.int32)
    for row, length in enumerate(lengths):
        tokens[row, width - length :] = rng.randint(3, VOCAB, length)
        segments[row, width - length :] = 1
        positions[row, width - length :] = np.arange(length)
    return tokens, lengths, segments, positions


def hf_logits(model, tokens, segments, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(segments, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()
