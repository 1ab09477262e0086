"""Train state, parameter initialisation and the one pure, jitted train and eval step.

    state = (step, trainable params, optimizer state, rng)     # donated to every step
    frozen = params the method keeps fixed                     # passed, never differentiated
    loss  = LMLoss(model) | a classifier                       # losses.py: sums + evaluate

`train_step` differentiates only the trainable split of the parameters (the method's mask) and
the optimizer holds state only for it: freezing costs neither backward passes nor memory for
frozen weights. A finetuning method never appears here: it is a wrapped model and a mask. What
a run optimises is the loss object: its `loss` returns sums (loss, weight, metrics) that add up
over microbatches, and the step divides by the summed weight (target tokens, or examples).
"""

import dataclasses
import functools
from collections.abc import Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from ft_scaling.methods import base
from ft_scaling.train import host_memory, losses, optimizers, partitioning


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict  # trainable split; None where the method freezes a leaf
    opt_state: optax.OptState
    rng: jax.Array


def abstract_params(model: nn.Module, sequence_length: int):
    """Boxed (nn.Partitioned) shapes of the params, from `jax.eval_shape`: nothing allocated."""
    tokens = jax.ShapeDtypeStruct((1, sequence_length), jnp.int32)
    init = lambda rng, t: model.init(rng, t)["params"]
    return jax.eval_shape(init, jax.random.PRNGKey(0), tokens)


def init_params(model: nn.Module, rng: jax.Array, sequence_length: int, mesh, rules, only=None):
    """Creates the params directly on their shardings (never whole on one host).

    `only`: a collection of flattened param paths to create, the rest left out (a run whose
    other leaves come from a base checkpoint); each comes out as it would in the full init
    (a leaf's random draw depends only on the rng and its module path), and XLA compiles
    only their initialisers: the full init of a tiny model was measured to compile in 1.5-2.3 s,
    once per method variant.
    """
    paths = None if only is None else frozenset(tuple(p) for p in only)
    if paths is not None and not paths:
        return {}
    return _jitted_init(_ModelKey(model), sequence_length, mesh, rules, paths)(rng)


def abstract_on_mesh(model: nn.Module, sequence_length: int, mesh, rules) -> dict:
    """The params as ShapeDtypeStructs on their shardings (unboxed): nothing allocated.
    Cached per model: the caller must not modify the tree."""
    return _abstract_on_mesh(_ModelKey(model), sequence_length, mesh, rules)


@functools.lru_cache(maxsize=32)
def _abstract_on_mesh(model_key, sequence_length: int, mesh, rules) -> dict:
    boxed = abstract_params(model_key.model, sequence_length)
    shardings = nn.meta.unbox(partitioning.param_shardings(boxed, mesh, rules))
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        nn.meta.unbox(boxed),
        shardings,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class _ModelKey(losses.ContentHashed):
    """A model as a compile-cache key, equal when the module trees print alike."""

    model: nn.Module


@functools.lru_cache(maxsize=32)
def _jitted_init(model_key: _ModelKey, sequence_length, mesh, rules, paths=None):
    model = model_key.model
    abstract = _abstract_on_mesh(model_key, sequence_length, mesh, rules)
    shardings = jax.tree.map(lambda leaf: leaf.sharding, abstract)
    if paths is not None:
        flat = traverse_util.flatten_dict(shardings)
        unknown = sorted("/".join(p) for p in paths if p not in flat)
        if unknown:
            raise KeyError(f"the model has no params {unknown[:5]}")
        shardings = traverse_util.unflatten_dict({p: flat[p] for p in paths})

    def init(rng):
        tokens = jnp.ones((1, sequence_length), jnp.int32)
        params = nn.meta.unbox(model.init(rng, tokens)["params"])
        if paths is None:
            return params
        flat = traverse_util.flatten_dict(params)
        return traverse_util.unflatten_dict({p: flat[p] for p in paths})

    return _with_context(jax.jit(init, out_shardings=shardings), mesh, rules)


def create_state(params, mask, optimizer_settings: optimizers.OptimizerSettings, rng, mesh):
    """(TrainState, frozen params) from full params and the method's mask.

    Optimizer state follows the trainable params' shardings (jit propagates them); the step and
    the RNG are replicated over the mesh.
    """
    trainable, frozen = base.split(params, mask)
    repl = partitioning.replicated(mesh)
    opt_state = _optimizer(optimizer_settings)[1](trainable)
    # Every leaf committed to a mesh sharding: an uncommitted leaf (a scalar count, a param
    # made outside jit, or any leaf on a one-device mesh) would make the step's second call,
    # whose inputs are the first call's committed outputs, compile the step a second time.
    commit = lambda x: jax.device_put(x, x.sharding if len(x.sharding.device_set) > 1 else repl)
    state = TrainState(
        step=jax.device_put(jnp.array(0, jnp.int32), repl),
        params=jax.tree.map(commit, trainable),
        opt_state=jax.tree.map(commit, opt_state),
        rng=jax.device_put(rng, repl),
    )
    return state, frozen


@functools.lru_cache(maxsize=32)
def _optimizer(optimizer_settings: optimizers.OptimizerSettings):
    """(optimizer, jitted init) per settings: one compile of `init` for all runs alike."""
    optimizer = optimizer_settings.build()
    return optimizer, jax.jit(optimizer.init)


def _loss_sums(trainable, frozen, batch, rng, loss):
    loss_sum, weight_sum, metrics = loss.loss(base.merge(trainable, frozen), batch, rng)
    return loss_sum, (weight_sum, metrics)


