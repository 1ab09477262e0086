"""Packed runs: K finetuning runs of one base model trained by one compiled step.

    stacked_state = stack([state_0 .. state_{K-1}])   # TrainState, leading run axis [K, ...]
    frozen        = the runs' common frozen params     # once, no run axis, read once per step
    batch         = {key: [K, B, ...]}                 # run k's own batch in row k
    learning_rates = [K]                               # each run's own schedule
    run_variables = {collection: [K, ...]} or {}       # per-run, never-trained model inputs
                                                       #   (pack_layout.py: LoRA's alpha / r_i)

The packed step is `jax.vmap` of the one train step (`trainer.train_step`) over the run axis,
with the frozen params closed over, unbatched. Each run therefore keeps its own gradient (its
loss is normalised by its own target tokens), clipping, optimizer statistics, RNG
(`fold_in(rng_k, step_k)`) and step count, exactly as when it trains alone. A frozen matmul
`x @ W` under vmap, with x batched and W not, is one dot_general of x [K, B*L, in] with W
[in, out] and no batch dimensions: one GEMM over all K runs' rows, W read once. Trained
leaves (LoRA factors, prompts, norm scales; every leaf for FMT) carry the run axis and become
batched per-run products. tests/train/packed_step_test.py checks both in the step's jaxpr.

Shardings: the run axis is never sharded; the rest of each leaf is sharded as in a solo run,
and a batch's B dim lies on the batch axes, as a solo batch's does. So slot k of a stacked
tree has exactly a solo run's layout (`unstack`, `set_slot` are indexing, no resharding), and
a pack needs no mesh a solo run could not use. Sharding the run axis over 'data' instead would
take that axis from the batch and give a slot another layout than its solo run.

Refilling a slot (`refill_slot`, on `set_slot`) is a jitted, donated `dynamic_update_slice`
with a traced index: no step recompiles when a finished run's slot takes a new run.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from ft_scaling.train import host_memory, optimizers, partitioning, trainer

RUN_AXIS = 0  # the leading axis of every stacked leaf


# --- Trees with a run axis --------------------------------------------------------------------


def stack(trees):
    """One tree with a leading run axis from K trees of equal structure, shapes and shardings.

    A leaf sharded as NamedSharding(mesh, P(*spec)) comes back as NamedSharding(mesh,
    P(None, *spec)): the run axis unsharded, the rest as in the solo tree.
    """
    trees = list(trees)
    if not trees:
        raise ValueError("stack needs at least one tree")
    _check_alike(trees)
    shardings = jax.tree.map(_with_run_axis, trees[0])
    return _stacker(_Key(shardings))(trees)


def unstack(stacked) -> list:
    """The K solo trees of a stacked tree, each on its solo shardings (run axis dropped)."""
    leaves = jax.tree.leaves(stacked)
    if not leaves:
        raise ValueError("unstack needs a tree with at least one array leaf")
    take = _taker(_Key(jax.tree.map(_without_run_axis, stacked)))
    return [take(stacked, jnp.int32(i)) for i in range(leaves[0].shape[RUN_AXIS])]


def take_slot(stacked, index: int):
    """Slot `index` of a stacked tree as a solo tree, on its solo shardings (one compiled
    gather per tree layout: the index is traced)."""
    take = _taker(_Key(jax.tree.map(_without_run_axis, stacked)))
    return take(stacked, jnp.int32(index))


def take_slots(stacked, start: int, count: int):
    """Slots [start, start + count) of a stacked tree, still stacked (a pack of `count`)."""
    take = _slicer(_Key(jax.tree.map(lambda x: x.sharding, stacked)), count)
    return take(stacked, jnp.int32(start))


def set_slot(stacked, index: int, tree):
    """`stacked` with slot `index` replaced by the solo `tree` (donates `stacked`).

    The index is traced: refilling any slot reuses one compiled update.

    Raises:
      ValueError naming the first leaf whose structure, shape or dtype differs from a slot's.
    """
    _check_slot(stacked, tree)
    update = _slot_setter(_Key(jax.tree.map(lambda x: x.sharding, stacked)))
    return update(stacked, jnp.int32(index), tree)


def refill_slot(layout, stacked_state, run_variables, index: int, state, method, mesh):
    """The pack with slot `index` re-initialised to a new run: (stacked state, run variables).

    `state` is the new run's solo TrainState as a solo run starts (or resumes) it
    (checkpoints.restore_or_initialize): its trainable params, optimizer state, RNG and step
    replace the slot's, and its method's per-run variables (LoRA: alpha / r) replace the
    slot's. One donated update with a traced index: no step or refill compiles again.

    Args:
      layout: the pack's pack_layout.PackLayout (pads a LoRA state to the pack's rank).
      stacked_state, run_variables: the pack's stacked TrainState and variables (donated).
      index: the slot to refill, in [0, K).
      state: the new run's solo TrainState; method: its method (pack_key equal to the pack's).
      mesh: where the pack lives.
    """
    runs = num_runs(stacked_state)
    if not 0 <= index < runs:
        raise ValueError(f"refill_slot: slot {index} is not in a pack of {runs} runs")
    layout.check_member(method)
    slot = (layout.to_slot(state, method), layout.variables(method, mesh))
    return set_slot((stacked_state, run_variables), index, slot)


def num_runs(stacked) -> int:
    """K, the size of the run axis."""
    return int(jax.tree.leaves(stacked)[0].shape[RUN_AXIS])


def stacked_batch_sharding(mesh, rules) -> NamedSharding:
    """Sharding of a stacked batch array [K, B, ...]: K unsharded, B on the batch axes."""
    batch_axes = nn.logical_to_mesh_axes(("batch",), rules)
    return NamedSharding(mesh, PartitionSpec(None, *batch_axes))


def _with_run_axis(x):
    sharding = x.sharding
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
    return sharding  # a single-device leaf stays on its device


def _without_run_axis(x):
    sharding = x.sharding
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
    return sharding


def _check_alike(trees):
    first = jax.tree_util.tree_flatten_with_path(trees[0])
    for index, tree in enumerate(trees[1:], 1):
        other = jax.tree_util.tree_flatten_with_path(tree)
        if other[1] != first[1]:
            raise ValueError(f"stack: tree {index} has another structure than tree 0")
        for (path, a), (_, b) in zip(first[0], other[0], strict=True):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(
                    f"stack: leaf {jax.tree_util.keystr(path)} of tree {index} is "
                    f"{b.dtype}{list(b.shape)}, tree 0's is {a.dtype}{list(a.shape)}"
                )


def _check_slot(stacked, tree):
    slots, slot_def = jax.tree_util.tree_flatten_with_path(stacked)
    leaves, tree_def = jax.tree_util.tree_flatten_with_path(tree)
    if slot_def != tree_def:
        raise ValueError("set_slot: the tree has another structure than the stacked tree's slots")
    for (path, s), (_, t) in zip(slots, leaves, strict=True):
        if tuple(s.shape[1:]) != tuple(t.shape) or s.dtype != t.dtype:
            raise ValueError(
                f"set_slot: leaf {jax.tree_util.keystr(path)} is {t.dtype}{list(t.shape)}, "
                f"a slot holds {s.dtype}{list(s.shape[1:])}"
            )


class _Key(trainer._Hashable):
    """A pytree of shardings as a cache key (trainer's: treedef + leaves)."""


@functools.lru_cache(maxsize=64)
def _stacker(shardings: _Key):
    stack_leaves = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    return jax.jit(stack_leaves, out_shardings=shardings.tree)


@functools.lru_cache(maxsize=64)
def _taker(shardings: _Key):
    take = lambda s, i: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, False), s)
    return jax.jit(take, out_shardings=shardings.tree)


