"""The published Pythia and OLMo-2 configs: the parameter counts the suites themselves publish."""

import pytest

from ft_scaling.models import configs
from ft_scaling.models.hf import config_conversion, published_configs

# Biderman et al. 2023 (Pythia), Table 1 / the EleutherAI/pythia README: total parameters and
# non-embedding parameters of each size.
PYTHIA = {
    "70m": (70_426_624, 18_915_328),
    "160m": (162_322_944, 85_056_000),
    "410m": (405_334_016, 302_311_424),
    "1b": (1_011_781_632, 805_736_448),
    "1.4b": (1_414_647_808, 1_208_602_624),
    "2.8b": (2_775_208_960, 2_517_652_480),
    "6.9b": (6_857_302_016, 6_444_163_072),
    "12b": (11_846_072_320, 11_327_027_200),
}
# The OLMo-2 model cards' sizes (hub 'Model size', to the digits shown).
OLMO2 = {"OLMo-2-0425-1B": 1.48e9, "OLMo-2-1124-7B": 7.30e9, "OLMo-2-1124-13B": 13.7e9,
         "OLMo-2-0325-32B": 32.2e9}  # fmt: skip


@pytest.mark.parametrize("size", PYTHIA)
def test_pythia_counts_are_the_published_ones(size):
    for name in (f"EleutherAI/pythia-{size}", f"EleutherAI/pythia-{size}-deduped@step1000"):
        config = published_configs.model_config(name)
        assert configs.param_count(config) == PYTHIA[size][0]
        assert configs.non_embedding_param_count(config) == PYTHIA[size][1]


def test_olmo2_counts_round_to_the_model_cards():
    for name, published in OLMO2.items():
        config = published_configs.model_config(f"allenai/{name}@stage1-step1000-tokens5B")
        assert abs(configs.param_count(config) - published) <= 0.0051 * published, name
        assert (config.qk_norm, config.norm_placement, config.tie_embeddings) == (
            "projection",
            "post",
            False,
        )
    assert published_configs.model_config("allenai/OLMo-2-0325-32B").num_kv_heads == 8


def test_every_entry_converts_and_unknown_ids_are_named():
    for name, hf_config in published_configs.PUBLISHED.items():
        assert config_conversion.architecture(hf_config) in config_conversion.SUPPORTED, name
    assert published_configs.model_config("eleutherai/PYTHIA-14M").embed_dim == 128
    with pytest.raises(KeyError, match="no published config.json for 'EleutherAI/pythia-7b'"):
        published_configs.hf_config("EleutherAI/pythia-7b@main")
