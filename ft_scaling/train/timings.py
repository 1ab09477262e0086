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
"""

import contextlib
import time

import jax

from ft_scaling.train import summary


class PhaseTimer:
    """Exclusive seconds per phase of one run (module docstring)."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._seconds = dict.fromkeys(summary.TIMING_PHASES, 0.0)
        self._open: list[list] = []  # [phase, started] of the phases entered, innermost last

    @contextlib.contextmanager
    def phase(self, name: str):
        """Counts the time inside the block for `name`, less that of phases nested in it."""
        if name not in self._seconds:
            raise ValueError(f"unknown timing phase {name!r}; known: {summary.TIMING_PHASES}")
        now = self._clock()
        if self._open:  # pause the enclosing phase
            outer = self._open[-1]
            self._seconds[outer[0]] += now - outer[1]
        self._open.append([name, now])
        try:
            yield
        finally:
            now = self._clock()
            _, started = self._open.pop()
            self._seconds[name] += now - started
            if self._open:  # resume the enclosing phase
                self._open[-1][1] = now

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