@functools.lru_cache(maxsize=64)
def _slicer(shardings: _Key, count: int):
    take = lambda s, i: jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i, count, 0), s)
    return jax.jit(take, out_shardings=shardings.tree)


@functools.lru_cache(maxsize=64)
def _slot_setter(shardings: _Key):
    def update(stacked, index, tree):
        put = lambda s, t: jax.lax.dynamic_update_index_in_dim(s, t, index, RUN_AXIS)
        return jax.tree.map(put, stacked, tree)

    return jax.jit(update, out_shardings=shardings.tree, donate_argnums=(0,))


# --- The packed steps ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ModelWithVariables:
    """A flax module whose `apply` also gets a run's never-trained variable collections.

    Stands in for a loss's `model` inside the vmapped step (the variables are that run's
    slice, traced), so any loss calling `self.model.apply` sees them, unchanged.
    """

    module: object
    variables: dict

    def apply(self, variables, *args, **kwargs):
        return self.module.apply({**variables, **self.variables}, *args, **kwargs)

    def __getattr__(self, name):  # config, embed, ...: the wrapped module's
        return getattr(self.module, name)


def with_variables(loss, variables: dict):
    """`loss` whose model applies with the extra variable collections (none: `loss` itself)."""
    if not variables:
        return loss
    if not dataclasses.is_dataclass(loss) or not hasattr(loss, "model"):
        raise TypeError(f"run variables need a loss dataclass with a `model` field, not {loss!r}")
    return dataclasses.replace(loss, model=_ModelWithVariables(loss.model, variables))


