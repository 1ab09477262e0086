"""Shared pieces of the classification tests: a tiny decoder over the real 4096-piece vocabulary
(the encoder tokenizes real text), its params, and a one-device mesh."""

import types

import pytest

from ft_scaling.classify import encoding
from ft_scaling.data import vocab
from ft_scaling.models import configs

# 1 layer, width 16: compiles and runs in well under a second, yet has every part of the model.
TINY = configs.ModelConfig(
    vocab_size=4096,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    embed_dim=16,
    mlp_dim=32,
)


@pytest.fixture(scope="session")
def kit():
    return types.SimpleNamespace(
        TINY=TINY,
        encoder=encoding.Encoder(vocab.get_vocabulary("debian_l10n_ende"), field_tokens=12),
    )
