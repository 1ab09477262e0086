"""SentencePiece vocabularies: lossless round trip on the corpus, deterministic training."""

import pytest

from ft_scaling.data import debian_l10n, vocab


@pytest.mark.parametrize(
    "name, config",
    [("debian_l10n_ende", "translate_en_de"), ("debian_l10n_enzh", "translate_en_zh")],
)
def test_round_trip_is_lossless_on_the_corpus(name, config):
    vocabulary = vocab.get_vocabulary(name)
    assert vocabulary.eos_id == 1 and vocabulary.pad_id == 0
    processor = vocabulary.tokenizer
    texts = [
        text
        for split in ("train", "validation", "test")
        for example in debian_l10n.load_split(config, split)
        for text in (example["source"], example["target"])
    ]
    assert len(texts) > 70_000
    assert [t for t in texts if processor.decode(processor.encode(t)) != t] == []
    # Newlines, tabs, runs of spaces and rare characters survive through byte fallback too.
    odd = "  Zeile 1\n\tZeile 2  🙂 ǅ\u200b"
    assert vocabulary.decode(vocabulary.encode(odd)) == odd


def test_summarization_documents_round_trip():
    processor = vocab.get_vocabulary("debian_l10n_ende").tokenizer
    documents = [ex["document"] for ex in debian_l10n.load_split("summarize_de", "train")]
    assert all(processor.decode(processor.encode(d)) == d for d in documents)


def test_training_is_deterministic():
    texts = [ex["text"] for ex in debian_l10n.load_split("pretrain_en_de", "validation")]
    first = vocab.train_sentencepiece(texts, vocab_size=600)
    second = vocab.train_sentencepiece(texts, vocab_size=600)
    assert first == second


def test_unknown_vocabulary_lists_the_known_ones():
    with pytest.raises(ValueError, match="debian_l10n_ende"):
        vocab.get_vocabulary("debian_l10n_enfr")
