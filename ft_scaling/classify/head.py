"""Vanilla finetuning: a linear classification head on the last token's hidden state.

    hidden = Decoder(tokens, return_hidden=True)        [batch, length, embed] (final RMSNorm)
    h      = hidden[b, last real token of row b]        [batch, embed]  (the final EOS)
    logits = h W + b                                    [batch, classes]

A decoder-only LM summarises the whole input only at its last position (causal attention), so
the head reads that position, as GPT-style sequence classifiers do. The head is a new parameter
subtree {"head": {"kernel", "bias"}} beside {"decoder": ...}; it always trains, whatever the
finetuning method does to the decoder (full or LoRA).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ft_scaling.classify import scoring
from ft_scaling.train import losses


def last_token_hidden(hidden, segment_ids):
    """The hidden state at each row's last non-pad position. [b, L, d], [b, L] -> [b, d]."""
    last = jnp.sum(segment_ids > 0, axis=-1) - 1  # [b]
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


@dataclasses.dataclass(frozen=True, eq=False)
class HeadClassifier(losses.ContentHashed):
    """Classifies from the last token's hidden state; params = {"decoder", "head"}.

    Attributes:
      model: the method-wrapped decoder; must accept `return_hidden` (Decoder and its LoRA
        clones do; prompt tuning's wrapper does not).
      num_classes: output classes.
    """

    model: nn.Module
    num_classes: int

    def _dense(self) -> nn.Dense:
        return nn.Dense(self.num_classes, dtype=jnp.float32)

    def init_extra(self, rng, embed_dim: int, num_classes: int) -> dict:
        """{"head": Dense params} for hidden states of width `embed_dim`."""
        del num_classes  # fixed at construction
        return {"head": self._dense().init(rng, jnp.zeros((1, embed_dim)))["params"]}

    def log_probs(self, params, batch, rng=None, deterministic: bool = True):
        """Class log-probabilities [batch, classes] of head rows [batch, length]."""
        rngs = None if deterministic else {"dropout": rng}
        hidden = self.model.apply(
            {"params": params["decoder"]},
            batch["tokens"],
            batch["segment_ids"],
            batch["positions"],
            deterministic=deterministic,
            rngs=rngs,
            return_hidden=True,
        )
        last = last_token_hidden(hidden, batch["segment_ids"]).astype(jnp.float32)
        logits = self._dense().apply({"params": params["head"]}, last)
        return jax.nn.log_softmax(logits, axis=-1)

    def loss(self, params, batch, rng):
        """(summed cross-entropy of the head, examples, {}): a loss of the train step."""
        log_probs = self.log_probs(params, batch, rng, deterministic=False)
        return scoring.example_sums(scoring.cross_entropy(log_probs, batch["labels"]))

    def evaluate(self, params, batch):
        """Label log-probabilities [batch, classes] (deterministic)."""
        return self.log_probs(params, batch)
