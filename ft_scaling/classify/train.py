"""The short loop of a few-shot classification run, over the one train step of train/trainer.py.

    classifier = HeadClassifier | VerbalizerClassifier | DistillClassifier   (a loss object)
    state, frozen = trainer.create_state({"decoder": ..., "head": ...}, mask, optimizer, rng)
    train_fn, eval_fn = trainer.jit_steps(classifier, optimizer, mesh, rules, state, frozen)
    fit(train_fn, ...)     -> (state, per-step mean losses)      # seeded batches, every one full
    predict(eval_fn, ...)  -> label log-probs [examples, classes]

A classifier is a loss of the LM trainer's step (STYLE.md: a variant is a different loss chosen
at construction), so classification shares its TrainState, its gradients and optimizer state
for the method's trainable split only, its unit-rate optimizers, `fold_in(rng, step)` per step
and its compile cache: the runs of a study that share a model, method and batch shape compile
once. Only the batch order and the host loops below are classification's own.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.train import trainer


def _put(rows: dict, mesh, rules) -> dict:
    """Host rows -> device arrays split over the batch axes of the mesh (leading dim)."""
    sharding = trainer.example_sharding(mesh, rules)
    return {k: jax.device_put(v, sharding) for k, v in rows.items()}


def batch_rows(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Row indices of batch `step`: consecutive slices of a new seeded permutation per epoch.

    Batches may straddle epochs, so every batch is full (one compiled shape) whatever the
    subset size; the order depends only on (seed, step), so a run is reproducible.
    """
    start = step * batch_size
    epochs = range(start // num_examples, (start + batch_size - 1) // num_examples + 1)
    order = np.concatenate(
        [np.random.default_rng([seed, epoch]).permutation(num_examples) for epoch in epochs]
    )
    offset = start - epochs[0] * num_examples
    return order[offset : offset + batch_size]


def fit(
    train_fn, state, frozen, arrays: dict, steps: int, batch_size: int, schedule, seed, mesh, rules
):
    """`steps` train steps over `arrays` (numpy, leading dim = examples).

    Returns:
      (final state, per-step losses as a numpy array; fetched once, after the loop).
    """
    num_examples = len(next(iter(arrays.values())))
    losses = []
    for step in range(steps):
        rows = batch_rows(num_examples, batch_size, step, seed)
        batch = _put({k: v[rows] for k, v in arrays.items()}, mesh, rules)
        state, metrics = train_fn(state, frozen, batch, jnp.float32(schedule(step)))
        losses.append(metrics["loss"])
    return state, np.asarray(jax.device_get(losses), np.float64)


def predict(eval_fn, trainable, frozen, arrays: dict, batch_size: int, mesh, rules) -> np.ndarray:
    """Label log-probabilities [examples, classes] over all rows; the last batch is padded."""
    num_examples = len(next(iter(arrays.values())))
    outputs = []
    for start in range(0, num_examples, batch_size):
        rows = np.arange(start, start + batch_size) % num_examples  # pad by wrapping around
        batch = _put({k: v[rows] for k, v in arrays.items()}, mesh, rules)
        outputs.append(eval_fn(trainable, frozen, batch))
    log_probs = np.concatenate(jax.device_get(outputs))[:num_examples]
    return log_probs
