"""Where a run's wall time goes: seconds per phase (`summary.TIMING_PHASES`), exclusively.

    timer = PhaseTimer()
    with timer.phase("setup"):
        ...
        with timer.phase("input"):   # nested: these seconds count for input, not for setup
            ...
    timer.seconds()                  # {'setup': 1.2, 'input': 0.3, ...}, every phase, >= 0

A phase entered inside another pauses the outer one, so no second is counted twice and the
phases sum to at most the time the timer ran. JAX dispatches asynchronously: a phase measures
host time, so device work lands in the phase that waits for it. The loop syncs the train state
before it leaves the train phase (`sync`), which is where its device time is counted.

Compilation is counted as `compile` wherever it happens (the first train step, the first eval
batch, a method's init in setup): JAX reports each trace, lowering and XLA compile with its
duration (`jax.monitoring`), and that time moves from the open phase to `compile` (at most the
time that phase has run). A run whose steps this process compiled before shows none.
"""

import contextlib
import threading
import time

import jax
from jax import monitoring

from ft_scaling.train import summary

# JAX's duration events of a jit cache miss, in seconds: tracing, lowering, XLA compilation.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_ACTIVE: list["PhaseTimer"] = []  # timers with an open phase, innermost last (one thread)
_LISTENING = threading.Lock()
_listener_registered = False


def _on_duration(event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS and _ACTIVE and threading.current_thread() is _ACTIVE[-1].thread:
        _ACTIVE[-1].compiled(duration)


def _listen() -> None:
    global _listener_registered
    with _LISTENING:
        if not _listener_registered:  # once per process: JAX keeps listeners for good
            monitoring.register_event_duration_secs_listener(_on_duration)
            _listener_registered = True


class PhaseTimer:
    """Exclusive seconds per phase of one run (module docstring)."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._seconds = dict.fromkeys(summary.TIMING_PHASES, 0.0)
        self._open: list[list] = []  # [phase, started] of the phases entered, innermost last
        self.thread = threading.current_thread()
        _listen()

    @contextlib.contextmanager
    def phase(self, name: str):
        """Counts the time inside the block for `name`, less that of phases nested in it."""
        if name not in self._seconds:
            raise ValueError(f"unknown timing phase {name!r}; known: {summary.TIMING_PHASES}")
        now = self._clock()
        if self._open:  # pause the enclosing phase
            outer = self._open[-1]
            self._seconds[outer[0]] += now - outer[1]
        else:
            _ACTIVE.append(self)
        self._open.append([name, now])
        try:
            yield
        finally:
            now = self._clock()
            _, started = self._open.pop()
            self._seconds[name] += now - started
            if self._open:  # resume the enclosing phase
                self._open[-1][1] = now
            else:
                _ACTIVE.remove(self)

    def compiled(self, seconds: float) -> None:
        """Moves `seconds` of compilation, just ended, from the open phase to `compile`."""
        if not self._open:
            return
        current = self._open[-1]
        moved = min(max(float(seconds), 0.0), self._clock() - current[1])
        current[1] += moved  # the open phase now starts later by what compiling took
        self._seconds["compile"] += moved

    def add(self, name: str, seconds: float) -> None:
        """Counts `seconds` measured elsewhere for `name` (e.g. a packed step's share)."""
        if name not in self._seconds:
            raise ValueError(f"unknown timing phase {name!r}; known: {summary.TIMING_PHASES}")
        self._seconds[name] += max(float(seconds), 0.0)

    def seconds(self) -> dict[str, float]:
        """Phase -> seconds so far (phases still open count up to their last pause)."""
        return dict(self._seconds)


def sync(tree) -> None:
    """Waits for the device work behind `tree` (the train state), so the phase that calls it
    is charged with that work rather than whichever phase reads the values next."""
    jax.block_until_ready(tree)
