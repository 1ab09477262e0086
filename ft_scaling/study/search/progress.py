"""Progress lines of a search on stderr: trial i/N, its config, its metric, and an ETA.

The ETA is a cost model fitted as the search goes: an early phase costs what the early phases
trained so far cost on average; a continuation costs overhead + steps x seconds per step, a
line fitted to every phase measured so far (early phases without their compile time, since a
continuation reuses the programs its early phase compiled).
"""

import contextlib
import sys
import time

import numpy as np


def _format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe(values: dict) -> str:
    """'BATCH_SIZE=16 LEARNING_RATE=0.0123' for a sampled config."""
    return " ".join(f"{key}={_format_value(values[key])}" for key in sorted(values))


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Writes one line per trial event; keeps the timings the ETA needs.

    Args:
      name: the search's name; trials: its number of trials.
      continuations: how many trials will continue to the full budget.
      stream: where lines go (stderr by default).
    """

    def __init__(self, name: str, trials: int, continuations: int, stream=None):
        self._name, self._trials, self._continuations = name, trials, continuations
        self._stream = stream or sys.stderr
        self._early_times: list[float] = []
        self._phases: list[tuple[int, float]] = []  # (steps, seconds) of each phase trained
        self._steps_left: list[int] = []  # full-budget steps left after each early phase
        self._started = time.time()
        self._position, self._continued = 0, 0
        self._width = 1  # trials trained at once (packs.py): each is charged 1/width of the time

    def say(self, message: str) -> None:
        self._stream.write(f"[search {self._name}] {message}\n")
        self._stream.flush()

    def trial_started(self, position: int, number: int, values: dict) -> None:
        self._started, self._position = time.time(), position
        self.say(f"trial {position}/{self._trials} (#{number}) {describe(values)}")

    def trial_done(self, number: int, row: dict, metric: str, trained: bool) -> None:
        self._steps_left.append(row["total_steps"] - row["early_step"])
        if trained:
            seconds = (time.time() - self._started) / self._width
            self._early_times.append(seconds)
            compile_s = row.get("early_compile_time") or 0.0
            self._phases.append((row["early_step"], max(seconds - compile_s, 0.0)))
        how = "" if trained else " (recorded before; not trained again)"
        pruned = ", pruned" if row.get("pruned") else ""
        self.say(
            f"trial #{number}: early {metric} {row[f'early_{metric}']:.4f} at step "
            f"{row['early_step']}/{row['total_steps']}{pruned}{how} (ETA {self.eta()})"
        )

    @contextlib.contextmanager
    def packed(self, width: int):
        """Phases ended inside share the device `width` ways (a pack of that many trials),
        so each is charged its share of the time since its pack started."""
        self._width = max(width, 1)
        try:
            yield
        finally:
            self._width = 1

    def trial_failed(self, number: int, message: str) -> None:
        self.say(f"trial #{number} failed: {message.splitlines()[0]}")

    def full_started(self, position: int, total: int, row: dict) -> None:
        self._started, self._continued = time.time(), position - 1
        self._continuations = total
        if not self._steps_left:  # a resumed search: no early phase ran in this process
            self._steps_left.append(row["total_steps"] - row["early_step"])
        self.say(
            f"full budget {position}/{total}: trial #{row['trials'][0]} from step "
            f"{row['early_step']} to {row['total_steps']}"
        )

    def full_done(self, row: dict, metric: str) -> None:
        steps = row["total_steps"] - row["early_step"]
        self._phases.append((steps, (time.time() - self._started) / self._width))
        self._continued += 1
        self.say(
            f"trial #{row['trials'][0]}: final {metric} {row[f'final_{metric}']:.4f}, "
            f"test loss {row['test_loss']:.4f} (ETA {self.eta()})"
        )

    def _phase_cost(self) -> tuple[float, float]:
        """(overhead seconds, seconds per step): least squares over the phases, both >= 0."""
        steps = np.array([p[0] for p in self._phases], np.float64)
        seconds = np.array([p[1] for p in self._phases], np.float64)
        spread = np.var(steps)
        per_step = np.cov(steps, seconds, bias=True)[0, 1] / spread if spread > 0 else 0.0
        per_step = max(float(per_step), 0.0)
        if per_step == 0.0:  # one step count seen: setup dominates phases this short
            return float(np.mean(seconds)), 0.0
        return max(float(np.mean(seconds) - per_step * np.mean(steps)), 0.0), per_step

    def eta(self) -> str:
        """Time left, as '3m05s' ('?' before anything was measured)."""
        if not self._phases or not self._steps_left:
            return "?"
        overhead, per_step = self._phase_cost()
        early_left = max(self._trials - self._position, 0) if self._continued == 0 else 0
        mean_early = sum(self._early_times) / max(len(self._early_times), 1)
        mean_left = sum(self._steps_left) / len(self._steps_left)
        continuations_left = max(self._continuations - self._continued, 0)
        return format_seconds(
            early_left * mean_early + continuations_left * (overhead + mean_left * per_step)
        )
