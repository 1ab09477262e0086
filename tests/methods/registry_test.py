"""The registry and the method gins: one gin file selects a method and the paper's recipe."""

import pytest

import gin
from ft_scaling.config import flags
from ft_scaling.methods import bitfit, freeze, full, lora, prompt, registry

# PAPER.md §3 (App "Optimization"): learning rates 3e-1 / 1e-2 / 1e-3, batch 16 PET / 128 FMT.
PAPER_RECIPES = {
    "fmt": (full.FullModelTuning, 1e-3, 128),
    "prompt": (prompt.PromptTuning, 3e-1, 16),
    "lora": (lora.LoRA, 1e-2, 16),
    "bitfit": (bitfit.BitFit, 1e-2, 16),
    "freeze": (freeze.LayerFreeze, 1e-3, 128),
}


def _method_from_gin(name: str, bindings=()):
    flags.parse_gin([registry.gin_file(name)], list(bindings))
    return gin.query_parameter("%METHOD").scoped_configurable_fn()


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_gin_file_binds_method_and_recipe(name):
    cls, learning_rate, batch_size = PAPER_RECIPES[name]
    method = _method_from_gin(name)
    assert type(method) is cls and method.name == name and registry.get(name) is cls
    assert gin.query_parameter("%LEARNING_RATE") == learning_rate
    assert gin.query_parameter("%BATCH_SIZE") == batch_size


def test_paper_defaults_and_macro_overrides():
    assert _method_from_gin("prompt").prompt_length == 100  # PAPER.md §3: |P| = 100
    method = _method_from_gin("lora")
    assert (method.rank, method.scale) == (4, 1.0)  # PAPER.md §3: r = 4
    method = _method_from_gin("lora", ["LORA_RANK = 16", "LORA_TARGETS = ['mlp/wo']"])
    assert method.rank == 16 and method.targets == ("mlp/wo",) and method.scale == 0.25
    assert _method_from_gin("prompt", ["PROMPT_LENGTH = 600"]).prompt_length == 600
    assert _method_from_gin("freeze", ["FREEZE_TOP_K = 3"]).top_k == 3


def test_gin_files_are_named_for_their_modules():
    assert registry.gin_file("fmt") == "gin/methods/full.gin"  # methods/full.py
    assert registry.gin_file("lora") == "gin/methods/lora.gin"


def test_unknown_names():
    with pytest.raises(KeyError, match=r"unknown finetuning method 'adapter'.*'bitfit'"):
        registry.get("adapter")
    assert sorted(registry.METHODS) == ["bitfit", "fmt", "freeze", "lora", "prompt"]
