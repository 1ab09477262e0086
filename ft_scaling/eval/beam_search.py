"""KV-cached beam search with the GNMT length penalty (as t5x's `decoding.beam_search`).

    prefill the prompt once, repeat its cache beam_size times (rows = batch * beams)
    expand(token 0 from the prefill logits)
    while_loop while t < max_decode_length and some row can still improve:
      feed every alive beam's last token -> logits [batch, beams, vocab]
      expand(token t):
        the 2 * beams best (beam, token) continuations per row; those among the first `beams`
        that end in EOS join the finished pool (score = log-prob / penalty(length)), the best
        `beams` non-EOS ones stay alive;
        the cache rows are re-gathered from their parent beams
    finally alive beams join the pool (cut at max_decode_length); the best `beams` come back

Taking 2 * beams candidates guarantees `beams` alive continuations even if half end in EOS.
The loop stops early once no alive beam can beat the worst finished one: with a length penalty
exponent alpha >= 0 a beam's score can only fall, so its best possible score is its log-prob
divided by the largest penalty, penalty(max_decode_length).

Length penalty: ((5 + length) / 6) ** alpha (Wu et al. 2016); alpha = 0 ranks by the plain sum
of log-probabilities, and then beam size 1 reproduces greedy decoding exactly.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ft_scaling.eval import decoding

# Finite stand-in for -inf, so sums and divisions of dead beams never produce NaN.
NEG_INF = -1.0e7


def length_penalty(length, alpha: float):
    """GNMT brevity penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(tree, parents, batch: int, beams: int):
    """Reorders the [batch * beams, ...] cache leaves: new beam j of a row copies `parents[j]`."""
    rows = (jnp.arange(batch)[:, None] * beams + parents).reshape(-1)
    # The scalar cache index is shared by all rows.
    return jax.tree.map(lambda x: x[rows] if x.ndim else x, tree)


def _top(scores, k: int, *arrays):
    """The k best along axis 1 of scores [batch, n], with the matching rows of each array."""
    top_scores, index = jax.lax.top_k(scores, k)
    picked = [
        jnp.take_along_axis(a, index.reshape(*index.shape, *[1] * (a.ndim - 2)), 1) for a in arrays
    ]
    return top_scores, picked


def _expand(state, logits, t, alpha: float, eos_id: int):
    """Extends the alive beams by token t from logits [batch, beams, vocab]."""
    alive_seqs, alive_logp, finished_seqs, finished_scores, cache = state
    batch, beams, vocab = logits.shape
    logp = alive_logp[:, :, None] + jax.nn.log_softmax(logits.astype(jnp.float32))
    cand_logp, flat = jax.lax.top_k(logp.reshape(batch, beams * vocab), 2 * beams)
    parents, tokens = flat // vocab, (flat % vocab).astype(jnp.int32)  # [batch, 2 * beams]
    cand_seqs = jnp.take_along_axis(alive_seqs, parents[:, :, None], axis=1)
    cand_seqs = jax.lax.dynamic_update_slice(cand_seqs, tokens[:, :, None], (0, 0, t))
    ends = tokens == eos_id
    # Only an EOS among the `beams` best candidates finishes a hypothesis (as in Hugging Face's
    # BeamSearchScorer); a lower-ranked one would be a path no beam actually takes, and beam
    # size 1 would then differ from greedy.
    in_top = jnp.arange(2 * beams)[None, :] < beams
    new_scores = jnp.where(ends & in_top, cand_logp / length_penalty(t + 1, alpha), NEG_INF)
    pool_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
    pool_seqs = jnp.concatenate([finished_seqs, cand_seqs], axis=1)
    finished_scores, (finished_seqs,) = _top(pool_scores, beams, pool_seqs)

    live_logp = jnp.where(ends, NEG_INF, cand_logp)
    alive_logp, (alive_seqs, alive_parents) = _top(live_logp, beams, cand_seqs, parents)
    cache = _gather_beams(cache, alive_parents, batch, beams)
    return alive_seqs, alive_logp, finished_seqs, finished_scores, cache


def _should_continue(state, t, max_decode_length: int, alpha: float):
    _, alive_logp, _, finished_scores, _ = state
    best_alive = alive_logp[:, 0] / length_penalty(max_decode_length, alpha)
    worst_finished = finished_scores[:, -1]
    return (t < max_decode_length) & ~jnp.all(worst_finished > best_alive)


