"""A Hugging Face checkpoint's own tokenizer (`tokenizer.json`) as a `seqio.Vocabulary`.

    directory/tokenizer.json           the `tokenizers` library's format (BPE, Unigram, ...)
    directory/tokenizer_config.json    bos_token / eos_token / pad_token / unk_token
    directory/special_tokens_map.json  the same, in older checkpoints (read when the first
                                       does not name a token)

So a task runs with an imported model's vocabulary: `encode`/`decode` in Python, and
`encode_tf`/`decode_tf` as TF ops for the seqio pipeline (`tf.numpy_function` calling the Rust
tokenizer; such a graph runs in this process only, it cannot be serialised). Text is encoded
without special tokens, as seqio expects: EOS is appended by the task's output features, and a
model trained with a BOS (Llama, Gemma) needs the task to prepend `bos_id` (`add_bos` tells).
With no pad token (Llama, GPT-NeoX) pad_id is the EOS id, as transformers' generate pads.
A tokenizer with more ids than the model's embedding has rows is refused; fewer is normal
(GPT-NeoX pads 50277 ids to 50304 rows), and decode drops ids past the tokenizer's.
"""

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

_SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")


class HfTokenizerVocabulary(seqio.Vocabulary):
    """seqio vocabulary over a `tokenizer.json`.

    Args:
      directory: an HF model directory holding tokenizer.json (and its special-token files).
      embedding_rows: the model's vocab_size; a tokenizer with more ids raises ValueError.
    """

    def __init__(self, directory: str, embedding_rows: int | None = None):
        super().__init__(extra_ids=0)
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{directory} has no tokenizer.json")
        self._directory = directory
        self._tokenizer = tokenizers.Tokenizer.from_file(path)
        self._size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        if embedding_rows is not None and self._size > embedding_rows:
            raise ValueError(
                f"tokenizer {path} has {self._size} ids but the model's embedding has only "
                f"{embedding_rows} rows: ids >= {embedding_rows} would have no embedding"
            )
        tokens, self.add_bos = special_tokens(directory)
        self._ids = {key: self._id(tokens.get(key), key) for key in _SPECIAL}

    def _id(self, token: str | None, key: str) -> int | None:
        if token is None:
            return None
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{key} {token!r} of {self._directory} is not in tokenizer.json")
        return token_id

    @property
    def bos_id(self) -> int | None:
        return self._ids["bos_token"]

    @property
    def eos_id(self) -> int | None:
        return self._ids["eos_token"]

    @property
    def pad_id(self) -> int:
        pad = self._ids["pad_token"]
        return self.eos_id if pad is None and self.eos_id is not None else (pad or 0)

    @property
    def unk_id(self) -> int | None:
        return self._ids["unk_token"]

    @property
    def _base_vocab_size(self) -> int:
        return self._size

    def _encode(self, s: str) -> Sequence[int]:
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        skip = {self.pad_id, self.bos_id}
        return self._tokenizer.decode([i for i in ids if 0 <= i < self._size and i not in skip])

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """int32 ids [n] of a scalar string, or a RaggedTensor [batch, None] of a 1-D batch."""
        s = tf.convert_to_tensor(s, tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(
                lambda x: np.array(self._encode(_text(x)), np.int32), [s], tf.int32
            )
            ids.set_shape([None])
            return ids

        def batch(texts):
            rows = [self._encode(_text(t)) for t in texts]
            flat = np.array([i for row in rows for i in row], np.int32)
            return flat, np.array([len(row) for row in rows], np.int64)

        flat, lengths = tf.numpy_function(batch, [s], (tf.int32, tf.int64))
        flat.set_shape([None])
        lengths.set_shape([None])
        return tf.RaggedTensor.from_row_lengths(flat, lengths)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """A string scalar of ids [n], or strings [batch] of ids [batch, n]."""
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank == 1:
            text = tf.numpy_function(lambda x: self._decode(x).encode(), [ids], tf.string)
            text.set_shape([])
            return text
        texts = tf.numpy_function(
            lambda x: np.array([self._decode(row).encode() for row in x], object), [ids], tf.string
        )
        texts.set_shape([None])
        return texts

    @functools.cached_property
    def digest(self) -> str:
        """A short stable hash of the tokenizer and its special tokens (names task variants)."""
        payload = json.dumps([self._tokenizer.to_str(), self._ids, self.add_bos], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    def __eq__(self, other):
        if not isinstance(other, HfTokenizerVocabulary):
            return False
        return self is other or self.digest == other.digest  # tokenizer, special ids, add_bos

    def __hash__(self):
        return hash(self.digest)


NAME_PREFIX = "hf:"


def from_name(name: str) -> HfTokenizerVocabulary:
    """The vocabulary `vocab.get_vocabulary` names 'hf:DIR' or 'hf:org/name[@revision]'.

    So a setting that names a vocabulary (the classify study's `RunSettings.vocabulary`, GLUE's
    encoder, its adaptive LM task) can name an imported checkpoint's tokenizer; a hub id
    fetches only the checkpoint's JSON files.
    """
    from ft_scaling.models.hf import loading  # noqa: PLC0415  (models -> data stays one way)

    return checkpoint_vocabulary(loading.resolve(name.removeprefix(NAME_PREFIX), config_only=True))


@functools.cache
def checkpoint_vocabulary(directory: str) -> HfTokenizerVocabulary:
    """The tokenizer of HF checkpoint `directory`, checked against its config.json vocab_size.

    One instance per directory and process: the tasks of a run and its checks share it.
    """
    config_path = os.path.join(directory, "config.json")
    rows = None
    if os.path.exists(config_path):
        with open(config_path) as f:
            rows = json.load(f).get("vocab_size")
    return HfTokenizerVocabulary(directory, embedding_rows=rows)


def _text(value) -> str:
    """A Python string from what numpy_function passes: bytes or a 0-d object array."""
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode() if isinstance(value, bytes) else str(value)


def special_tokens(directory: str) -> tuple[dict[str, str], bool]:
    """({bos_token/eos_token/pad_token/unk_token: content}, add_bos_token) of a checkpoint."""
    tokens, add_bos = {}, False
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            entries = json.load(f)
        add_bos = add_bos or bool(entries.get("add_bos_token", False))
        for key in _SPECIAL:
            value = entries.get(key)
            if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
                value = value.get("content")
            if value is not None and key not in tokens:
                tokens[key] = value
    return tokens, add_bos
