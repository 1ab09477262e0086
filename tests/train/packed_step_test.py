"""Packed runs equal the same runs stepped alone (trainer.jit_steps), on 1 device and 8.

K = 3 runs per pack, each with its own seed (dropout RNG), learning rate per step, batches
and number of target tokens: LoRA of ranks 4, 8, 16 (padded to 16) with dropout under AdamW
with weight decay and clipping, prompt tuning under SGD, BitFit under Adafactor in 2
microbatches, FMT under AdamW. Per-run loss, target tokens and gradient norm at every step
(and eval sums) are compared at rtol 1e-5; params and optimizer state as `Deviation` says.
LoRA's padded columns and rows stay exactly zero; refilling a slot compiles no step; the
frozen matmuls of a PET pack are one GEMM over all runs' rows (in the step's jaxpr).
"""

import contextlib
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.methods import bitfit, full, lora, prompt
from ft_scaling.models import configs, decoder
from ft_scaling.train import (
    checkpoints,
    losses,
    optimizers,
    pack_layout,
    packed_step,
    partitioning,
    trainer,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One block; 96 = vocab divisible by the 'model' axis; one kv head, so that no trained LoRA
# factor has the shape of a frozen kernel (the jaxpr test tells them apart by shape).
CONFIG = configs.ModelConfig(
    vocab_size=96, num_layers=1, num_heads=4, num_kv_heads=1, head_dim=8, embed_dim=32, mlp_dim=64
)
LENGTH, BATCH, STEPS = 8, 4, 3
# Attention (one with a single kv head) and MLP projections; fewer than all seven keeps the
# steps' compiles short.
LORA_TARGETS = ("attention/(query|value)$", "mlp/wo$")
SEEDS, RATES = (0, 1, 2), (3e-2, 1e-2, 5e-3)
CASES = {
    "lora": (
        [
            lora.LoRA(rank=r, alpha=a, dropout_rate=0.1, targets=LORA_TARGETS)
            for r, a in ((4, 8.0), (8, 8.0), (16, 32.0))
        ],
        optimizers.OptimizerSettings("adamw", weight_decay=0.01, clip_norm=1.0),
    ),
    "prompt": ([prompt.PromptTuning(prompt_length=4)] * 3, optimizers.OptimizerSettings("sgd")),
    "bitfit": ([bitfit.BitFit()] * 3, optimizers.OptimizerSettings("adafactor")),
    "fmt": ([full.FullModelTuning()] * 3, optimizers.OptimizerSettings("adamw", clip_norm=None)),
}
MICROBATCHES = {"bitfit": 2}  # gradient accumulation inside the vmapped step
RTOL, ATOL, STATE_ATOL = 1e-5, 1e-7, 3e-5
LOOSE_FRACTION, LOOSE_RATE = 0.005, 0.05  # Deviation's docstring


def _batch(seed: int, step: int) -> dict:
    """Random tokens; a random loss mask, so runs differ in their target-token counts."""
    rng = np.random.default_rng(1000 * seed + step)
    tokens = rng.integers(1, CONFIG.vocab_size, (BATCH, LENGTH + 1))
    return {
        "decoder_input_tokens": jnp.asarray(tokens[:, :-1], jnp.int32),
        "decoder_target_tokens": jnp.asarray(tokens[:, 1:], jnp.int32),
        "decoder_loss_weights": jnp.asarray(rng.integers(0, 2, (BATCH, LENGTH)), jnp.float32),
        "decoder_segment_ids": jnp.ones((BATCH, LENGTH), jnp.int32),
        "decoder_positions": jnp.broadcast_to(jnp.arange(LENGTH, dtype=jnp.int32), (BATCH, LENGTH)),
    }


def _rate(run: int, step: int) -> np.float32:
    return np.float32(RATES[run % len(RATES)] * (1.0 - 0.2 * step))


def _solo_state(method, settings, seed, base_params, mesh, rules, fresh=False):
    """(state, frozen) of a solo run from `base_params`.

    fresh: as checkpoints.restore_or_initialize starts a run from a base checkpoint (a jitted
    init per model: seconds of compile each). Otherwise the method's own params are random
    numpy values (LoRA's B nonzero, so both factors train from step 0): a state a run could
    resume from, and no compile.
    """
    rng = jax.random.PRNGKey(seed)
    model = method.wrap(decoder.Decoder(CONFIG))
    if fresh:
        params = trainer.init_params(model, jax.random.fold_in(rng, 1), LENGTH, mesh, rules)
        params = checkpoints.initial_params(params, base_params, method.is_method_param)
        params = method.after_restore(params, jax.random.fold_in(rng, 2))
    else:
        values = np.random.default_rng(seed)
        draw = lambda path, x: 0.1 * values.standard_normal(x.shape).astype(np.float32)
        params = _host_params(model, mesh, rules, draw)
        params = checkpoints.initial_params(params, base_params, method.is_method_param)
    mask = method.trainable_mask(params)
    state, frozen = trainer.create_state(params, mask, settings, jax.random.fold_in(rng, 3), mesh)
    # Own buffers: leaves restored from one base share theirs, and solo steps donate the state.
    return jax.tree.map(jnp.copy, state), frozen


def _host_params(model, mesh, rules, draw):
    """`model`'s params drawn on the host by draw(path, abstract leaf), put on their shardings."""
    boxed = trainer.abstract_params(model, LENGTH)
    shardings = nn.meta.unbox(partitioning.param_shardings(boxed, mesh, rules))
    drawn = jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(boxed))
    return jax.device_put(drawn, shardings)


