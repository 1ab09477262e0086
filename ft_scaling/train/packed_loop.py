"""Continuous batching of runs: K runs of one base model trained together by the packed step.

    pack = PackedTrainer(prepared_runs, slots=K, done=callback)  # runs of one `pack_group`
    pack.train()    # every run trained to its stop step; done(prepared, summary | error) each

Each slot is one run's loop (`loop._Loop`): its own checkpoint store in its MODEL_DIR, data
position, schedule, metrics log, best dev loss and progress line, exactly as when it trains
alone. Only the arithmetic is shared: every step is one call of `packed_step`'s compiled
step on the stacked states of all slots, each with its own batch and learning rate.

    every step      each busy slot's next batch and schedule rate -> one packed step
    LOG_EVERY       of a slot's own steps: its train row and progress line
    EVAL_EVERY      of a slot's own steps, and at its last: dev loss of every slot due, in one
                    batched pass over the dev set; a new best (or SAVE_EVERY) checkpoints that
                    slot, in the solo layout: a packed run's directory is a solo run's
    a run's end     its test split with its best checkpoint (the slots ending at one step in
                    one batched pass), its summary, done(); the slot takes the next queued
                    run in place (`packed_step.refill_slot`: no recompile)
    no run left     the slot idles (learning rate 0, its results unused) until all are done

A killed pack resumes like its runs would alone: each restores its latest checkpoint and
data position (= its step) when its turn comes, and trains on from there. The queue is
longest run first, so the last runs to finish leave few idle slots behind them.

Shared seconds (packed steps, batched evaluations, their inputs and compiling) are divided
evenly among the slots they served, so a study's timing table still sums to its wall time.
"""

import collections
import dataclasses
import functools
import logging
import sys
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ft_scaling.models import decoder
from ft_scaling.train import (
    input_pipeline,
    loop,
    losses,
    pack_layout,
    pack_memory,
    packed_step,
    preemption,
    settings,
    summary,
    timings,
    trainer,
)

log = logging.getLogger(__name__)

Done = Callable[[loop.Prepared, "summary.RunSummary | Exception"], None]


def pack_group(run: settings.Run) -> tuple | None:
    """Equal for set-up runs that can share a pack; None for a run that trains alone.

    A pack shares its frozen params, so its runs start from one base checkpoint; it shares
    the step's shapes and dev/test sets (feature lengths, batch sizes, microbatches, task),
    and `pack_layout.pack_key` (method family, optimizer). A run without a base checkpoint
    has frozen params of its own seed's init, which no other run shares.
    """
    s, spec = run.settings, run.spec
    length = sum(spec.feature_lengths.values())
    # A method that trains every param (FMT) shares no frozen params: any bases pack.
    everything = _trains_everything(trainer._ModelKey(run.model), s.method, length)
    if s.initial_checkpoint_path is None and not everything:
        return None
    return (
        s.model_config,
        None if everything else s.initial_checkpoint_path,
        tuple(sorted(spec.feature_lengths.items())),
        spec.batch_size,
        spec.pack,
        (run.eval_spec.task, run.eval_spec.max_examples),  # the dev and test sets
        (s.loop.eval_batch_size, s.loop.num_microbatches, s.loop.test_split),
        pack_layout.pack_key(s.method, s.optimizer),  # LoRA: any rank (but under Adafactor)
        run.mesh,
        run.rules,
    )


@functools.lru_cache(maxsize=64)
def _trains_everything(model_key, method, sequence_length: int) -> bool:
    params = nn.meta.unbox(trainer.abstract_params(model_key.model, sequence_length))
    return all(jax.tree.leaves(method.trainable_mask(params)))


@dataclasses.dataclass
class _Slot:
    prepared: loop.Prepared
    training: loop._Loop
    batches: object  # the run's train batches from its data position
    batch: dict | None = None  # its latest batch (an idle slot repeats it)
    busy: bool = True

    @property
    def method(self):
        return self.prepared.run.settings.method

    @property
    def run_id(self) -> str:
        return self.prepared.run.settings.model_dir