def packed_train_step(
    stacked_state, frozen, stacked_batch, learning_rates, run_variables, *, loss, optimizer, **kw
):
    """`trainer.train_step` of every run at once (vmapped over the run axis; frozen shared).

    Returns:
      (stacked state, metrics with a leading run axis: each run's loss, target_tokens,
      grad_norm, as its solo step returns them).
    """

    def one_run(state, batch, learning_rate, variables):
        run_loss = with_variables(loss, variables)
        return trainer.train_step(
            state, frozen, batch, learning_rate, loss=run_loss, optimizer=optimizer, **kw
        )

    return jax.vmap(one_run)(stacked_state, stacked_batch, learning_rates, run_variables)


def packed_eval_step(stacked_trainable, frozen, stacked_batch, run_variables, *, loss):
    """`trainer.eval_step` of every run at once: `loss.evaluate`'s sums with a leading K."""

    def one_run(trainable, batch, variables):
        return trainer.eval_step(trainable, frozen, batch, loss=with_variables(loss, variables))

    return jax.vmap(one_run)(stacked_trainable, stacked_batch, run_variables)


def jit_packed_steps(
    loss,
    optimizer_settings: optimizers.OptimizerSettings,
    mesh,
    rules,
    stacked_state,
    frozen,
    num_microbatches: int = 1,
    run_variables: dict | None = None,
):
    """Compiled packed train and eval steps, shared by every pack with the same key.

    The key, as `trainer.jit_steps`'s: the loss (by content), optimizer settings, mesh, rules,
    the shardings of the stacked state, frozen params and run variables, K and the microbatch
    count. The stacked state keeps its shardings on output and is donated.

    Args:
      loss: the loss of the packed model (pack_layout.PackLayout.model), hashable by content.
      optimizer_settings: every run's optimizer (one per pack).
      mesh, rules: where the state lives.
      stacked_state: the stacked TrainState (`stack`; its shardings and K are read).
      frozen: the frozen params all runs share.
      num_microbatches: pieces each run's batch is split into (as in a solo run).
      run_variables: stacked per-run model variables (PackLayout.variables); None: none.

    Returns:
      (train_fn(stacked_state, frozen, stacked_batch, learning_rates[K], run_variables={})
         -> (stacked_state, metrics [K]),
       eval_fn(stacked_trainable, frozen, stacked_batch, run_variables={}) -> sums [K]).
      Stacked batches are {key: [K, B, ...]}, on `stacked_batch_sharding` or placed there.
    """
    if jax.default_backend() == "cpu":
        host_memory.keep_freed_memory()
    run_variables = {} if run_variables is None else run_variables
    shardings = [_Key(jax.tree.map(lambda x: x.sharding, t)) for t in (stacked_state, frozen)]
    variables_key = _Key(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), run_variables)
    )
    return _compiled(
        loss,
        optimizer_settings,
        mesh,
        rules,
        *shardings,
        variables_key,
        num_runs(stacked_state),
        num_microbatches,
    )


@functools.lru_cache(maxsize=32)
def _compiled(loss, settings, mesh, rules, state_sh, frozen_sh, variables, runs, microbatches):
    del runs  # in the key only: jit specialises on the shapes itself
    optimizer = trainer._optimizer(settings)[0]
    batch_sh, repl = stacked_batch_sharding(mesh, rules), partitioning.replicated(mesh)
    variables_sh = jax.tree.map(lambda _: repl, variables.tree)
    step = functools.partial(
        packed_train_step, loss=loss, optimizer=optimizer, num_microbatches=microbatches
    )
    train = jax.jit(
        step,
        in_shardings=(state_sh.tree, frozen_sh.tree, batch_sh, repl, variables_sh),
        out_shardings=(state_sh.tree, repl),
        donate_argnums=(0,),
        compiler_options=partitioning.step_compiler_options(mesh),
    )
    evaluate = jax.jit(
        functools.partial(packed_eval_step, loss=loss),
        in_shardings=(state_sh.tree.params, frozen_sh.tree, batch_sh, variables_sh),
        out_shardings=repl,
        compiler_options=partitioning.step_compiler_options(mesh),
    )
    return _defaulted(train, mesh, rules, 4), _defaulted(evaluate, mesh, rules, 3)


def _defaulted(fn, mesh, rules, arity: int):
    """`fn` under the mesh and rules, with run_variables (the last argument) defaulting to {}."""

    @functools.wraps(fn)
    def wrapped(*args):
        if len(args) == arity:
            args = (*args, {})
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return fn(*args)

    return wrapped