def _base(mesh, rules):
    """Random base params (norm scales near 1), without an init compile."""
    values = np.random.default_rng(99)

    def draw(path, x):
        noise = values.standard_normal(x.shape).astype(np.float32)
        return 1.0 + 0.1 * noise if path[-1].key == "scale" else 0.2 * noise

    return _host_params(decoder.Decoder(CONFIG), mesh, rules, draw)


def _stacked_batch(batches, mesh, rules):
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    return jax.device_put(stacked, packed_step.stacked_batch_sharding(mesh, rules))


class Pack:
    """A pack of runs and its compiled steps (the runs' solo states are built alongside)."""

    def __init__(self, methods, settings, mesh, rules, microbatches=1):
        self.methods, self.settings, self.mesh, self.rules = methods, settings, mesh, rules
        self.base = _base(mesh, rules)
        built = [
            _solo_state(m, settings, s, self.base, mesh, rules)
            for m, s in zip(methods, SEEDS, strict=True)
        ]
        self.solo_states, self.frozen = [b[0] for b in built], built[0][1]
        self.layout = pack_layout.layout(decoder.Decoder(CONFIG), methods, settings)
        slots = [self.layout.to_slot(s, m) for s, m in zip(self.solo_states, methods, strict=True)]
        self.state = packed_step.stack(slots)  # new buffers: the solo states stay usable
        self.variables = packed_step.stack([self.layout.variables(m, mesh) for m in methods])
        self.train_fn, self.eval_fn = packed_step.jit_packed_steps(
            losses.LMLoss(self.layout.model),
            settings,
            mesh,
            rules,
            self.state,
            self.frozen,
            num_microbatches=microbatches,
            run_variables=self.variables,
        )

    def step(self, step: int, seeds=SEEDS):
        batch = _stacked_batch([_batch(s, step) for s in seeds], self.mesh, self.rules)
        rates = jnp.asarray([_rate(k, step) for k in range(len(seeds))])
        self.state, metrics = self.train_fn(self.state, self.frozen, batch, rates, self.variables)
        return jax.device_get(metrics)

    def evaluate(self, seeds=SEEDS):
        batch = _stacked_batch([_batch(s, 100) for s in seeds], self.mesh, self.rules)
        return jax.device_get(self.eval_fn(self.state.params, self.frozen, batch, self.variables))

    def slots(self):
        """Each slot's state in its solo layout, on the host."""
        unstacked = packed_step.unstack(self.state)
        return [
            jax.device_get(self.layout.from_slot(s, m))
            for s, m in zip(unstacked, self.methods, strict=True)
        ]