class RunQueue:
    """The runs a pack takes, in order: a fixed list (this worker's own runs of a group).

    The pack asks `len(queue)` (runs it could take now: sizes the pack, refills idle slots)
    and `take()` (the next, or None). study/claimed_packs.py's queue claims them from a
    shared store instead; `runs` are every run the pack may take (their methods fix its
    layout: LoRA's padded rank)."""

    def __init__(self, runs: Sequence[loop.Prepared]):
        self.runs, self._left = list(runs), collections.deque(runs)

    def __len__(self) -> int:
        return len(self._left)

    def take(self) -> loop.Prepared | None:
        return self._left.popleft() if self._left else None


class PackedTrainer:
    """Trains runs of one pack group, `slots` at a time (module docstring).

    Args:
      runs: set-up runs (`loop.prepared`) with equal `pack_group`s, trained in this order
        (the caller sorts them longest first); or a queue with RunQueue's methods.
      slots: K, the most runs trained at once; fewer when the memory estimate says so
        (`pack_memory.fit`, in the log) or when there are fewer runs.
      done: called once per run with its written summary, or the error that ended it.
    """

    def __init__(self, runs: "Sequence[loop.Prepared] | RunQueue", slots: int, done: Done):
        queue = runs if hasattr(runs, "take") else RunQueue(runs)
        if not queue.runs:
            raise ValueError("a pack needs at least one run")
        groups = {pack_group(p.run) for p in queue.runs}
        if len(groups) != 1 or None in groups:
            raise ValueError(f"runs of {len(groups)} pack groups cannot share a pack")
        first = queue.runs[0].run
        self.queue, self.requested, self.done = queue, slots, done
        self.mesh, self.rules, self.cfg = first.mesh, first.rules, first.settings.loop
        self.eval_spec = first.eval_spec
        methods = [p.run.settings.method for p in queue.runs]
        base_model = decoder.Decoder(first.settings.model_config)
        self.layout = pack_layout.layout(base_model, methods, first.settings.optimizer)
        self.loss = losses.LMLoss(self.layout.model)
        self.batch_sharding = packed_step.stacked_batch_sharding(self.mesh, self.rules)
        self.slots: list[_Slot] = []
        self.frozen = self.state = self.variables = self.eval_one = None

    # --- The loop ---------------------------------------------------------------------------

    def train(self) -> None:
        """Trains every queued run to its stop step (or until SIGTERM: all slots saved)."""
        preempted = preemption.SigtermFlag()
        try:
            self._start()
            while any(s.busy for s in self.slots):
                if preempted.set:
                    return self._preempt()
                self._step()
                self._after_step()
        except BaseException as err:  # the pack is lost: every run in it ends with this error
            for slot in self.slots:
                if slot.busy:
                    self._end(slot, err if isinstance(err, Exception) else None)
            raise
        finally:
            for slot in self.slots:
                slot.training.store.close()

    def _start(self) -> None:
        """Opens the first runs, sizes the pack by memory and compiles its steps."""
        first = self._open_next()
        if first is None:
            return
        self.frozen = first.training.frozen
        state = self.layout.to_slot(first.training.state, first.method)
        run = first.prepared.run
        asked = min(self.requested, 1 + len(self.queue))  # no slot for a run that is not there
        slots, message = pack_memory.fit(asked, self.frozen, state, run)
        if jax.process_index() == 0:
            sys.stderr.write(f"[pack] {message}\n")
        self.slots = [first]
        while len(self.slots) < slots and len(self.queue):
            slot = self._open_next()
            if slot is None:
                break
            slot.training.frozen = self.frozen  # its own copy of the base is freed at once
            self.slots.append(slot)
        if len(self.slots) < slots and jax.process_index() == 0:  # other workers took them
            sys.stderr.write(f"[pack] {len(self.slots)} of the {slots} runs were free to take\n")
        solo = [self.layout.to_slot(s.training.state, s.method) for s in self.slots]
        self.state = packed_step.stack(solo)
        self.variables = self._stacked_variables()
        for slot in self.slots:
            self._share_frozen(slot)
        self.train_fn, self.eval_fn = packed_step.jit_packed_steps(
            self.loss,
            self.layout.optimizer_settings,
            self.mesh,
            self.rules,
            self.state,
            self.frozen,
            self.cfg.num_microbatches,
            self.variables,
        )

    def _stacked_variables(self) -> dict:
        variables = [self.layout.variables(s.method, self.mesh) for s in self.slots]
        return packed_step.stack(variables) if variables[0] else {}

    def _open_next(self) -> _Slot | None:
        """The next queued run that restores, as a slot; runs that cannot are done() failed."""
        while (prepared := self.queue.take()) is not None:
            try:
                training = prepared.open()
            except Exception as err:
                self.done(prepared, err)
                continue
            prepared.start = time.time()  # its wall time counts from here, not its setup
            if training.step >= training.run.stop_step:  # killed after its last checkpoint
                self.done(prepared, self._finish_alone(prepared, training))
                continue
            if training.step and jax.process_index() == 0:
                sys.stderr.write(
                    f"[pack] {prepared.run.settings.model_dir} resumes at step "
                    f"{training.step}/{training.run.total_steps}\n"
                )
            with prepared.timer.phase("input"):
                position = int(training.meta["data_position"])
                batches = input_pipeline.train_batches(training.run.spec, position, prefetch=0)
            return _Slot(prepared, training, batches)
        return None

    @staticmethod
    def _finish_alone(prepared: loop.Prepared, training: loop._Loop):
        """A run restored at its stop step is finished as a solo run finishes (its dev and
        test passes), never stepped: its summary, or its error."""
        try:
            return prepared.finalize(training.finish(None))
        except Exception as err:
            return err
        finally:
            training.store.close()

    def _share_frozen(self, slot: _Slot) -> None:
        """The slot's loop reads the pack's frozen params; its own copy and state are freed."""
        slot.training.frozen, slot.training.state = self.frozen, None

    def _step(self) -> None:
        busy = [s for s in self.slots if s.busy]
        with self._shared("input", busy):
            for slot in busy:
                slot.batch = next(slot.batches)
            batch = self._global([s.batch for s in self.slots])
        rates = np.asarray(
            [s.training.run.schedule(s.training.step) if s.busy else 0.0 for s in self.slots],
            np.float32,
        )
        started = time.perf_counter()
        with self._shared("train", busy):
            self.state, metrics = self.train_fn(
                self.state, self.frozen, batch, rates, self.variables
            )
        first_call = time.perf_counter() - started
        logging_slots = []
        for index, slot in enumerate(self.slots):
            if not slot.busy:
                continue
            training = slot.training
            training.step += 1
            if training.compile_time is None:
                training.compile_time = first_call
            log_every = training.cfg.log_every
            if training.step % log_every == 0 or training.step == training.run.total_steps:
                logging_slots.append(index)
        if logging_slots:
            with self._shared("train", [self.slots[i] for i in logging_slots]):
                metrics = jax.device_get(metrics)  # waits for the step
            for index in logging_slots:
                row = {key: value[index] for key, value in metrics.items()}
                self._guarded(self.slots[index], lambda t, r=row, i=index: t._log(r, rates[i]))

    def _after_step(self) -> None:
        """Evaluations due, checkpoints due, and the end of every run at its stop step."""
        busy = [i for i, s in enumerate(self.slots) if s.busy]
        ending = [i for i in busy if self.slots[i].training.step >= self._stop(i)]
        evaluated = sorted({i for i in busy if self.slots[i].training.eval_due()} | set(ending))
        devs = self._split(self.state.params, "validation", "eval", evaluated) if evaluated else {}
        for index in busy:
            slot, dev = self.slots[index], devs.get(index)
            improved = dev is not None and slot.training.note_dev(dev)
            if index in ending:
                continue
            if improved or slot.training.save_due():
                self._guarded(slot, lambda t, i=index, d=dev: self._save(i, t, d))
        self._finish([i for i in ending if self.slots[i].busy], devs)
        for index, slot in enumerate(self.slots):  # runs that ended (or failed) leave room
            if not slot.busy and len(self.queue):
                self._refill(index)

    def _stop(self, index: int) -> int:
        return self.slots[index].training.run.stop_step

    def _save(self, index: int, training: loop._Loop, dev: dict | None) -> None:
        training.state = self._solo_state(index)
        try:
            training.save(None if dev is None else dev["loss"])
        finally:
            training.state = None

    def _solo_state(self, index: int):
        slot = self.slots[index]
        return self.layout.from_slot(packed_step.take_slot(self.state, index), slot.method)

    def _finish(self, ending: list[int], devs: dict) -> None:
        """Closes the runs that reached their stop step; tests them in one pass; refills."""
        closed, tested, best = {}, [], {}
        for index in ending:
            slot = self.slots[index]
            slot.training.state = self._solo_state(index)
            result = self._guarded(slot, lambda t, i=index: t.close(devs[i]))
            if result is None:
                continue
            closed[index] = result
            if slot.training.tests(result):
                tested.append(index)
                best[index] = self.layout.to_slot(slot.training.best_params(), slot.method)
        if tested:
            params = jax.tree.map(jnp.copy, self.state.params)  # set_slot donates its input
            for index in tested:
                params = packed_step.set_slot(params, index, best[index])
            split = self.cfg.test_split
            tests = self._split(params, split, "test", tested)
            for index in tested:
                closed[index] = loop.with_test(closed[index], tests[index])
        for index, result in closed.items():
            self._end(self.slots[index], result)

    def _end(self, slot: _Slot, outcome) -> None:
        """Records the slot's run as done (summary, or its error) and frees the slot."""
        slot.busy = False
        slot.training.store.close()  # closing twice (train's finally) is harmless
        slot.training.state = None
        if isinstance(outcome, summary.RunSummary):
            outcome = slot.prepared.finalize(outcome)
        if outcome is not None:
            self.done(slot.prepared, outcome)

    def _refill(self, index: int) -> None:
        """The idle slot takes the next queued run, in place (with none left, it stays idle)."""
        new = self._open_next()
        if new is None:
            return
        new.batch = self.slots[index].batch
        self.state, self.variables = packed_step.refill_slot(
            self.layout,
            self.state,
            self.variables,
            index,
            new.training.state,
            new.method,
            self.mesh,
        )
        self._share_frozen(new)
        self.slots[index] = new

    def _guarded(self, slot: _Slot, action):
        """action(slot's loop); an error ends that run only (failed), the pack goes on."""
        try:
            return action(slot.training)
        except Exception as err:  # NaN loss, non-finite params, an unwritable checkpoint
            log.error("run %s failed in its pack: %s", slot.run_id, err)
            self._end(slot, err)  # its slot is refilled after this step
            return None

    def _preempt(self) -> None:
        """SIGTERM: every busy slot saved; its run is done() with status 'preempted'."""
        for index, slot in enumerate(self.slots):
            if not slot.busy:
                continue
            training = slot.training
            self._guarded(slot, lambda t, i=index: self._save(i, t, None))
            if slot.busy:
                self._end(
                    slot,
                    summary.RunSummary(
                        "preempted",
                        training.step,
                        training.run.total_steps,
                        checkpoint_dir=training.store.directory,
                    ),
                )

    # --- Shared work ------------------------------------------------------------------------

    def _split(self, params, split: str, phase: str, slots: list[int]) -> dict[int, dict]:
        """Token-level loss and PPL over a whole split of the `slots`' params, summed on host
        exactly as a solo run sums. One pass over all K slots when at least half are asked
        for; else one pass per slot, on a pack of one (evaluating idle rows costs K times)."""
        if 2 * len(slots) >= len(self.slots):
            return self._split_pass(params, self.variables, self.eval_fn, split, phase, slots)
        if self.eval_one is None:
            one_variables = packed_step.take_slots(self.variables, 0, 1) if self.variables else None
            self.eval_one = packed_step.jit_packed_steps(
                self.loss,
                self.layout.optimizer_settings,
                self.mesh,
                self.rules,
                packed_step.take_slots(self.state, 0, 1),
                self.frozen,
                self.cfg.num_microbatches,
                one_variables,
            )[1]
        metrics = {}
        for index in slots:
            one = packed_step.take_slots(params, index, 1)
            variables = packed_step.take_slots(self.variables, index, 1) if self.variables else {}
            metrics[index] = self._split_pass(
                one, variables, self.eval_one, split, phase, [0], [self.slots[index]]
            )[0]
        return metrics

    def _split_pass(self, params, variables, eval_fn, split, phase, rows, served=None):
        """{row: the split's metrics} of `rows` of a stacked params tree, in one batched pass;
        its seconds shared by the `served` slots (default: the rows' own)."""
        served = [self.slots[i] for i in rows] if served is None else served
        width = packed_step.num_runs(params)
        loss_sum, tokens = np.zeros(width), np.zeros(width)
        with self._shared("input", served):
            batches = input_pipeline.eval_batches(self.eval_spec, split, self.cfg.eval_batch_size)
        for batch in batches:
            with self._shared("input", served):
                stacked = self._global([batch] * width)
            with self._shared(phase, served):
                out = jax.device_get(eval_fn(params, self.frozen, stacked, variables))
            for row in rows:  # float64 sums of float32 values, as the solo loop's float()
                loss_sum[row] += float(out["loss_sum"][row])
                tokens[row] += float(out["target_tokens"][row])
        metrics = {}
        for row in rows:
            if tokens[row] == 0:
                raise ValueError(f"{split} split of {self.eval_spec.task!r} has no target tokens")
            loss = loss_sum[row] / tokens[row]
            metrics[row] = {"loss": loss, "ppl": float(np.exp(loss)), "target_tokens": tokens[row]}
        return metrics

    def _global(self, batches: list[dict]) -> dict:
        """Stacked [K, B, ...] device arrays of the slots' host batches; each process keeps
        its block of B rows (the batch dim is the sharded one, not K)."""
        stacked = {key: np.stack([b[key] for b in batches]) for key in batches[0]}
        if jax.process_count() == 1:
            return {k: jax.device_put(v, self.batch_sharding) for k, v in stacked.items()}
        out = {}
        for key, value in stacked.items():
            rows = value.shape[1] // jax.process_count()
            local = value[:, jax.process_index() * rows : (jax.process_index() + 1) * rows]
            out[key] = jax.make_array_from_process_local_data(
                self.batch_sharding, local, value.shape
            )
        return out

    def _shared(self, phase: str, served: list[_Slot]):
        return _SharedPhase(phase, [s.prepared.timer for s in served])


class _SharedPhase:
    """Times a block of shared work as `phase` (compiling inside it as compile) and gives
    each slot it served an equal share."""

    def __init__(self, phase: str, timers: list[timings.PhaseTimer]):
        self.phase, self.timers = phase, timers
        self.timer = timings.PhaseTimer()

    def __enter__(self):
        self._block = self.timer.phase(self.phase)
        self._block.__enter__()
        return self

    def __exit__(self, *exc):
        self._block.__exit__(*exc)
        for name, seconds in self.timer.seconds().items():
            for timer in self.timers:
                timer.add(name, seconds / max(1, len(self.timers)))
        return False
