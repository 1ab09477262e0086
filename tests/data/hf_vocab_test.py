"""A checkpoint's tokenizer.json as a seqio vocabulary: ids equal transformers' tokenizer, TF ops
equal Python in a seqio pipeline, special tokens from the config files, size checked."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from ft_scaling.data.hf_vocab import HfTokenizerVocabulary

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Finetuning scales with the data, the model and the method.",
] * 20


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    """A byte-level BPE tokenizer.json (as GPT-NeoX/Llama-3/Qwen ship) trained here."""
    path = tmp_path_factory.mktemp("tok")
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    tokenizer.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<pad>"}))
    return str(path)


def test_special_tokens_and_size(directory):
    vocab = HfTokenizerVocabulary(directory, embedding_rows=320)
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, None)
    assert vocab.add_bos and vocab.vocab_size == 300


def test_larger_than_the_embedding_is_refused(directory):
    with pytest.raises(ValueError, match="300 ids but the model's embedding has only 256 rows"):
        HfTokenizerVocabulary(directory, embedding_rows=256)


def test_ids_equal_transformers_and_round_trip(directory):
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=f"{directory}/tokenizer.json")
    vocab = HfTokenizerVocabulary(directory)
    for text in ["The lazy fox, über alles!", "scales with data\nand méthode 42"]:
        ids = vocab.encode(text)
        assert ids == reference(text, add_special_tokens=False)["input_ids"]
        assert vocab.decode(ids) == text
        assert vocab.decode([*ids, vocab.eos_id, 7, 8]) == text  # stops at EOS
        assert vocab.decode([*ids, 299 + 5]) == text  # padded embedding rows are dropped


def test_tf_ops_equal_python_in_a_seqio_pipeline(directory):
    vocab = HfTokenizerVocabulary(directory)
    texts = ["The quick brown fox", "über den faulen Hund."]
    dataset = tf.data.Dataset.from_tensor_slices({"targets": texts})
    features = {"targets": seqio.Feature(vocab, add_eos=True)}
    dataset = seqio.preprocessors.tokenize(dataset, features)
    dataset = seqio.preprocessors.append_eos(dataset, features)
    rows = [row["targets"].tolist() for row in dataset.as_numpy_iterator()]
    assert rows == [[*vocab.encode(t), vocab.eos_id] for t in texts]
    ragged = vocab.encode_tf(tf.constant(texts))
    assert ragged.to_list() == [vocab.encode(t) for t in texts]
    padded = tf.constant([rows[0] + [0] * 3, rows[1] + [0] * (len(rows[0]) + 3 - len(rows[1]))])
    assert [t.decode() for t in vocab.decode_tf(padded).numpy()] == texts
    assert vocab.decode_tf(tf.constant(rows[1])).numpy().decode() == texts[1]
    np.testing.assert_array_equal(
        vocab.encode_tf(tf.constant(texts[0])).numpy(), vocab.encode(texts[0])
    )
