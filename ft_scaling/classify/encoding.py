"""Examples -> fixed-shape token arrays for the head and for verbalizer scoring.

Every text field is first cut to `field_tokens` tokens, so sequence lengths are bounded and a
long premise cannot push the question out of the window. Two layouts, both starting with the
pretraining BOS 0 (seqio's decoder converter shifts targets right with 0):

    head        tokens  = 0 [field_1] EOS [field_2] EOS PAD...        label read at the last EOS
    candidates  for each class c, s = [prompt] [verbalizer_c]:
                inputs  = 0 s[:-1] PAD...   (position t predicts s[t])
                target_positions / target_ids = the positions and tokens of verbalizer_c

`prompt` is `few_shot.few_shot_prompt` of the demonstrations and the query (the finetuning
format: input EOS target EOS ..., query EOS), so PBFT is the k = 0 case of ICL. A sequence
longer than the configured length is an error naming the length to raise, not a silent cut.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import seqio

from ft_scaling.classify import patterns as patterns_lib
from ft_scaling.classify.tasks import Example
from ft_scaling.eval import few_shot


@dataclasses.dataclass
class Encoder:
    """Tokenizes examples with a seqio vocabulary (pad 0, EOS 1)."""

    vocabulary: seqio.Vocabulary
    field_tokens: int = 32

    def __post_init__(self):
        self._cache: dict[str, list[int]] = {}

    @property
    def eos_id(self) -> int:
        return self.vocabulary.eos_id

    def encode(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = list(self.vocabulary.encode(text))
        return self._cache[text]

    def truncate(self, text: str) -> str:
        """`text` cut to its first `field_tokens` tokens (unchanged when shorter)."""
        ids = self.encode(text)
        return (
            text
            if len(ids) <= self.field_tokens
            else self.vocabulary.decode(ids[: self.field_tokens])
        )

    def head_tokens(self, example: Example) -> list[int]:
        """0 [field_1] EOS [field_2] EOS: the vanilla-FT input."""
        tokens = [0]
        for text in example.texts:
            tokens += self.encode(self.truncate(text))[: self.field_tokens] + [self.eos_id]
        return tokens

    def pattern_input(self, pattern: patterns_lib.Pattern, example: Example) -> str:
        return pattern.render(tuple(self.truncate(t) for t in example.texts))

    def prompt(
        self,
        pattern: patterns_lib.Pattern,
        example: Example,
        demonstrations: Sequence[Example] = (),
    ) -> list[int]:
        """Demonstrations (input EOS verbalizer EOS each) and the query input, ending with EOS."""
        demos = [
            (self.pattern_input(pattern, demo), pattern.verbalizers[demo.label])
            for demo in demonstrations
        ]
        query = self.pattern_input(pattern, example)
        return few_shot.few_shot_prompt(self.encode, demos, query, self.eos_id)

    def verbalizer_ids(self, pattern: patterns_lib.Pattern) -> list[list[int]]:
        return [self.encode(v) for v in pattern.verbalizers]


def _too_long(needed: int, length: int, what: str) -> ValueError:
    return ValueError(
        f"a {what} sequence needs {needed} tokens but the length is {length}; raise "
        f"SEQUENCE_LENGTH (ICL_SEQUENCE_LENGTH for demonstrations) or lower FIELD_TOKENS"
    )


def head_arrays(rows: Sequence[Sequence[int]], labels: Sequence[int], length: int) -> dict:
    """tokens/segment_ids/positions [n, length] and labels [n] for the classification head."""
    tokens = np.zeros((len(rows), length), np.int32)
    segments = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise _too_long(len(row), length, "classification-head")
        tokens[i, : len(row)] = row
        segments[i, : len(row)] = 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy()
    return {
        "tokens": tokens,
        "segment_ids": segments,
        "positions": positions,
        "labels": np.asarray(labels, np.int32),
    }


def candidate_arrays(
    prompts: Sequence[Sequence[int]],
    verbalizers: Sequence[Sequence[int]],
    labels: Sequence[int],
    length: int,
) -> dict:
    """Candidate rows of every (example, class) pair: inputs/segment_ids/positions
    [n, classes, length]; target_positions/target_ids/target_weights [n, classes, V] (V = the
    longest verbalizer; weight 0 pads a shorter one); labels [n]."""
    classes, width = len(verbalizers), max(len(v) for v in verbalizers)
    shape = (len(prompts), classes, length)
    inputs, segments = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    target_positions = np.zeros((len(prompts), classes, width), np.int32)
    target_ids = np.zeros((len(prompts), classes, width), np.int32)
    target_weights = np.zeros((len(prompts), classes, width), np.float32)
    for i, prompt in enumerate(prompts):
        for c, verbalizer in enumerate(verbalizers):
            sequence = [*prompt, *verbalizer]
            if len(sequence) > length:
                raise _too_long(len(sequence), length, "verbalizer-scoring")
            inputs[i, c, 1 : len(sequence)] = sequence[:-1]  # position t predicts sequence[t]
            segments[i, c, : len(sequence)] = 1
            span = np.arange(len(prompt), len(sequence))
            target_positions[i, c, : len(span)] = span
            target_ids[i, c, : len(span)] = verbalizer
            target_weights[i, c, : len(span)] = 1.0
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), shape).copy()
    return {
        "inputs": inputs,
        "segment_ids": segments,
        "positions": positions,
        "target_positions": target_positions,
        "target_ids": target_ids,
        "target_weights": target_weights,
        "labels": np.asarray(labels, np.int32),
    }
