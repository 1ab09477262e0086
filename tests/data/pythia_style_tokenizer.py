"""A Pythia-style tokenizer built offline, and tokens per character of the En-Zh pairs.

Pythia's tokenizer is GPT-NeoX-20B's (Black et al. 2022; Biderman et al. 2023): byte-level BPE,
NFC normaliser, ByteLevel pre-tokenizer (GPT-2's regex split, no prefix space), ByteLevel
post-processor and decoder, <|endoftext|> = 0 and <|padding|> = 1, ~50k ids, trained on the
Pile (mostly English). None of it is downloaded here. The fixture reproduces that *setup* with
`tokenizers`, trained on English only: the English side of debian_l10n's En-De train pairs plus
the English package descriptions (summarize_en train), Debian UI and package text. It is NOT
Pythia's vocabulary: it has no merges for any non-Latin script, where Pythia's (trained on the
Pile, which holds a little Chinese) has some, so its Chinese figure is an upper bound on
Pythia's (every CJK character is its 3 UTF-8 bytes, 3 ids).

    tests/testdata/pythia_style_tokenizer/tokenizer.json    vocab 8192 (the size of our En-Zh
        SentencePiece vocabulary, so the comparison is at equal size; a 50k file is ~2.7 MB,
        and this English text supports only ~39k merges anyway)

    python -m tests.data.pythia_style_tokenizer            prints the figures (8192, 16384, all)
    python -m tests.data.pythia_style_tokenizer --write    rebuilds the fixture

Measured on the En-Zh pairs held out of every training text (validation + test splits of
debian_l10n translate_en_zh): tokens per character of the English sources and of the Chinese
targets, for our vocabulary (data/vocab.py 'debian_l10n_enzh': SentencePiece unigram, 8192,
trained on the En+Zh pretraining text) and for this tokenizer.
"""

import argparse
import os

from ft_scaling.data import debian_l10n

FIXTURE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "testdata",
    "pythia_style_tokenizer",
)
FIXTURE_VOCAB = 8192
SPECIALS = ["<|endoftext|>", "<|padding|>"]  # ids 0 and 1, as in Pythia
TOKENIZER_CONFIG = (
    '{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",'
    ' "add_bos_token": false, "add_eos_token": false}\n'
)


def english_text() -> list[str]:
    """The fixture's training text: English only, none of it from the En-Zh held-out pairs."""
    text = [row["source"] for row in debian_l10n.load_split("translate_en_de", "train")]
    for row in debian_l10n.load_split("summarize_en", "train"):
        text += [row["document"], row["summary"]]
    return text


def build(vocab_size: int, text: list[str] | None = None):
    """A GPT-NeoX-style byte-level BPE `tokenizers.Tokenizer` trained on `english_text()`."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(text if text is not None else english_text(), trainer)
    return tokenizer


def held_out_pairs() -> list[dict[str, str]]:
    """The En-Zh pairs of no training text: validation + test of translate_en_zh."""
    return [
        row
        for split in ("validation", "test")
        for row in debian_l10n.load_split("translate_en_zh", split)
    ]


def tokens_per_char(encode, texts: list[str]) -> float:
    """Total ids over total characters of `texts`, each encoded alone (no BOS/EOS)."""
    return sum(len(encode(t)) for t in texts) / sum(len(t) for t in texts)


def figures(tokenizer) -> dict[str, float]:
    """{'ours_en', 'ours_zh', 'bpe_en', 'bpe_zh'}: tokens per character of the held-out pairs."""
    from ft_scaling.data import vocab

    ours = vocab.get_vocabulary("debian_l10n_enzh")
    pairs = held_out_pairs()
    english, chinese = [p["source"] for p in pairs], [p["target"] for p in pairs]

    def bpe(text):
        return tokenizer.encode(text, add_special_tokens=False).ids

    return {
        "ours_en": tokens_per_char(ours.encode, english),
        "ours_zh": tokens_per_char(ours.encode, chinese),
        "bpe_en": tokens_per_char(bpe, english),
        "bpe_zh": tokens_per_char(bpe, chinese),
    }


def load_fixture():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(FIXTURE_DIR, "tokenizer.json"))


def write_fixture() -> str:
    os.makedirs(FIXTURE_DIR, exist_ok=True)
    build(FIXTURE_VOCAB).save(os.path.join(FIXTURE_DIR, "tokenizer.json"))
    with open(os.path.join(FIXTURE_DIR, "tokenizer_config.json"), "w") as f:
        f.write(TOKENIZER_CONFIG)
    return FIXTURE_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rebuild the fixture")
    if parser.parse_args().write:
        print("wrote", write_fixture())
    text = english_text()
    pairs = held_out_pairs()
    print(f"{len(pairs)} held-out En-Zh pairs; fixture text {sum(map(len, text)):,} chars")
    print("fixture:", {k: round(v, 4) for k, v in figures(load_fixture()).items()})
    for size in (16384, 50277):
        tokenizer = build(size, text)
        got = {k: round(v, 4) for k, v in figures(tokenizer).items()}
        print(f"vocab {size} (reached {tokenizer.get_vocab_size()}):", got)


if __name__ == "__main__":
    main()
