"""SentencePiece vocabularies trained on debian_l10n pretraining text, exposed to seqio.

    name                 trained on                      default size   file in the snapshot
    debian_l10n_ende     pretrain_en_de train text       4096           spm_ende.model
    debian_l10n_enzh     pretrain_en_zh train text       8192           spm_enzh.model

The paper's tokenizer is not stated (PAPER.md §1); these are small so tiny CPU models spend
their parameters on layers, not embeddings. Training is deterministic: one thread, the input
in stored order, no sampling or shuffling. Byte fallback plus the identity normaliser (no NFKC,
whitespace kept) make decode(encode(text)) == text for any UTF-8 string. Ids follow seqio's
convention: pad 0, eos 1, unk 2, no bos.
"""

import functools
import io
import os
from collections.abc import Iterable

import sentencepiece as spm
import seqio

from ft_scaling import files
from ft_scaling.data import debian_l10n

VOCABULARIES = {
    # name: (pretraining config whose train split is the text, vocab size, character coverage)
    "debian_l10n_ende": ("pretrain_en_de", 4096, 1.0),
    # Chinese has thousands of rare characters; the rarest 0.05% fall back to bytes.
    "debian_l10n_enzh": ("pretrain_en_zh", 8192, 0.9995),
}


def model_path(name: str, root: str | None = None) -> str:
    """Where the SentencePiece model of vocabulary `name` lives (default: the snapshot)."""
    if name not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {name!r}; known: {', '.join(VOCABULARIES)}")
    suffix = name.rsplit("_", 1)[-1]
    return os.path.join(root or debian_l10n.SNAPSHOT_DIR, f"spm_{suffix}.model")


def train_sentencepiece(
    texts: Iterable[str], vocab_size: int, character_coverage: float = 1.0
) -> bytes:
    """Trains a unigram SentencePiece model deterministically and returns its bytes.

    Args:
      texts: training documents; newlines inside a document are kept (byte fallback).
      vocab_size: number of pieces, including pad/eos/unk and the 256 byte pieces.
      character_coverage: share of characters covered by pieces; the rest use bytes.

    Returns:
      The serialized model proto.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=character_coverage,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        # Determinism: every sentence, in order, on one thread.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        max_sentence_length=1 << 15,
        minloglevel=2,
    )
    return model.getvalue()


def build_vocabulary(
    name: str, data_root: str | None = None, out_dir: str | None = None, vocab_size: int = 0
) -> str:
    """Trains vocabulary `name` on its pretraining text and writes the model file.

    Args:
      name: a key of VOCABULARIES.
      data_root: debian_l10n data root to read the pretraining text from.
      out_dir: where to write `spm_<suffix>.model`; defaults to the snapshot directory.
      vocab_size: overrides the default size when positive.

    Returns:
      The path written.
    """
    config, default_size, coverage = VOCABULARIES[name]
    texts = [ex["text"] for ex in debian_l10n.load_split(config, "train", root=data_root)]
    proto = train_sentencepiece(texts, vocab_size or default_size, coverage)
    path = model_path(name, out_dir)
    files.atomic_write_bytes(path, proto)
    get_vocabulary.cache_clear()
    return path


@functools.cache
def get_vocabulary(name: str = "debian_l10n_ende") -> seqio.SentencePieceVocabulary:
    """The seqio vocabulary `name` (see VOCABULARIES): from the data root, else the snapshot.

    Args:
      name: "debian_l10n_ende" (English + German) or "debian_l10n_enzh" (English + Chinese).

    Returns:
      A `seqio.SentencePieceVocabulary` with eos id 1 and pad id 0.

    Raises:
      FileNotFoundError: when the model file is missing, with the command that builds it.
    """
    if name.startswith("hf:"):  # an imported checkpoint's tokenizer.json (data/hf_vocab.py)
        from ft_scaling.data import hf_vocab  # noqa: PLC0415  (tokenizers: optional)

        return hf_vocab.from_name(name)
    # A full build (FT_SCALING_DEBIAN_L10N_DIR) may carry its own vocabularies.
    path = model_path(name, debian_l10n.data_root())
    if not os.path.exists(path):
        path = model_path(name)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"vocabulary {name!r}: no model at {path}. Build it with: "
            "ft-scaling data build debian_l10n --snapshot"
        )
    return seqio.SentencePieceVocabulary(path)