def _grads(trainable, frozen, batch, rng, loss, num_microbatches):
    """Sums of loss, weights, metrics and gradients over the batch, in `num_microbatches`."""
    grad_fn = jax.value_and_grad(_loss_sums, has_aux=True)
    if num_microbatches == 1:
        (loss_sum, (weight_sum, metrics)), grads = grad_fn(trainable, frozen, batch, rng, loss)
        return loss_sum, weight_sum, metrics, grads
    micro = jax.tree.map(
        lambda x: x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:]), batch
    )

    def body(carry, inputs):
        index, mb = inputs
        (loss_sum, (weight_sum, metrics)), grads = grad_fn(
            trainable, frozen, mb, jax.random.fold_in(rng, index), loss
        )
        acc_loss, acc_weight, acc_metrics, acc_grads = carry
        acc_metrics = jax.tree.map(jnp.add, acc_metrics, metrics)
        acc_grads = jax.tree.map(jnp.add, acc_grads, grads)
        return (acc_loss + loss_sum, acc_weight + weight_sum, acc_metrics, acc_grads), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(functools.partial(_loss_sums, loss=loss), trainable, frozen, first, rng)
    zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1][1])
    zeros = jax.tree.map(jnp.zeros_like, trainable)
    carry = (jnp.float32(0), jnp.float32(0), zero_metrics, zeros)
    (loss_sum, weight_sum, metrics, grads), _ = jax.lax.scan(
        body, carry, (jnp.arange(num_microbatches), micro)
    )
    return loss_sum, weight_sum, metrics, grads


def train_step(
    state: TrainState,
    frozen,
    batch: Mapping[str, jax.Array],
    learning_rate: jax.Array,
    *,
    loss,
    optimizer,
    num_microbatches: int = 1,
) -> tuple[TrainState, dict]:
    """One optimizer step on `loss`'s weighted mean over the batch.

    Returns:
      (new state, metrics): the loss's own summed metrics, plus `loss` (loss sum / weight sum),
      `target_tokens` (the weight sum: target tokens, or a classifier's examples) and
      `grad_norm`.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    loss_sum, weight_sum, metrics, grads = _grads(
        state.params, frozen, batch, rng, loss, num_microbatches
    )
    denominator = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * learning_rate, updates)  # unit-rate optimizer
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **metrics,
        "loss": loss_sum / denominator,
        "target_tokens": weight_sum,
        "grad_norm": optax.tree.norm(grads),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def eval_step(trainable, frozen, batch, *, loss):
    """`loss.evaluate` of the merged params: the LM's NLL sums, a classifier's log-probs."""
    return loss.evaluate(base.merge(trainable, frozen), batch)


def example_sharding(mesh, rules) -> NamedSharding:
    """Sharding of any batch array over its leading (example) dim on the mesh's batch axes."""
    return NamedSharding(mesh, PartitionSpec(*nn.logical_to_mesh_axes(("batch",), rules)))


def jit_steps(
    loss,
    optimizer_settings: optimizers.OptimizerSettings,
    mesh,
    rules,
    state,
    frozen,
    num_microbatches=1,
):
    """Compiled train and eval steps, shared by every run with the same key in this process.

    The key is the loss object (by content: equal models share a step), the optimizer
    settings, mesh, rules, the state's and frozen params' shardings and the microbatch count.
    The state keeps its input shardings on output (and is donated): were they left to jit, a
    step's outputs could carry other (equivalent) shardings and the second step would compile
    again. On CPU this also tunes the host allocator once (host_memory.py): XLA:CPU's step
    buffers are host memory, and returning them to the OS after each step doubled step time.

    Args:
      loss: a loss object (losses.py), hashable by content.
      optimizer_settings: the run's optimizer.
      mesh: the device mesh.
      rules: logical axis rules.
      state: the TrainState the steps will receive (its shardings are read, not its values).
      frozen: the frozen params (likewise).
      num_microbatches: pieces the train step splits each batch into (gradient accumulation).

    Returns:
      (train_step(state, frozen, batch, learning_rate) -> (state, metrics),
       eval_step(trainable, frozen, batch) -> loss.evaluate's output).
    """
    if jax.default_backend() == "cpu":
        host_memory.keep_freed_memory()
    state_sh, frozen_sh = _shardings(state), _shardings(frozen)
    return _compiled(loss, optimizer_settings, mesh, rules, state_sh, frozen_sh, num_microbatches)


class _Hashable:
    """A pytree of shardings made hashable (treedef + leaves) for the compile cache key."""

    def __init__(self, tree):
        self.tree = tree
        leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: x is None)
        self._key = (treedef, tuple(leaves))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Hashable) and self._key == other._key


def _shardings(tree):
    return _Hashable(jax.tree.map(lambda x: x.sharding, tree))


@functools.lru_cache(maxsize=32)
def _compiled(loss, optimizer_settings, mesh, rules, state_sh, frozen_sh, num_microbatches):
    optimizer = _optimizer(optimizer_settings)[0]
    batch_sh = example_sharding(mesh, rules)
    repl = partitioning.replicated(mesh)
    step = functools.partial(
        train_step, loss=loss, optimizer=optimizer, num_microbatches=num_microbatches
    )
    train = jax.jit(
        step,
        in_shardings=(state_sh.tree, frozen_sh.tree, batch_sh, repl),
        out_shardings=(state_sh.tree, repl),
        donate_argnums=(0,),
        compiler_options=partitioning.step_compiler_options(mesh),
    )
    evaluate = jax.jit(
        functools.partial(eval_step, loss=loss),
        in_shardings=(state_sh.tree.params, frozen_sh.tree, batch_sh),
        out_shardings=repl,
        compiler_options=partitioning.step_compiler_options(mesh),
    )
    return _with_context(train, mesh, rules), _with_context(evaluate, mesh, rules)


def _with_context(fn, mesh, rules):
    @functools.wraps(fn)
    def wrapped(*args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return fn(*args)

    return wrapped
