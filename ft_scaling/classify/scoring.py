"""Verbalizer scoring: the LM head's likelihood of each class's verbalizer -> a label distribution.

    log L_c = sum_j w[c, j] log softmax(logits[pos[c, j]])[id[c, j]]     (teacher forcing)
    p(c | x) = softmax_c(log L_c)                                        sums to 1 over c

The candidate rows come from `encoding.candidate_arrays` ([batch, classes, length] inputs plus
the verbalizer tokens' positions and ids); they run through the decoder as batch * classes rows,
so multi-token verbalizers are scored exactly. Only the hidden states at verbalizer positions go
through the vocabulary projection: the full [rows, length, vocab] logits would cost 30-100x more
for the same numbers (a 4096-word softmax dominates a tiny model's step). `output_logits` is the
decoder's own last step (tied embedding or `logits_projection`), tested against its logits.

`VerbalizerClassifier` is the classifier of PBFT (trained with cross-entropy over these label
log-probabilities) and of ICL (the same scoring, with demonstrations in the prompt, no training).
Like every classifier it is a loss object of the one train step (train/losses.py): `loss`
returns the summed per-example loss and the example count, `evaluate` the label log-probs.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ft_scaling.train import losses


def output_logits(model: nn.Module, decoder_params, hidden):
    """The decoder's vocabulary projection of hidden states [..., embed] -> float32 [..., vocab].

    Mirrors the end of `Decoder.__call__` (same dtype handling), for selected positions only.
    """
    if model.config.tie_embeddings:
        weight = decoder_params["embedding"].T  # [embed, vocab]
    else:
        weight = decoder_params["logits_projection"]["kernel"]
    return (hidden @ weight.astype(hidden.dtype)).astype(jnp.float32)


def sequence_log_likelihoods(logits, target_ids, target_weights):
    """Sum of weighted target-token log-probs. [..., V, vocab], [..., V], [..., V] -> [...]."""
    return -jnp.sum(losses.token_nll(logits, target_ids) * target_weights, axis=-1)


def label_log_probs(log_likelihoods):
    """Normalises per-class sequence log-likelihoods [batch, classes] over the classes."""
    return jax.nn.log_softmax(log_likelihoods, axis=-1)


def cross_entropy(log_probs, labels):
    """Negative log-probability of each true class. [batch, classes], [batch] -> [batch]."""
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def example_sums(per_example) -> tuple:
    """(sum, example count, no metrics) of per-example losses [batch]: a classifier's `loss`.

    The train step divides the sum by the count, so microbatches add up to the batch mean.
    """
    return jnp.sum(per_example), jnp.float32(per_example.shape[0]), {}


@dataclasses.dataclass(frozen=True, eq=False)
class VerbalizerClassifier(losses.ContentHashed):
    """Scores classes with the LM head; params = {"decoder": the (method-wrapped) LM}.

    Attributes:
      model: the method-wrapped decoder (Decoder or a LoRA clone of it).
    """

    model: nn.Module

    def init_extra(self, rng, embed_dim: int, num_classes: int) -> dict:
        """Parameters besides the decoder's: none (the LM head scores the classes)."""
        del rng, embed_dim, num_classes
        return {}

    def log_probs(self, params, batch, rng=None, deterministic: bool = True):
        """Label log-probabilities [batch, classes] of candidate rows [batch, classes, L]."""
        batch_size, classes, length = batch["inputs"].shape
        rows = lambda key: batch[key].reshape(batch_size * classes, *batch[key].shape[2:])
        rngs = None if deterministic else {"dropout": rng}
        hidden = self.model.apply(
            {"params": params["decoder"]},
            rows("inputs"),
            rows("segment_ids"),
            rows("positions"),
            deterministic=deterministic,
            rngs=rngs,
            return_hidden=True,
        )  # [batch * classes, length, embed]
        picked = jnp.take_along_axis(hidden, rows("target_positions")[..., None], axis=1)
        logits = output_logits(self.model, params["decoder"], picked)  # [b * c, V, vocab]
        scores = sequence_log_likelihoods(logits, rows("target_ids"), rows("target_weights"))
        return label_log_probs(scores.reshape(batch_size, classes))

    def loss(self, params, batch, rng):
        """(summed cross-entropy over the verbalizer distribution, examples, {})."""
        log_probs = self.log_probs(params, batch, rng, deterministic=False)
        return example_sums(cross_entropy(log_probs, batch["labels"]))

    def evaluate(self, params, batch):
        """Label log-probabilities [batch, classes] (deterministic)."""
        return self.log_probs(params, batch)
