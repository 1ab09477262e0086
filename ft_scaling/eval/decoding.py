"""Autoregressive decoding with a key/value cache: greedy (the paper's choice) and a reference.

    prompts [batch, prompt_len] (left-padded, pad = segment 0)
      prefill: one model call over the whole prompt fills the cache   -> logits of token 0
      while_loop t = 1 .. max_decode_length-1 (stops early once every row emitted EOS):
        feed token t-1 (one slot per row)                             -> logits of token t
    tokens [batch, max_decode_length]: EOS kept, pad_id after it

Left padding keeps the newest token of every row in the same column, so each decode step writes
one cache slot for the whole batch; padded slots carry segment id 0 and are never attended to.
Positions count real tokens only (the first real token of every row is at position 0), so a
left-padded row decodes exactly as it would alone.

The model is any module with the decoder's call signature (a finetuning method's wrapper too):
the cache is built by tracing `model.init` with `decode=True`, so a wrapper that prepends a soft
prompt on the prefill call gets its extra cache slots automatically. Everything runs inside one
jitted function per (model, shapes, settings); under a mesh the arrays follow the model's
logical-axis constraints, so nothing here names a device.

`reference_greedy_decode` recomputes the full forward pass for every new token, with no cache:
the ground truth for the tests and the baseline of `benchmarks/decode_throughput.py`.
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """Decoded tokens and their scores.

    Attributes:
      tokens: int32 [batch, max_decode_length] (greedy) or [batch, beams, max_decode_length]
        (beam search, best first); EOS is kept and everything after it is pad_id.
      scores: float32 [batch] (greedy: sum of the log-probabilities of the emitted tokens, EOS
        included) or [batch, beams] (beam search: the same sum divided by the length penalty).
    """

    tokens: Array
    scores: Array


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stacks token lists right-aligned.

    Args:
      sequences: one list of token ids per row; none may be empty.
      pad_id: id written before the shorter rows.

    Returns:
      (tokens int32 [batch, longest], lengths int32 [batch]).
    """
    if not sequences:
        raise ValueError("left_pad: no sequences to decode (empty batch)")
    lengths = np.array([len(s) for s in sequences], np.int32)
    if (lengths == 0).any():
        raise ValueError(f"left_pad: row {int(np.argmin(lengths))} is an empty prompt")
    tokens = np.full((len(sequences), int(lengths.max())), pad_id, np.int32)
    for row, seq in enumerate(sequences):
        tokens[row, tokens.shape[1] - len(seq) :] = seq
    return tokens, lengths


def prompt_layout(prompt_lengths: Array, width: int) -> tuple[Array, Array]:
    """Segment ids (0 on the left padding) and positions (0 at each row's first real token)."""
    column = jnp.arange(width, dtype=jnp.int32)[None, :]
    offset = width - prompt_lengths.astype(jnp.int32)[:, None]  # [batch, 1]
    segment_ids = (column >= offset).astype(jnp.int32)
    positions = jnp.maximum(column - offset, 0)
    return segment_ids, positions


def init_cache(model: nn.Module, batch: int, length: int):
    """A zero key/value cache with room for `length` tokens (plus any prefix the model adds)."""
    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    shapes = jax.eval_shape(
        lambda t: model.init(jax.random.PRNGKey(0), t, decode=True)["cache"], tokens
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.meta.unbox(shapes))


def validate(prompts, prompt_lengths, max_decode_length: int) -> None:
    """Raises ValueError naming the bad argument."""
    if max_decode_length <= 0:
        raise ValueError(f"max_decode_length must be positive, got {max_decode_length}")
    if prompts.ndim != 2 or prompts.shape[0] == 0 or prompts.shape[1] == 0:
        raise ValueError(f"prompts must be [batch > 0, length > 0], got shape {prompts.shape}")
    if prompt_lengths.shape != prompts.shape[:1]:
        raise ValueError(
            f"prompt_lengths shape {prompt_lengths.shape} does not match {prompts.shape[:1]}"
        )


def model_step(model, variables, cache, tokens, segment_ids, positions, prefill: bool):
    """One cached model call; returns (logits of the last fed token [batch, vocab], cache)."""
    logits, mutated = model.apply(
        {**variables, "cache": cache},
        tokens,
        segment_ids,
        positions,
        decode=True,
        prefill=prefill,
        mutable=["cache"],
    )
    return logits[:, -1], mutated["cache"]


def prefill_cache(
    model, variables, prompts, prompt_lengths, max_decode_length: int, copies: int = 1
):
    """Runs the prompt through the model once; returns (next-token logits, cache).

    The cache holds prompt + max_decode_length slots for batch * copies rows (copies > 1 for
    beam search: the prompt is computed once, then its cache rows are repeated).
    """
    batch, width = prompts.shape
    cache = init_cache(model, batch, width + max_decode_length)
    segment_ids, positions = prompt_layout(prompt_lengths, width)
    logits, cache = model_step(model, variables, cache, prompts, segment_ids, positions, True)
    if copies > 1:
        cache = jax.tree.map(lambda x: jnp.repeat(x, copies, axis=0) if x.ndim else x, cache)
    return logits, cache


def _pick(logits: Array, done: Array, eos_id: int, pad_id: int):
    """Greedy choice per row: (token, its log-probability, row finished after it)."""
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [batch]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    token_logp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    token = jnp.where(done, pad_id, token)
    token_logp = jnp.where(done, 0.0, token_logp)
    return token, token_logp, done | (token == eos_id)


