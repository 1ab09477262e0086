"""The benchmark models have exactly the parameter count of their Hugging Face twins."""

import pytest

from benchmarks import llama_shapes
from ft_scaling.models import configs

torch = pytest.importorskip("torch", reason="benchmark extras: pip install -e '.[bench]'")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("size", sorted(llama_shapes.SHAPES))
def test_same_parameter_count_as_llama_for_causal_lm(size):
    config = llama_shapes.SHAPES[size]
    hf_config = transformers.LlamaConfig(**llama_shapes.hf_llama_kwargs(config, 256))
    with torch.device("meta"):  # shapes only, nothing allocated
        model = transformers.LlamaForCausalLM(hf_config)
    hf_count = sum(p.numel() for p in model.parameters())  # a tied tensor counts once
    assert hf_count == configs.param_count(config)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
