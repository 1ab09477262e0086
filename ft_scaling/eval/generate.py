"""Prompts in, token lists out: batching around the decoders, compiled once per run.

Every batch has the same shape: prompts are left-padded to the longest prompt of the whole set
(rounded up to a multiple of WIDTH_BUCKET) and the last batch is filled with one-token dummy
rows (dropped afterwards), so the jitted decoder compiles once however many examples there are.
"""

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import numpy as np

import gin
from ft_scaling.eval import beam_search, decoding

WIDTH_BUCKET = 32


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How to decode.

    Attributes:
      max_decode_length: new tokens per example at most (> 0); None lets the run choose (the
        eval and infer runs use the task's targets feature length).
      beam_size: 1 = greedy (the paper's choice); more = beam search.
      alpha: beam search length penalty exponent (GNMT; t5x's default 0.6).
      batch_size: prompts per decoder call.
    """

    max_decode_length: int | None = None
    beam_size: int = 1
    alpha: float = 0.6
    batch_size: int = 32

    def __post_init__(self):
        if self.max_decode_length is not None and self.max_decode_length <= 0:
            raise ValueError(f"max_decode_length must be positive, got {self.max_decode_length}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.batch_size < 1:
            raise ValueError(f"decode batch_size must be >= 1, got {self.batch_size}")


def generate(
    model: nn.Module,
    variables,
    prompts: Sequence[Sequence[int]],
    settings: DecodeSettings,
    eos_id: int,
    pad_id: int = 0,
) -> list[list[int]]:
    """Decodes every prompt; returns each output cut before its first EOS.

    Args:
      model: the decoder or a method's wrapper.
      variables: {'params': params}.
      prompts: token lists (for a prefix LM: the inputs, ending with EOS).
      settings: decoding settings.
      eos_id: ends an output.
      pad_id: the padding id.

    Returns:
      One token list per prompt, in order.
    """
    if not prompts:
        raise ValueError("no prompts to decode (empty split?)")
    if settings.max_decode_length is None:
        raise ValueError("DecodeSettings.max_decode_length is not set")
    # Rounded up so that prompt sets of similar lengths (e.g. the zero-shot directions) share
    # one compiled decoder; the extra left padding is masked out.
    width = -(-max(len(p) for p in prompts) // WIDTH_BUCKET) * WIDTH_BUCKET
    outputs = []
    for start in range(0, len(prompts), settings.batch_size):
        chunk = list(prompts[start : start + settings.batch_size])
        real = len(chunk)
        chunk += [[eos_id]] * (settings.batch_size - real)
        tokens, lengths = decoding.left_pad(chunk, pad_id)
        tokens = np.pad(tokens, ((0, 0), (width - tokens.shape[1], 0)), constant_values=pad_id)
        result = _decode(model, variables, tokens, lengths, settings, eos_id, pad_id)
        outputs.extend(decoding.strip_after_eos(np.asarray(result)[:real], eos_id))
    return outputs


def _decode(model, variables, tokens, lengths, settings: DecodeSettings, eos_id, pad_id):
    if settings.beam_size == 1:
        return decoding.greedy_decode(
            model,
            variables,
            tokens,
            lengths,
            max_decode_length=settings.max_decode_length,
            eos_id=eos_id,
            pad_id=pad_id,
        ).tokens
    result = beam_search.beam_search(
        model,
        variables,
        tokens,
        lengths,
        max_decode_length=settings.max_decode_length,
        beam_size=settings.beam_size,
        alpha=settings.alpha,
        eos_id=eos_id,
        pad_id=pad_id,
    )
    return result.tokens[:, 0]  # the best beam