def _greedy_loop(next_logits, first_logits, batch, max_decode_length, eos_id, pad_id):
    """The decode loop shared by the cached and the reference decoder.

    `next_logits(carry, t, tokens)` returns (logits of token t, carry) given tokens 0..t-1.
    """
    done = jnp.zeros((batch,), bool)
    token, score, done = _pick(first_logits, done, eos_id, pad_id)
    tokens = jnp.full((batch, max_decode_length), pad_id, jnp.int32).at[:, 0].set(token)

    def cond(state):
        t, _, _, done, _ = state
        return (t < max_decode_length) & ~jnp.all(done)

    def body(state):
        t, carry, tokens, done, score = state
        logits, carry = next_logits(carry, t, tokens)
        token, token_logp, done = _pick(logits, done, eos_id, pad_id)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, t))
        return t + 1, carry, tokens, done, score + token_logp

    return jnp.int32(1), done, tokens, score, cond, body


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length"))
def _greedy(model, variables, prompts, prompt_lengths, max_decode_length, eos_id, pad_id):
    batch = prompts.shape[0]
    logits, cache = prefill_cache(model, variables, prompts, prompt_lengths, max_decode_length)
    lengths = prompt_lengths.astype(jnp.int32)

    def next_logits(cache, t, tokens):
        fed = jax.lax.dynamic_slice_in_dim(tokens, t - 1, 1, axis=1)  # [batch, 1]
        positions = (lengths + t - 1)[:, None]
        return model_step(model, variables, cache, fed, jnp.ones_like(fed), positions, False)

    t, done, tokens, score, cond, body = _greedy_loop(
        next_logits, logits, batch, max_decode_length, eos_id, pad_id
    )
    _, _, tokens, _, score = jax.lax.while_loop(cond, body, (t, cache, tokens, done, score))
    return tokens, score


def greedy_decode(
    model: nn.Module,
    variables,
    prompts,
    prompt_lengths,
    *,
    max_decode_length: int,
    eos_id: int = 1,
    pad_id: int = 0,
) -> DecodeResult:
    """KV-cached greedy decoding.

    Args:
      model: the decoder or a method's wrapper of it.
      variables: the model's variables without a cache, e.g. {'params': params}.
      prompts: int [batch, width], left-padded (see `left_pad`).
      prompt_lengths: int [batch], real tokens per row (at least 1).
      max_decode_length: tokens to generate at most per row.
      eos_id: a row stops after emitting it.
      pad_id: written after EOS.

    Returns:
      DecodeResult with tokens [batch, max_decode_length] and scores [batch].
    """
    prompts, prompt_lengths = jnp.asarray(prompts, jnp.int32), jnp.asarray(prompt_lengths)
    validate(prompts, prompt_lengths, max_decode_length)
    tokens, scores = _greedy(
        model, variables, prompts, prompt_lengths, max_decode_length, eos_id, pad_id
    )
    return DecodeResult(tokens, scores)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length"))
def _reference(model, variables, prompts, prompt_lengths, max_decode_length, eos_id, pad_id):
    batch, width = prompts.shape
    lengths = prompt_lengths.astype(jnp.int32)
    total = width + max_decode_length
    prompt_segments, prompt_positions = prompt_layout(lengths, width)
    # Generated tokens follow each row's prompt; unwritten columns lie in the future of every
    # query that is read, so the causal mask hides them.
    segment_ids = jnp.concatenate([prompt_segments, jnp.ones((batch, max_decode_length))], 1)
    steps = jnp.arange(max_decode_length, dtype=jnp.int32)[None, :]
    positions = jnp.concatenate([prompt_positions, lengths[:, None] + steps], 1)

    def logits_at(t, tokens):
        sequence = jnp.concatenate([prompts, tokens], 1)[:, :total]
        logits = model.apply(variables, sequence, segment_ids.astype(jnp.int32), positions)
        return jax.lax.dynamic_index_in_dim(logits, width + t - 1, axis=1, keepdims=False)

    first = logits_at(0, jnp.zeros((batch, max_decode_length), jnp.int32))
    t, done, tokens, score, cond, body = _greedy_loop(
        lambda carry, t, tokens: (logits_at(t, tokens), carry),
        first,
        batch,
        max_decode_length,
        eos_id,
        pad_id,
    )
    _, _, tokens, _, score = jax.lax.while_loop(cond, body, (t, (), tokens, done, score))
    return tokens, score


def reference_greedy_decode(
    model: nn.Module,
    variables,
    prompts,
    prompt_lengths,
    *,
    max_decode_length: int,
    eos_id: int = 1,
    pad_id: int = 0,
) -> DecodeResult:
    """Greedy decoding without a cache: a full forward pass over prompt + output per token.

    Same arguments and result as `greedy_decode`; O(length) times slower, for tests and the
    benchmark only.
    """
    prompts, prompt_lengths = jnp.asarray(prompts, jnp.int32), jnp.asarray(prompt_lengths)
    validate(prompts, prompt_lengths, max_decode_length)
    tokens, scores = _reference(
        model, variables, prompts, prompt_lengths, max_decode_length, eos_id, pad_id
    )
    return DecodeResult(tokens, scores)


def strip_after_eos(tokens: np.ndarray, eos_id: int = 1) -> list[list[int]]:
    """Token rows cut before the first EOS (the text a metric should see)."""
    rows = []
    for row in np.asarray(tokens).tolist():
        rows.append(row[: row.index(eos_id)] if eos_id in row else row)
    return rows
