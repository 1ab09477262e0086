"""Few-shot prompt format, Flores-200 / TFDS readers, and the zero-shot directions (paper §5)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.eval import examples, few_shot, generate, main, metrics, restore
from ft_scaling.models.configs import ModelConfig
from ft_scaling.models.decoder import Decoder
from ft_scaling.train import partitioning

EOS = 1
LANGS = ("fr", "de", "hi", "tr", "pt", "zh")


def _encode(text: str) -> list[int]:
    return [len(word) + 10 for word in text.split()]


def test_few_shot_prompt_format():
    demos = [("a bb", "ccc"), ("dddd", "e ff")]
    tokens = few_shot.few_shot_prompt(_encode, demos, "ggg hh", EOS)
    assert tokens == [11, 12, EOS, 13, EOS, 14, EOS, 11, 12, EOS, 13, 12, EOS]
    assert few_shot.few_shot_prompt(_encode, [], "ggg", EOS) == [13, EOS]  # zero-shot


def test_direction_examples_use_fixed_demonstrations_from_the_pool():
    queries = [("un chat", "一只猫"), ("le chien", "狗")]
    pool = [(f"phrase {i}", f"句子 {i}") for i in range(10)]
    one = few_shot.direction_examples(queries, "fr", "zh", _encode, EOS, 1, pool, seed=3)
    again = few_shot.direction_examples(queries, "fr", "zh", _encode, EOS, 1, pool, seed=3)
    assert [e.prompt for e in one] == [e.prompt for e in again]
    demo = few_shot.choose_demonstrations(pool, 1, 3)[0]
    expected_demo = _encode(few_shot.translation_input(demo[0], "fr", "zh")) + [EOS]
    expected_demo += _encode(demo[1]) + [EOS]
    assert one[0].prompt[: len(expected_demo)] == expected_demo
    assert one[0].source == "Translate French to Chinese: un chat"
    assert one[0].prompt[len(expected_demo) :] == _encode(one[0].source) + [EOS]
    assert one[1].target == "狗"
    five = few_shot.direction_examples(queries, "fr", "zh", _encode, EOS, 5, pool, seed=3)
    assert five[0].prompt.count(EOS) == 11
    with pytest.raises(ValueError, match="need 5 demonstrations; the pool has 2"):
        few_shot.direction_examples(queries, "fr", "zh", _encode, EOS, 5, pool[:2])
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        few_shot.translation_input("x", "xx", "zh")


def _write_flores(root, lines=3):
    for split in ("dev", "devtest"):
        (root / split).mkdir(parents=True)
        for lang in LANGS:
            code = few_shot.FLORES_CODES[lang]
            text = "\n".join(f"{lang} {split} sentence {i}" for i in range(lines)) + "\n"
            (root / split / f"{code}.{split}").write_text(text, encoding="utf-8")


def test_flores_reader(tmp_path):
    _write_flores(tmp_path)
    pairs = few_shot.flores_pairs(str(tmp_path), "hi", "zh")
    assert pairs[2] == ("hi devtest sentence 2", "zh devtest sentence 2")
    with pytest.raises(FileNotFoundError, match="eng_Latn.devtest not found; download"):
        few_shot.flores_pairs(str(tmp_path), "en", "zh")
    (tmp_path / "devtest" / "tur_Latn.devtest").write_text("only one\n", encoding="utf-8")
    with pytest.raises(ValueError, match="tr has 1 lines"):
        few_shot.flores_pairs(str(tmp_path), "tr", "zh")


def test_tfds_reader_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=3):
        pairs = few_shot.tfds_pairs("wmt14_translate/de-en", "validation", "en", "de")
    assert len(pairs) == 3 and all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)


def test_zero_shot_scores_every_direction_and_their_mean(tmp_path):
    _write_flores(tmp_path, lines=2)
    config = ModelConfig(
        vocab_size=4096,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        embed_dim=16,
        mlp_dim=32,
    )
    model = Decoder(config)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32)))
    restored = restore.RestoredModel(model, params, 0, {}, partitioning.make_mesh(), ())
    vocabulary = examples.vocabulary("debian_l10n_translate_en_zh")
    decode = generate.DecodeSettings(max_decode_length=4, batch_size=2)
    scoring = functools.partial(metrics.score, names=["bleu", "chrf"], language="zh")
    results = main.zero_shot(restored, str(tmp_path), "zh", 1, 0, decode, vocabulary, scoring)
    assert sorted(results) == ["de-zh", "fr-zh", "hi-zh", "mean", "pt-zh", "tr-zh"]
    chrf = [results[f"{s}-zh"]["chrf"] for s in few_shot.ZERO_SHOT_SOURCES["zh"]]
    np.testing.assert_allclose(results["mean"]["chrf"], np.mean(chrf))
    assert main.infer_language("wmt19_enzh") == "zh" and main.infer_language("mlsum") == "en"
