"""Train state, parameter initialisation and the pure, jitted train and eval steps.

    state = (step, trainable params, optimizer state, rng)     # donated to every step
    frozen = params the method keeps fixed                     # passed, never differentiated

`train_step` differentiates only the trainable split of the parameters (the method's mask) and
the optimizer holds state only for it: freezing costs neither backward passes nor memory for
frozen weights. A finetuning method never appears here: it is a wrapped model and a mask.
"""

import functools
from collections.abc import Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ft_scaling.methods import base
from ft_scaling.train import host_memory, losses, partitioning

INPUT_KEYS = ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")


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


def init_params(model: nn.Module, rng: jax.Array, sequence_length: int, mesh, rules):
    """Creates the params directly on their shardings (never whole on one host)."""
    return _jitted_init(ModelKey(model), sequence_length, mesh, rules)(rng)


class ModelKey:
    """A model as a compile-cache key, equal when the module trees print alike.

    Method wrappers carry `functools.partial` fields, which compare by identity, so two
    identical LoRA models would otherwise never share a compiled step.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._repr = repr(model)

    def __hash__(self):
        return hash(self._repr)

    def __eq__(self, other):
        return isinstance(other, ModelKey) and self._repr == other._repr


@functools.lru_cache(maxsize=32)
def _jitted_init(model_key: ModelKey, sequence_length, mesh, rules):
    model = model_key.model
    boxed = abstract_params(model, sequence_length)
    shardings = nn.meta.unbox(partitioning.param_shardings(boxed, mesh, rules))

    def init(rng):
        tokens = jnp.ones((1, sequence_length), jnp.int32)
        return nn.meta.unbox(model.init(rng, tokens)["params"])

    return _with_context(jax.jit(init, out_shardings=shardings), mesh, rules)


def create_state(params, mask, optimizer_settings: tuple, rng, mesh) -> tuple:
    """(TrainState, frozen params) from full params and the method's mask.

    Optimizer state follows the trainable params' shardings (jit propagates them); the step and
    the RNG are replicated over the mesh.
    """
    trainable, frozen = base.split(params, mask)
    repl = partitioning.replicated(mesh)
    opt_state = _optimizer(optimizer_settings)[1](trainable)
    # Every leaf committed to a mesh sharding: an uncommitted leaf (a scalar count, or any
    # leaf on a one-device mesh) would make the step's second call, whose inputs are the first
    # call's committed outputs, compile the step a second time.
    opt_state = jax.tree.map(
        lambda x: jax.device_put(x, x.sharding if len(x.sharding.device_set) > 1 else repl),
        opt_state,
    )
    step = jax.device_put(jnp.array(0, jnp.int32), repl)
    state = TrainState(
        step=step, params=trainable, opt_state=opt_state, rng=jax.device_put(rng, repl)
    )
    return state, frozen


@functools.lru_cache(maxsize=32)
def _optimizer(optimizer_settings: tuple):
    """(optimizer, jitted init) per settings: one compile of `init` for all runs alike."""
    from ft_scaling.train import optimizers

    optimizer = optimizers.optimizer(*optimizer_settings)
    return optimizer, jax.jit(optimizer.init)


def _apply(model, params, batch, deterministic, rng):
    args = [batch.get(k) for k in INPUT_KEYS]
    rngs = None if deterministic else {"dropout": rng}
    return model.apply({"params": params}, *args, deterministic=deterministic, rngs=rngs)


def _loss_sums(trainable, frozen, batch, rng, model):
    logits = _apply(model, base.merge(trainable, frozen), batch, False, rng)
    return losses.weighted_nll_sum(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    )


def _grads(trainable, frozen, batch, rng, model, num_microbatches):
    """Sums of loss, weights and gradients over the batch, in `num_microbatches` pieces."""
    grad_fn = jax.value_and_grad(_loss_sums, has_aux=True)
    if num_microbatches == 1:
        (loss_sum, weight_sum), grads = grad_fn(trainable, frozen, batch, rng, model)
        return loss_sum, weight_sum, grads
    micro = jax.tree.map(
        lambda x: x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:]), batch
    )

    def body(carry, inputs):
        index, mb = inputs
        (loss_sum, weight_sum), grads = grad_fn(
            trainable, frozen, mb, jax.random.fold_in(rng, index), model
        )
        acc_loss, acc_weight, acc_grads = carry
        acc_grads = jax.tree.map(jnp.add, acc_grads, grads)
        return (acc_loss + loss_sum, acc_weight + weight_sum, acc_grads), None

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    carry = (jnp.float32(0), jnp.float32(0), zeros)
    (loss_sum, weight_sum, grads), _ = jax.lax.scan(
        body, carry, (jnp.arange(num_microbatches), micro)
    )
    return loss_sum, weight_sum, grads


def train_step(
    state: TrainState,
    frozen,
    batch: Mapping[str, jax.Array],
    learning_rate: jax.Array,
    *,
    model,
    optimizer,
    num_microbatches: int = 1,
) -> tuple[TrainState, dict]:
    """One optimizer step on the token-mean loss of the batch (target tokens only)."""
    rng = jax.random.fold_in(state.rng, state.step)
    loss_sum, weight_sum, grads = _grads(state.params, frozen, batch, rng, model, num_microbatches)
    denominator = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * learning_rate, updates)  # unit-rate optimizer
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss_sum / denominator,
        "target_tokens": weight_sum,
        "grad_norm": optax.tree.norm(grads),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def eval_step(trainable, frozen, batch, *, model) -> dict:
    """Sums of target-token NLL and target-token count (exact over a split when summed)."""
    logits = _apply(model, base.merge(trainable, frozen), batch, True, None)
    loss_sum, weight_sum = losses.weighted_nll_sum(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    )
    return {"loss_sum": loss_sum, "target_tokens": weight_sum}


def jit_steps(model, optimizer_settings: tuple, mesh, rules, state, frozen, num_microbatches=1):
    """Compiled train and eval steps, shared by every run with the same key in this process.

    On CPU this also tunes the host allocator once (host_memory.py): XLA:CPU's step buffers
    are host memory, and returning them to the OS after each step doubled the step time.

    Args:
      optimizer_settings: the arguments of `optimizers.optimizer`, as a hashable tuple.
    """
    if jax.default_backend() == "cpu":
        host_memory.keep_freed_memory()
    state_sh = _shardings(state)
    frozen_sh = _shardings(frozen)
    return _compiled(
        ModelKey(model), optimizer_settings, mesh, rules, state_sh, frozen_sh, num_microbatches
    )


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
def _compiled(model_key, optimizer_settings, mesh, rules, state_sh, frozen_sh, num_microbatches):
    model = model_key.model
    optimizer = _optimizer(optimizer_settings)[0]
    batch_sh = partitioning.batch_sharding(mesh, rules)
    repl = partitioning.replicated(mesh)
    step = functools.partial(
        train_step, model=model, optimizer=optimizer, num_microbatches=num_microbatches
    )
    train = jax.jit(
        step,
        in_shardings=(state_sh.tree, frozen_sh.tree, batch_sh, repl),
        out_shardings=(state_sh.tree, repl),
        donate_argnums=(0,),
    )
    evaluate = jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(state_sh.tree.params, frozen_sh.tree, batch_sh),
        out_shardings=repl,
    )
    return _with_context(train, mesh, rules), _with_context(evaluate, mesh, rules)


def _with_context(fn, mesh, rules):
    @functools.wraps(fn)
    def wrapped(*args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return fn(*args)

    return wrapped
