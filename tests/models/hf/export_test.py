"""Export: import -> one full-model step -> save_pretrained -> transformers loads it with our
logits; LoRA -> a PEFT adapter that PeftModel.from_pretrained loads with our logits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.methods import lora, lora_export
from ft_scaling.models import decoder
from ft_scaling.models.hf import load_pretrained, save_peft_adapter, save_pretrained
from tests.models.hf.hf_checkpoints import FAMILIES, checkpoint, hf_logits, padded_batch, torch

transformers = pytest.importorskip("transformers")


def _batch():
    tokens, _, segments, positions = padded_batch(seed=2)
    return (
        tokens,
        segments,
        positions,
        (jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(positions)),
    )


def _one_step(model, params, args):
    """One SGD step on next-token cross-entropy: every weight moves."""
    tokens = args[0]

    def loss(p):
        logits = model.apply({"params": p}, *args)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    grads = jax.grad(loss)(params)
    return jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_full_finetune_export_loads_in_transformers(family, tmp_path):
    source = checkpoint(family)
    config, params = load_pretrained(source)
    model = decoder.Decoder(config)
    tokens, segments, positions, args = _batch()
    params = _one_step(model, params, args)
    ours = np.asarray(model.apply({"params": params}, *args))
    save_pretrained(config, params, str(tmp_path), source=source)
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    real = segments.astype(bool)
    diff = np.abs(hf_logits(exported, tokens, segments, positions)[real] - ours[real]).max()
    assert diff <= 1e-4, diff
    reloaded = load_pretrained(str(tmp_path))[1]
    for path, leaf in traverse_util.flatten_dict(params).items():
        np.testing.assert_array_equal(traverse_util.flatten_dict(reloaded)[path], leaf)


@pytest.mark.parametrize("family", ["llama2", "gpt_neox", "qwen3", "gemma"])
def test_lora_adapter_loads_in_peft(family, tmp_path):
    peft = pytest.importorskip("peft")
    source = checkpoint(family)
    config, base = load_pretrained(source)
    method = lora.LoRA(rank=2, alpha=6.0)
    model = method.wrap(decoder.Decoder(config))
    tokens, segments, positions, args = _batch()
    fresh = nn.meta.unbox(model.init(jax.random.PRNGKey(0), args[0]))["params"]
    flat = traverse_util.flatten_dict(fresh)
    flat.update(traverse_util.flatten_dict(base))
    for i, path in enumerate(sorted(p for p in flat if p[-1] == lora.LORA_B)):
        flat[path] = 0.2 * jax.random.normal(jax.random.PRNGKey(i), flat[path].shape)  # trained
    params = traverse_util.unflatten_dict(flat)
    ours = np.asarray(model.apply({"params": params}, *args))
    base_dir, adapter_dir = str(tmp_path / "base"), str(tmp_path / "adapter")
    save_pretrained(config, base, base_dir, source=source)
    if family == "llama2":  # the methods/ entry point writes the same adapter
        lora_export.export_peft(method, params, adapter_dir, hf_source=base_dir)
    else:
        save_peft_adapter(method, params, adapter_dir, source=base_dir)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        adapted = peft.PeftModel.from_pretrained(hf_base, adapter_dir).eval()
    real = segments.astype(bool)
    diff = np.abs(hf_logits(adapted, tokens, segments, positions)[real] - ours[real]).max()
    assert diff <= 1e-4, diff
    plain = decoder.Decoder(config).apply({"params": base}, *args)
    assert np.abs(np.asarray(plain) - ours).max() > 1e-2  # the adapter changes the logits
