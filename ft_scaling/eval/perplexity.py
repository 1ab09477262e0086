"""Token-level perplexity over a whole split: the quantity the scaling laws are fitted on.

    for every batch (every example once; a short last batch gets zero-weight rows):
        logits = model(decoder_input_tokens, decoder_segment_ids, decoder_positions)
        per row: sum of NLL(decoder_target_tokens) * decoder_loss_weights, sum of weights (float32)
    host, float64: mean loss = sum NLL / sum weights;  PPL = exp(mean loss)

Batches use seqio's decoder / prefix-LM feature names, whose loss weights are 1 on target tokens
only. Sums are taken per row on the device (a row is never split across devices) and added up on
the host in float64, so the result does not depend on how the batch is laid out over devices.
"""

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_KEYS = ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")
REQUIRED_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """Attributes: loss (mean target-token NLL, nats), perplexity (exp(loss)), target_tokens
    (sum of loss weights), examples (rows with at least one target token)."""

    loss: float
    perplexity: float
    target_tokens: float
    examples: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """NLL of each target token: logits [batch, length, vocab] float32 -> [batch, length]."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames="model")
def row_sums(model: nn.Module, variables, batch: Mapping[str, jax.Array]):
    """(weighted NLL sum [batch], weight sum [batch]) in float32 for one batch."""
    args = [batch.get(key) for key in INPUT_KEYS]
    logits = model.apply(variables, *args, deterministic=True)
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    nll = token_nll(logits.astype(jnp.float32), batch["decoder_target_tokens"])
    return jnp.sum(nll * weights, axis=1), jnp.sum(weights, axis=1)


def pad_batch(batch: Mapping[str, np.ndarray], rows: int) -> dict:
    """The batch with zero rows appended up to `rows` (zero loss weight: they add nothing)."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        missing = rows - value.shape[0]
        if missing < 0:
            raise ValueError(f"batch has {value.shape[0]} rows, more than batch_size={rows}")
        out[key] = np.concatenate([value, np.zeros((missing, *value.shape[1:]), value.dtype)])
    return out


def evaluate(
    model: nn.Module,
    variables,
    batches: Iterable[Mapping[str, np.ndarray]],
    batch_size: int | None = None,
    split_name: str = "split",
) -> PerplexityResult:
    """Mean target-token loss and perplexity over every example of `batches`.

    Args:
      model: the decoder or a method's wrapper of it.
      variables: {'params': params} (arrays may be sharded; run under the mesh and rules).
      batches: numpy batches with REQUIRED_KEYS (and optionally segment ids / positions).
      batch_size: rows per compiled batch; shorter batches are padded to it. Defaults to the
        rows of the first batch.
      split_name: named in the error for an empty split.

    Returns:
      PerplexityResult.

    Raises:
      ValueError: the split has no batch or no target token, or a batch lacks a feature.
    """
    nll_total, weight_total, examples = 0.0, 0.0, 0
    for batch in batches:
        missing = [key for key in REQUIRED_KEYS if key not in batch]
        if missing:
            raise ValueError(f"{split_name}: batch lacks features {missing}; has {sorted(batch)}")
        batch_size = batch_size or np.asarray(batch["decoder_input_tokens"]).shape[0]
        nll, weights = row_sums(model, variables, pad_batch(batch, batch_size))
        nll, weights = np.asarray(nll, np.float64), np.asarray(weights, np.float64)
        nll_total += float(nll.sum())
        weight_total += float(weights.sum())
        examples += int((weights > 0).sum())
    if weight_total == 0:
        raise ValueError(f"{split_name} is empty: no target tokens to evaluate perplexity on")
    loss = nll_total / weight_total
    return PerplexityResult(loss, math.exp(loss), weight_total, examples)
