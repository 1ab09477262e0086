"""Classification train and eval steps, and the short loop of a few-shot run.

    classifier = HeadClassifier | VerbalizerClassifier | DistillClassifier   (chosen at setup)
    state, frozen = trainer.create_state({"decoder": ..., "head": ...}, mask, optimizer, rng)
    train_step(state, frozen, batch, lr) -> (state, {"loss"})    # grad of classifier.loss
    eval_step(trainable, frozen, batch) -> label log-probs [batch, classes]

The steps are the LM trainer's recipe with another loss (STYLE.md: a variant is a different
loss chosen at construction): the trainer's TrainState and `create_state` (gradients and
optimizer state for the method's trainable split only), its optimizers and schedules at unit
rate, and `fold_in(rng, step)` per step. Compiled steps are cached per classifier (its repr),
so the runs of a study that share a model, method and batch shape compile once.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ft_scaling.methods import base
from ft_scaling.train import optimizers, trainer


def train_step(state, frozen, batch, learning_rate, *, classifier, optimizer):
    """One optimizer step on `classifier.loss` (differentiating the trainable split only)."""
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(trainable):
        return classifier.loss(base.merge(trainable, frozen), batch, rng)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * learning_rate, updates)  # unit-rate optimizer
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(trainable, frozen, batch, *, classifier):
    """Label log-probabilities [batch, classes] (deterministic forward)."""
    return classifier.log_probs(base.merge(trainable, frozen), batch)


class ShardingsKey:
    """The shardings of a pytree (None leaves kept), hashable: part of the compile-cache key."""

    def __init__(self, tree):
        self.tree = jax.tree.map(lambda x: x.sharding, tree)
        leaves, treedef = jax.tree.flatten(self.tree, is_leaf=lambda x: x is None)
        self._key = (treedef, tuple(leaves))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, ShardingsKey) and self._key == other._key


def compiled_steps(classifier, optimizer_settings: tuple, mesh, rules, state, frozen):
    """(train_fn, eval_fn), jitted once per classifier, optimizer and state layout.

    The state keeps its input shardings on output (and is donated): were they left to jit, a
    step's outputs could carry other (equivalent) shardings than the initial state, and the
    second step would compile again.
    """
    return _compiled(
        trainer.ModelKey(classifier),
        optimizer_settings,
        mesh,
        rules,
        ShardingsKey(state),
        ShardingsKey(frozen),
    )


@functools.lru_cache(maxsize=16)
def _compiled(classifier_key, optimizer_settings, mesh, rules, state_key, frozen_key):
    classifier = classifier_key.model
    optimizer = optimizers.optimizer(*optimizer_settings)
    train_fn = jax.jit(
        functools.partial(train_step, classifier=classifier, optimizer=optimizer),
        in_shardings=(state_key.tree, frozen_key.tree, None, None),
        out_shardings=(state_key.tree, None),
        donate_argnums=(0,),
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, classifier=classifier),
        in_shardings=(state_key.tree.params, frozen_key.tree, None),
    )
    return _in_context(train_fn, mesh, rules), _in_context(eval_fn, mesh, rules)


def _in_context(fn, mesh, rules):
    def wrapped(*args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return fn(*args)

    return wrapped


def _put(rows: dict, mesh, rules) -> dict:
    """Host rows -> device arrays split over the batch axes of the mesh (leading dim)."""
    spec = nn.logical_to_mesh_axes(("batch",), rules)
    sharding = NamedSharding(mesh, PartitionSpec(*spec))
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