@functools.partial(
    jax.jit,
    static_argnames=("model", "max_decode_length", "beam_size", "alpha"),
)
def _beam(
    model, variables, prompts, prompt_lengths, max_decode_length, beam_size, alpha, eos_id, pad_id
):
    batch, beams = prompts.shape[0], beam_size
    logits, cache = decoding.prefill_cache(
        model, variables, prompts, prompt_lengths, max_decode_length, copies=beams
    )
    positions0 = jnp.repeat(prompt_lengths.astype(jnp.int32), beams)  # [batch * beams]
    seqs = jnp.full((batch, beams, max_decode_length), pad_id, jnp.int32)
    # Only beam 0 is live at the start, so the first expansion picks distinct tokens.
    alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beams - 1)), (batch, 1))
    finished_scores = jnp.full((batch, beams), NEG_INF)
    state = (seqs, alive_logp, seqs, finished_scores, cache)
    first = jnp.repeat(logits[:, None], beams, axis=1)
    state = _expand(state, first, 0, alpha, eos_id)

    def body(carry):
        t, state = carry
        fed = jax.lax.dynamic_index_in_dim(state[0], t - 1, axis=2).reshape(-1, 1)
        positions = (positions0 + t - 1)[:, None]
        step_logits, cache = decoding.model_step(
            model, variables, state[4], fed, jnp.ones_like(fed), positions, False
        )
        state = (*state[:4], cache)
        return t + 1, _expand(state, step_logits.reshape(batch, beams, -1), t, alpha, eos_id)

    cond = lambda carry: _should_continue(carry[1], carry[0], max_decode_length, alpha)
    t, state = jax.lax.while_loop(cond, body, (jnp.int32(1), state))
    alive_seqs, alive_logp, finished_seqs, finished_scores, _ = state
    # Beams still alive are cut at the last generated token, scored with that length.
    alive_scores = alive_logp / length_penalty(t, alpha)
    scores, (tokens,) = _top(
        jnp.concatenate([finished_scores, alive_scores], axis=1),
        beams,
        jnp.concatenate([finished_seqs, alive_seqs], axis=1),
    )
    return tokens, scores


def beam_search(
    model: nn.Module,
    variables,
    prompts,
    prompt_lengths,
    *,
    max_decode_length: int,
    beam_size: int,
    alpha: float = 0.6,
    eos_id: int = 1,
    pad_id: int = 0,
) -> decoding.DecodeResult:
    """Beam search decoding with a KV cache.

    Args:
      model: the decoder or a method's wrapper of it.
      variables: the model's variables without a cache, e.g. {'params': params}.
      prompts: int [batch, width], left-padded (see `decoding.left_pad`).
      prompt_lengths: int [batch], real tokens per row.
      max_decode_length: tokens to generate at most per beam.
      beam_size: beams kept per row (1 <= beam_size <= vocabulary size).
      alpha: length penalty exponent (>= 0; 0.6 is t5x's default, 0 ranks by log-prob sum).
      eos_id: ends a beam.
      pad_id: written after EOS.

    Returns:
      DecodeResult with tokens [batch, beam_size, max_decode_length] and penalised scores
      [batch, beam_size], best first.
    """
    prompts, prompt_lengths = jnp.asarray(prompts, jnp.int32), jnp.asarray(prompt_lengths)
    decoding.validate(prompts, prompt_lengths, max_decode_length)
    vocab = _vocab_size(model, variables, prompts)
    if not 1 <= beam_size <= vocab:
        raise ValueError(f"beam_size must be in [1, vocab_size={vocab}], got {beam_size}")
    if alpha < 0:
        raise ValueError(f"length penalty alpha must be >= 0, got {alpha}")
    tokens, scores = _beam(
        model,
        variables,
        prompts,
        prompt_lengths,
        max_decode_length,
        beam_size,
        float(alpha),
        eos_id,
        pad_id,
    )
    return decoding.DecodeResult(tokens, scores)


def _vocab_size(model: nn.Module, variables, prompts) -> int:
    """The model's output vocabulary, from the traced shape of one forward pass (no compute)."""
    logits = jax.eval_shape(lambda v, t: model.apply(v, t), variables, prompts[:, :1])
    return int(logits.shape[-1])