def _solo_run(method, settings, state, frozen, mesh, rules, run, seed, steps, **options):
    """(metrics per step, final state, eval sums or None) of one run stepped alone.

    options: evaluate (bool), microbatches (int).
    """
    evaluate, microbatches = options.get("evaluate", False), options.get("microbatches", 1)
    loss = losses.LMLoss(method.wrap(decoder.Decoder(CONFIG)))
    train_fn, eval_fn = trainer.jit_steps(
        loss, settings, mesh, rules, state, frozen, num_microbatches=microbatches
    )
    history = []
    for step in steps:
        state, metrics = train_fn(state, frozen, _batch(seed, step), _rate(run, step))
        history.append(jax.device_get(metrics))
    evaluated = (
        jax.device_get(eval_fn(state.params, frozen, _batch(seed, 100))) if evaluate else None
    )
    return history, jax.device_get(state), evaluated


class Deviation:
    """Asserts closeness leaf by leaf and keeps the largest deviations seen.

    Per-step metrics (loss, target tokens, grad norm, eval sums): rtol 1e-5, the acceptance.
    Trained params and optimizer state: rtol 1e-5 plus 3e-5 of the leaf's largest magnitude,
    for all but LOOSE_FRACTION of a leaf's entries; those within LOOSE_RATE of the run's summed
    learning rates. Why: AdamW's first update of an entry is g / (|g| + eps), about the rate
    whatever |g|, and an entry whose gradient is near zero by cancellation (seen: -2.3e-8
    where the median |g| is 1.6e-2, eps 1e-8) has a large relative rounding error under
    another summation order (a batched matmul's), so its step differs by a fraction of the
    rate. Seen: one entry in 1024 off by 1e-4 of a step's rate on 1 device, 0.75% on 8.
    """

    def __init__(self):
        self.metrics = 0.0  # the largest relative deviation of a metric
        self.state = 0.0  # ... of a state entry, relative to its leaf's largest magnitude
        self.loose = 0  # entries outside the tight state tolerance

    def check_metrics(self, got, want, what: str):
        for path, g, w in _paired(got, want):
            g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"{what} {path}")
            scale = np.maximum(np.abs(w), 1e-6)
            self.metrics = max(self.metrics, float(np.max(np.abs(g - w) / scale)))

    def check_state(self, got, want, what: str, summed_rates: float):
        for path, g, w in _paired(got, want):
            g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
            largest = float(np.max(np.abs(w), initial=0.0))
            error = np.abs(g - w)
            loose = error > RTOL * np.abs(w) + max(STATE_ATOL * largest, ATOL)
            allowed = max(1, LOOSE_FRACTION * loose.size)
            assert loose.sum() <= allowed, f"{what} {path}: {loose.sum()} entries off"
            np.testing.assert_allclose(
                g, w, rtol=0, atol=LOOSE_RATE * summed_rates, err_msg=f"{what} {path}"
            )
            self.loose += int(loose.sum())
            if largest > 0:
                self.state = max(self.state, float(np.max(error)) / largest)


def _summed_rates(run: int, steps) -> float:
    return float(sum(_rate(run, step) for step in steps))


def _paired(got, want):
    got_flat, got_def = jax.tree_util.tree_flatten_with_path(got)
    want_flat, want_def = jax.tree_util.tree_flatten_with_path(want)
    assert got_def == want_def, (got_def, want_def)
    for (path, g), (_, w) in zip(got_flat, want_flat, strict=True):
        yield jax.tree_util.keystr(path), g, w


