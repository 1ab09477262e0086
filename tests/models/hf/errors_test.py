"""Bad input is a clear error before any step: architecture, config keys, tensors, files, hub."""

import json
import os
import shutil

import pytest
import safetensors.numpy

from ft_scaling.models.hf import CheckpointError, UnsupportedConfigError, load_pretrained
from ft_scaling.models.hf import config_conversion as conversion
from tests.models.hf.hf_checkpoints import checkpoint


def _config(family="llama2", **changes):
    with open(os.path.join(checkpoint(family), "config.json")) as f:
        return {**json.load(f), **changes}


@pytest.mark.parametrize("name", ["BertForMaskedLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_unsupported_architecture_names_it_and_the_supported(name):
    with pytest.raises(UnsupportedConfigError, match=name) as error:
        conversion.to_model_config(_config(architectures=[name]))
    assert "GPTNeoXForCausalLM" in str(error.value) and "LlamaForCausalLM" in str(error.value)


@pytest.mark.parametrize(
    ("family", "changes", "match"),
    [
        ("llama2", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        (
            "llama2",
            {"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": None},
            "linear",
        ),
        ("qwen2", {"use_sliding_window": True, "max_window_layers": 1}, "use_sliding_window"),
        ("qwen3", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
        ("gemma", {"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
        ("gemma", {"use_bidirectional_attention": True}, "bidirectional"),
        ("gpt_neox", {"hidden_act": "gelu_new"}, "gelu_new"),
        ("llama2", {"hidden_act": "relu"}, "relu"),
    ],
)
def test_config_keys_we_cannot_honour_are_refused(family, changes, match):
    with pytest.raises(UnsupportedConfigError, match=match):
        conversion.to_model_config(_config(family, **changes))


def test_legacy_keys_read_like_transformers():
    """Older checkpoints: rope_theta + rope_scaling, GPT-NeoX's rotary_pct / rotary_emb_base."""
    legacy = _config("llama2", rope_parameters=None, rope_theta=5e5)
    legacy["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    config = conversion.to_model_config(legacy)
    assert config.rope_max_wavelength == 5e5 and config.rope_scaling == ("llama3", 8, 1, 4, 32)
    neox = _config("gpt_neox", rope_parameters=None, rotary_pct=0.5, rotary_emb_base=1e4)
    config = conversion.to_model_config(neox)
    assert (config.rotary_fraction, config.rope_max_wavelength) == (0.5, 1e4)


def _copy(family, tmp_path, sharded=True):
    directory = tmp_path / family
    shutil.copytree(checkpoint(family, sharded=sharded), directory)
    return directory


def test_missing_tensor_is_named(tmp_path):
    directory = _copy("llama2", tmp_path, sharded=False)
    tensors = safetensors.numpy.load_file(directory / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    safetensors.numpy.save_file(tensors, directory / "model.safetensors", {"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_pretrained(str(directory))


def test_unexpected_tensor_is_refused(tmp_path):
    directory = _copy("llama2", tmp_path, sharded=False)
    tensors = safetensors.numpy.load_file(directory / "model.safetensors")
    tensors["model.layers.0.mlp.extra_proj.weight"] = tensors["model.norm.weight"]
    safetensors.numpy.save_file(tensors, directory / "model.safetensors", {"format": "pt"})
    with pytest.raises(CheckpointError, match="extra_proj"):
        load_pretrained(str(directory))


def test_wrong_shape_names_the_tensor_and_both_shapes(tmp_path):
    directory = _copy("llama2", tmp_path)
    config = _config("llama2", intermediate_size=48)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"gate_proj.weight.*\(64, 32\).*\(48, 32\)"):
        load_pretrained(str(directory))


def test_missing_shard_file_is_named(tmp_path):
    directory = _copy("qwen3", tmp_path)
    shard = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))[-1]
    os.remove(directory / shard)
    with pytest.raises(CheckpointError, match=f"shard file {shard}"):
        load_pretrained(str(directory))


def test_hub_id_offline_says_only_local_directories_work(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="only local directories"):
        load_pretrained("EleutherAI/pythia-14m@step1000")


def test_neither_directory_nor_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="neither a directory nor a hub id"):
        load_pretrained(str(tmp_path / "missing" / "dir"))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(str(tmp_path))
