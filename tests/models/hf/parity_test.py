"""Our decoder on imported checkpoints equals transformers: logits and 16 greedy tokens.

Every family of config_conversion.SUPPORTED, tied and untied, sharded and single-file, float32,
bfloat16 and float16 files, and the pickled pytorch_model.bin of older revisions.
"""

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch

from ft_scaling.eval import decoding
from ft_scaling.models import decoder
from ft_scaling.models.hf import load_pretrained
from tests.models.hf.hf_checkpoints import (
    FAMILIES,
    checkpoint,
    hf_logits,
    hf_model,
    padded_batch,
    torch,
)

FP32_TOLERANCE = 1e-4


def _max_diff(directory, family, model=None):
    config, params = load_pretrained(directory)
    tokens, _, segments, positions = padded_batch()
    ours = decoder.Decoder(config).apply(
        {"params": params}, jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(positions)
    )
    want = hf_logits(model or hf_model(family), tokens, segments, positions)
    real = segments.astype(bool)  # padding positions are not compared
    return float(np.abs(np.asarray(ours)[real] - want[real]).max()), config


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_equal_transformers(family):
    directory = checkpoint(family)
    shards = [f for f in os.listdir(directory) if f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in os.listdir(directory)
    diff, config = _max_diff(directory, family)
    print(f"PARITY {family} fp32 max_abs_diff={diff:.2e}")
    assert diff <= FP32_TOLERANCE
    assert config.tie_embeddings == hf_model(family).config.tie_word_embeddings


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_tokens_equal_generate(family):
    config, params = load_pretrained(checkpoint(family))
    tokens, lengths, segments, _ = padded_batch(seed=1)
    model = hf_model(family)
    model.generation_config.eos_token_id = None  # 16 tokens for every row, as ours below
    with torch.no_grad():
        generated = model.generate(
            torch.tensor(tokens),
            attention_mask=torch.tensor(segments, dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
            pad_token_id=0,
        )[:, tokens.shape[1] :].numpy()
    ours = decoding.greedy_decode(
        decoder.Decoder(config),
        {"params": params},
        tokens,
        lengths,
        max_decode_length=16,
        eos_id=-1,
    )
    np.testing.assert_array_equal(np.asarray(ours.tokens), generated)


def test_single_file_equals_sharded():
    directory = checkpoint("llama2", sharded=False)
    assert os.listdir(directory).count("model.safetensors") == 1
    assert _max_diff(directory, "llama2")[0] <= FP32_TOLERANCE


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", ["llama2", "gpt_neox"])
def test_half_precision_files(family, dtype):
    """bf16/fp16 files load as float32 params equal to the rounded weights."""
    directory = checkpoint(family, dtype=dtype)
    rounded = type(hf_model(family)).from_pretrained(directory, dtype=torch.float32).eval()
    diff, _ = _max_diff(directory, family, model=rounded)
    assert diff <= FP32_TOLERANCE


def test_pytorch_model_bin(tmp_path):
    """Older revisions ship only a torch pickle; read with weights_only=True."""
    source = checkpoint("gpt_neox", sharded=False)
    (tmp_path / "config.json").write_text(open(os.path.join(source, "config.json")).read())
    # The checkpoint's own tensor names (transformers renames some in memory: embed_out).
    state = safetensors.torch.load_file(os.path.join(source, "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert _max_diff(str(tmp_path), "gpt_neox")[0] <= FP32_TOLERANCE


@pytest.mark.parametrize(
    ("family", "field", "value", "without"),
    [
        ("mistral", "sliding_window", 4, 0),
        ("llama3.1", "rope_scaling", ("llama3", 8.0, 1.0, 4.0, 16), ()),
    ],
)
def test_option_is_honoured(family, field, value, without):
    """Mistral's window (4 < the batch's 11 tokens) and Llama 3.1's RoPE scaling change the
    logits: the parity above would catch ignoring them."""
    config, params = load_pretrained(checkpoint(family))
    assert getattr(config, field) == value
    tokens, _, segments, positions = padded_batch()
    args = (jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(positions))
    honoured = decoder.Decoder(config).apply({"params": params}, *args)
    ignored = decoder.Decoder(dataclasses.replace(config, **{field: without}))
    assert np.abs(np.asarray(ignored.apply({"params": params}, *args) - honoured)).max() > 1e-3


@pytest.mark.parametrize("family", ["llama3.1", "gpt_neox", "gemma"])
def test_bfloat16_compute(family):
    """bf16 activations (params float32) stay within 3e-2 of transformers' float32 logits."""
    config, params = load_pretrained(checkpoint(family), dtype="bfloat16")
    tokens, _, segments, positions = padded_batch()
    ours = decoder.Decoder(config).apply(
        {"params": params}, jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(positions)
    )
    want = hf_logits(hf_model(family), tokens, segments, positions)
    real = segments.astype(bool)
    diff = float(np.abs(np.asarray(ours)[real] - want[real]).max())
    print(f"PARITY {family} bf16 max_abs_diff={diff:.2e}")
    assert diff <= 3e-2