def compare_case(name: str, mesh, rules, evaluate: bool = False) -> Deviation:
    """Trains CASES[name] packed and solo; asserts equality; returns the deviations seen."""
    methods, settings = CASES[name]
    microbatches = MICROBATCHES.get(name, 1)
    pack = Pack(methods, settings, mesh, rules, microbatches)
    packed = [pack.step(step) for step in range(STEPS)]
    assert pack.train_fn.__wrapped__._cache_size() == 1
    slots = pack.slots()
    packed_eval = pack.evaluate() if evaluate else None
    deviation = Deviation()
    for run, (method, seed) in enumerate(zip(methods, SEEDS, strict=True)):
        solo = pack.solo_states[run]
        history, final, evaluated = _solo_run(
            method,
            settings,
            solo,
            pack.frozen,
            mesh,
            rules,
            run,
            seed,
            range(STEPS),
            # One solo eval compile: the packed eval is one vmap for all K runs.
            evaluate=evaluate and run == 0,
            microbatches=microbatches,
        )
        for step, metrics in enumerate(history):
            got = {k: packed[step][k][run] for k in metrics}
            deviation.check_metrics(got, metrics, f"{name} run {run} step {step}")
        deviation.check_state(
            slots[run], final, f"{name} run {run} state", _summed_rates(run, range(STEPS))
        )
        if evaluated is not None:
            got = {k: v[run] for k, v in packed_eval.items()}
            deviation.check_metrics(got, evaluated, f"{name} run {run} eval")
    if name == "lora":
        _check_padding_zero(pack)
    _check_run_axis_unsharded(pack)
    return deviation


def _check_run_axis_unsharded(pack):
    """The run axis of every stacked leaf is whole; on a mesh, some trained leaf is split."""
    leaves = jax.tree.leaves(pack.state.params)
    assert all(x.sharding.spec[:1] in ((), (None,)) for x in leaves), pack.state.params
    pieces = [len({str(s.index) for s in x.addressable_shards}) for x in leaves]
    assert (max(pieces) > 1) == (pack.mesh.size > 1), pieces


def _check_padding_zero(pack):
    """Every padded column of A and row of B, and their optimizer moments, are exactly 0."""
    host = jax.device_get(pack.state)
    trees = {"params": host.params, "opt_state": host.opt_state}
    for run, method in enumerate(pack.methods):
        padded = 0
        for path, leaf in jax.tree_util.tree_flatten_with_path(trees)[0]:
            axis = pack_layout._rank_axis(path)
            if axis is None or leaf.ndim == 0:
                continue
            extra = np.take(leaf[run], np.arange(method.rank, pack.layout.rank), axis=axis)
            assert not extra.any(), (run, jax.tree_util.keystr(path))
            padded += extra.size
        assert (padded > 0) == (method.rank < pack.layout.rank)


@pytest.fixture(scope="module")
def one_device():
    return partitioning.make_mesh(), partitioning.logical_rules()


@pytest.mark.parametrize("name", sorted(CASES))
def test_packed_runs_equal_solo_runs(name, one_device):
    deviation = compare_case(name, *one_device, evaluate=name == "lora")
    print(
        f"{name}: max relative deviation packed vs solo: metrics {deviation.metrics:.1e}, "
        f"state {deviation.state:.1e} of a leaf's largest magnitude, {deviation.loose} loose"
    )


