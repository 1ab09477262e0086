"""The paper's tasks (WMT14 En-De, WMT19 En-Zh, MLSum) under tfds.testing.mock_data.

The code path is the real one (TFDS loaders, sacrebleu test-set loader, local MLSUM French
copy); only the bytes are fake: TFDS serves random strings, sacrebleu and MLSUM French are
replaced by small files and functions.
"""

import json

import pytest
import seqio
import tensorflow_datasets as tfds

import ft_scaling.data.tasks as tasks
from ft_scaling.data import sources

LENGTHS = {"inputs": 256, "targets": 256}


def _examples(task_name, split, num_examples=3):
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(LENGTHS, split=split, shuffle=False)
    return list(dataset.take(num_examples).as_numpy_iterator())


def _raw(name, split, num_examples=3):
    return list(tfds.load(name, split=split).take(num_examples).as_numpy_iterator())


TRANSLATE = "Translate English to {}: "
SUMMARIZE = "Summarize the following document in {}: "
CASES = [
    ("wmt14_ende", "wmt14_translate/de-en", "train", TRANSLATE.format("German"), "en", "de"),
    ("wmt14_ende", "wmt14_translate/de-en", "validation", TRANSLATE.format("German"), "en", "de"),
    ("wmt19_enzh", "wmt19_translate/zh-en", "train", TRANSLATE.format("Chinese"), "en", "zh"),
    ("mlsum_de", "gem/mlsum_de", "train", SUMMARIZE.format("German"), "text", "target"),
    ("mlsum_es", "gem/mlsum_es", "test", SUMMARIZE.format("Spanish"), "text", "target"),
    (
        "mlsum_en",
        "cnn_dailymail",
        "validation",
        SUMMARIZE.format("English"),
        "article",
        "highlights",
    ),
]


@pytest.mark.parametrize("task_name, tfds_name, split, prefix, source_key, target_key", CASES)
def test_tfds_task_formats_examples(task_name, tfds_name, split, prefix, source_key, target_key):
    with tfds.testing.mock_data(num_examples=4):
        raw = _raw(tfds_name, split)
        examples = _examples(task_name, split)
    assert len(examples) == 3
    vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    for raw_example, example in zip(raw, examples, strict=True):
        expected_inputs = prefix + raw_example[source_key].decode().strip()
        assert example["inputs_pretokenized"].decode() == expected_inputs
        assert example["targets_pretokenized"].decode() == raw_example[target_key].decode().strip()
        assert example["inputs"][-1] == 1 and example["targets"][-1] == 1  # EOS ends both
        assert vocabulary.decode(example["targets"].tolist()) == raw_example[target_key].decode()


def test_wmt_test_splits_concatenate_newstest_2020_to_2022(monkeypatch):
    calls = []

    def fake_pairs(test_set, langpair):
        calls.append((test_set, langpair))
        return [(f"source {test_set}", f"Ziel {test_set}")]

    monkeypatch.setattr(sources, "sacrebleu_pairs", fake_pairs)
    examples = _examples("wmt14_ende", "test", num_examples=10)
    assert calls == [("wmt20", "en-de"), ("wmt21", "en-de"), ("wmt22", "en-de")]
    assert [e["targets_pretokenized"].decode() for e in examples] == [
        "Ziel wmt20",
        "Ziel wmt21",
        "Ziel wmt22",
    ]
    assert (
        examples[0]["inputs_pretokenized"].decode() == "Translate English to German: source wmt20"
    )
    calls.clear()
    _examples("wmt19_enzh", "validation")
    assert calls == [("wmt17/dev", "en-zh")]  # newsdev2017, PAPER.md Table 1a


def test_mlsum_mixture_mixes_four_languages_by_train_size(tmp_path, monkeypatch):
    for split, count in (("train", 6), ("val", 2), ("test", 2)):
        rows = [{"text": f"Article {split} {i}", "summary": f"Résumé {i}"} for i in range(count)]
        lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
        (tmp_path / f"fr_{split}.jsonl").write_text(lines, encoding="utf-8")
    monkeypatch.setenv(tasks.MLSUM_FR_DIR_ENV, str(tmp_path))
    mixture = seqio.get_mixture_or_task("mlsum")
    with tfds.testing.mock_data(num_examples=4):
        rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
        dataset = mixture.get_dataset(LENGTHS, split="train", shuffle=True, seed=0)
        # A mixture keeps only the output features: decode the inputs to read the prefix.
        vocabulary = mixture.tasks[0].output_features["inputs"].vocabulary
        prefixes = {
            vocabulary.decode(ex["inputs"].tolist()).split(":")[0]
            for ex in dataset.take(40).as_numpy_iterator()
        }
    assert rates["mlsum_fr"] == 6.0  # train size of the local copy
    assert rates["mlsum_de"] == rates["mlsum_es"] == rates["mlsum_en"] == 4.0
    languages = {p.rsplit(" ", 1)[-1] for p in prefixes}
    assert languages == {"German", "Spanish", "French", "English"}
    french = _examples("mlsum_fr", "validation")
    assert french[0]["inputs_pretokenized"].decode() == (
        "Summarize the following document in French: Article val 0"
    )


def test_missing_mlsum_french_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(tasks.MLSUM_FR_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ThomasScialom/MLSUM"):
        _examples("mlsum_fr", "train")


def test_missing_tfds_dataset_says_how_to_obtain_it(tmp_path):
    load = sources.tfds_loader("wmt14_translate/de-en", "train", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"tfds build wmt14_translate/de-en"):
        load(False, None)
