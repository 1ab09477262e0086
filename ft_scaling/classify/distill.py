"""Context distillation: a student without demonstrations learns the teacher's label distribution.

    teacher  = the frozen initial model, prompt = k demonstrations + query  (ICL, icl.py)
    student  = the same initial model (full or LoRA), prompt = query only   (PBFT layout)
    loss     = KL(teacher || student) = sum_c p_t(c) (log p_t(c) - log p_s(c)),  batch mean
               (the loss sums it over examples; the train step divides by their count)

on unlabeled inputs (labels are never read). The teacher's log-probabilities are computed once,
before training, and ride along in the batch as `teacher_log_probs`: the teacher is frozen, so
re-running it every step would only cost time. With k = 0 the teacher's rows equal the
student's and, at initialisation, so do the parameters: the loss is exactly 0 (tested).
"""

import dataclasses

import jax.numpy as jnp

from ft_scaling.classify import scoring


def kl_divergence(teacher_log_probs, student_log_probs):
    """KL(teacher || student) of each example. [batch, classes] x 2 -> [batch]."""
    teacher_probs = jnp.exp(teacher_log_probs)
    return jnp.sum(teacher_probs * (teacher_log_probs - student_log_probs), axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class DistillClassifier(scoring.VerbalizerClassifier):
    """A verbalizer classifier trained on `teacher_log_probs` instead of labels."""

    def loss(self, params, batch, rng):
        """(summed KL(teacher || student), examples, {}) on rows with `teacher_log_probs`."""
        log_probs = self.log_probs(params, batch, rng, deterministic=False)
        return scoring.example_sums(kl_divergence(batch["teacher_log_probs"], log_probs))