@contextlib.contextmanager
def _compiles():
    """The XLA compilations during the block (each one's event)."""
    events = []
    listener = lambda event, _, **kw: events.append(event) if "backend_compile" in event else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_refilling_a_slot_compiles_no_step_and_the_new_run_trains_as_alone(one_device):
    mesh, rules = one_device
    methods, settings = CASES["lora"]
    pack = Pack(methods, settings, mesh, rules)
    pack.step(0)
    # Slot 0 (rank 4, alpha 8: scale 2) takes a rank-8 run of scale 1; then slot 2 (rank 16)
    # a rank-4 run. Their methods equal other runs' (no new solo model to compile).
    first, second = methods[1], methods[0]
    solo_first, _ = _solo_state(first, settings, 7, pack.base, mesh, rules, fresh=True)
    with _compiles() as compiles:
        pack.state, pack.variables = packed_step.refill_slot(
            pack.layout, pack.state, pack.variables, 0, solo_first, first, mesh
        )
        pack.methods = [first, *pack.methods[1:]]
        packed = [pack.step(step, (7, 1, 2)) for step in (1, 2)]
    assert len(compiles) <= 1, compiles  # the update of one pack's trees, once per pack
    with _compiles() as compiles:  # another slot, another rank: nothing compiles at all
        solo_second, _ = _solo_state(second, settings, 8, pack.base, mesh, rules)
        pack.state, pack.variables = packed_step.refill_slot(
            pack.layout, pack.state, pack.variables, 2, solo_second, second, mesh
        )
        pack.methods = [*pack.methods[:2], second]
        packed += [pack.step(step, (7, 1, 8)) for step in (3,)]
    assert compiles == [] and pack.train_fn.__wrapped__._cache_size() == 1, compiles
    # Each refilled slot follows its new run exactly as the run alone (the slot's rates).
    deviation = Deviation()
    runs = ((0, first, solo_first, 7, (1, 2, 3)), (2, second, solo_second, 8, (3,)))
    for slot, method, solo, seed, steps in runs:
        history, final, _ = _solo_run(
            method, settings, solo, pack.frozen, mesh, rules, slot, seed, steps
        )
        got = packed[-len(steps) :]
        for step, metrics, step_metrics in zip(steps, history, got, strict=True):
            deviation.check_metrics(
                {k: step_metrics[k][slot] for k in metrics}, metrics, f"slot {slot} step {step}"
            )
        deviation.check_state(pack.slots()[slot], final, f"slot {slot}", _summed_rates(slot, steps))
    _check_padding_zero(pack)
    with pytest.raises(ValueError, match="cannot join this pack"):
        packed_step.refill_slot(
            pack.layout, pack.state, pack.variables, 0, solo, bitfit.BitFit(), mesh
        )
    with pytest.raises(ValueError, match="slot 3 is not in a pack of 3 runs"):
        packed_step.refill_slot(pack.layout, pack.state, pack.variables, 3, solo, second, mesh)


def test_frozen_matmuls_are_one_gemm_over_all_runs(one_device):
    """In the packed LoRA step's jaxpr, every frozen kernel feeds only unbatched dot_generals
    whose other operand holds all K runs' rows (one GEMM, the kernel read once) and is never
    broadcast to a run axis; the LoRA factors are per-run (batched) products."""
    mesh, rules = one_device
    methods, settings = CASES["lora"]
    pack = Pack(methods, settings, mesh, rules)
    batch = _stacked_batch([_batch(s, 0) for s in SEEDS], mesh, rules)
    rates = jnp.ones((len(SEEDS),), jnp.float32)
    step = lambda *args: packed_step.packed_train_step(
        *args, loss=losses.LMLoss(pack.layout.model), optimizer=settings.build()
    )
    args = (pack.state, pack.frozen, batch, rates, pack.variables)
    jaxpr = jax.make_jaxpr(step)(*args).jaxpr
    state_leaves = len(jax.tree.leaves(pack.state))
    frozen_vars = jaxpr.invars[state_leaves : state_leaves + len(jax.tree.leaves(pack.frozen))]
    kernels = {v: v.aval.shape for v in frozen_vars if v.aval.ndim >= 2}
    trace = _FrozenTrace(len(SEEDS))
    trace.walk(jaxpr, {v: v for v in kernels})
    # The embedding feeds a gather too (the token lookup) and the logits' matmul; every kernel
    # (embedding included: tied logits) reaches one.
    assert set(trace.gemm_rows) == set(kernels), (kernels, trace.gemm_rows)
    rows = {r for by_kernel in trace.gemm_rows.values() for r in by_kernel}
    assert rows == {len(SEEDS) * BATCH * LENGTH}, trace.gemm_rows
    assert trace.batched_dots > 0  # the LoRA factors' per-run products (and attention)


class _FrozenTrace:
    """Follows the frozen kernels through a jaxpr (reshapes, casts, nested jaxprs) to its dots."""

    VIEWS = {
        "reshape",
        "transpose",
        "convert_element_type",
        "copy",
        "squeeze",
        "reshard",
        "sharding_constraint",
    }

    def __init__(self, runs: int):
        self.runs, self.gemm_rows, self.batched_dots = runs, {}, 0

    def walk(self, jaxpr, origin: dict):
        """origin: jaxpr var -> the frozen kernel (outer invar) it is a view of."""
        for eqn in jaxpr.eqns:
            sources = [
                None if isinstance(v, jex_core.Literal) else origin.get(v) for v in eqn.invars
            ]
            name = eqn.primitive.name
            for inner in _inner_jaxprs(eqn):
                if len(inner.invars) == len(eqn.invars):
                    self.walk(
                        inner, {i: s for i, s in zip(inner.invars, sources, strict=True) if s}
                    )
            if not any(sources):
                if name == "dot_general" and eqn.params["dimension_numbers"][1][0]:
                    self.batched_dots += 1
                continue
            kernel = next(s for s in sources if s)
            assert name != "broadcast_in_dim", f"a frozen kernel is broadcast: {eqn}"
            if name in self.VIEWS:
                origin[eqn.outvars[0]] = kernel
            elif name == "dot_general":
                self._check_gemm(eqn, sources, kernel)

    def _check_gemm(self, eqn, sources, kernel):
        (_, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
        assert not lhs_batch, f"a frozen kernel in a batched (per-run) product: {eqn}"
        other = eqn.invars[1] if sources[0] else eqn.invars[0]
        (contract_l, contract_r), _ = eqn.params["dimension_numbers"]
        contract = contract_r if sources[0] else contract_l
        shape = other.aval.shape
        assert shape[0] == self.runs, f"a frozen kernel multiplies one run's rows: {eqn}"
        rows = int(np.prod([d for i, d in enumerate(shape) if i not in contract]))
        self.gemm_rows.setdefault(kernel, set()).add(rows)


def _inner_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns"):
                yield inner


def test_packs_refuse_runs_that_cannot_share_one():
    methods = [lora.LoRA(rank=4), lora.LoRA(rank=8)]
    with pytest.raises(
        ValueError, match=r"LoRA ranks \[4, 8\] cannot share a pack under Adafactor"
    ):
        pack_layout.layout(decoder.Decoder(CONFIG), methods, optimizers.OptimizerSettings())
    settings = optimizers.OptimizerSettings("adamw")
    with pytest.raises(ValueError, match="runs 0 and 1 cannot share a pack"):
        pack_layout.layout(decoder.Decoder(CONFIG), [lora.LoRA(), bitfit.BitFit()], settings)
    with pytest.raises(ValueError, match="runs 0 and 1 cannot share a pack"):
        dropouts = [lora.LoRA(), lora.LoRA(dropout_rate=0.1)]
        pack_layout.layout(decoder.Decoder(CONFIG), dropouts, settings)
    with pytest.raises(ValueError, match="pack rank 4 is below the runs' largest LoRA rank 8"):
        pack_layout.layout(decoder.Decoder(CONFIG), methods, settings, rank=4)
    equal = pack_layout.layout(
        decoder.Decoder(CONFIG), methods[:1] * 2, optimizers.OptimizerSettings()
    )
    assert equal.rank == 4
    mixed = pack_layout.layout(decoder.Decoder(CONFIG), methods, settings)
    assert mixed.rank == 8
    mixed.check_member(lora.LoRA(rank=2, alpha=1.0))
    with pytest.raises(ValueError, match="LoRA rank 16 exceeds this pack's padded rank 8"):
        mixed.check_member(lora.LoRA(rank=16))


EIGHT_DEVICES = """
import numpy as np, jax
from tests.train import packed_step_test as t
from ft_scaling.train import partitioning
assert jax.device_count() == 8
mesh, rules = partitioning.make_mesh((2, 2, 2)), partitioning.logical_rules()
for name in sorted(t.CASES):
    deviation = t.compare_case(name, mesh, rules)
    print(name, "max relative deviation: metrics %.1e, state %.1e, %d loose" % (
        deviation.metrics, deviation.state, deviation.loose))
print("OK")
"""


@pytest.mark.slow
def test_packed_runs_equal_solo_runs_on_an_eight_device_mesh():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]
    print(out.stdout)
