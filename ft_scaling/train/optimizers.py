"""Learning-rate schedules and optimizers (the run gins choose them through train/loop.py).

The paper pretrains and finetunes with Adafactor and cosine decay (PAPER.md §1, §3): pretraining
decays 0.01 -> 0.001; finetuning reuses the schedule with a per-method peak rate.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("constant", "rsqrt", "cosine")
OPTIMIZERS = ("adafactor", "adamw", "sgd")


def schedule(
    peak_value: float,
    total_steps: int,
    kind: str = "cosine",
    warmup_steps: int = 0,
    final_fraction: float = 0.1,
) -> optax.Schedule:
    """A warmup followed by `kind` decay.

    Args:
      peak_value: learning rate after warmup.
      total_steps: steps of this run (cosine reaches `final_fraction * peak_value` there).
      kind: 'constant', 'rsqrt' (peak * sqrt(warmup / step) after warmup) or 'cosine'.
      warmup_steps: linear warmup from 0.
      final_fraction: cosine's end value relative to the peak (0.1: the paper's 0.01 -> 0.001).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule kind {kind!r}; allowed: {SCHEDULES}")
    if total_steps <= 0 or warmup_steps < 0:
        raise ValueError(f"total_steps={total_steps} must be > 0, warmup_steps={warmup_steps} >= 0")
    warmup = optax.linear_schedule(0.0, peak_value, max(warmup_steps, 1))
    decay_steps = max(total_steps - warmup_steps, 1)
    if kind == "constant":
        after = optax.constant_schedule(peak_value)
    elif kind == "rsqrt":
        start = max(warmup_steps, 1)
        after = lambda step: peak_value * (start / (step + start)) ** 0.5
    else:
        after = optax.cosine_decay_schedule(peak_value, decay_steps, alpha=final_fraction)
    if warmup_steps == 0:
        return after
    return optax.join_schedules([warmup, after], [warmup_steps])


class RateTable:
    """A schedule's rate at every step of a run, computed once as float32 numpy.

    The loop asks for one rate per step; evaluating an optax schedule eagerly dispatches device
    ops whose result the host waits for, behind the step in flight, so every step would stall
    the host until the previous step finished (13 s of a smoke study's packed steps).
    """

    def __init__(self, schedule: optax.Schedule, total_steps: int):
        self.schedule = schedule
        steps = jnp.arange(total_steps + 1)  # jnp: a warmup join's unused branch may divide by 0
        rates = np.asarray(jax.device_get(schedule(steps)), np.float32)
        self.rates = np.broadcast_to(rates, steps.shape)  # a constant schedule gives a scalar

    def __call__(self, step: int) -> np.float32:
        if 0 <= step < len(self.rates):
            return self.rates[step]
        return np.float32(self.schedule(step))  # past the end (never trained there): exact


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer of a run, hashable: part of the compiled step's cache key.

    Runs with equal settings share one compiled step whatever their peak rate or schedule
    (the rate is an argument of the step, see `optimizer`).
    """

    kind: str = "adafactor"
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    b1: float = 0.9
    b2: float = 0.999

    def __post_init__(self):
        if self.kind not in OPTIMIZERS:
            raise ValueError(f"optimizer kind {self.kind!r}; allowed: {OPTIMIZERS}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.clip_norm is not None and self.clip_norm < 0:
            raise ValueError(f"clip_norm={self.clip_norm} must be > 0, or 0/None for no clipping")

    def build(self) -> optax.GradientTransformation:
        return optimizer(self.kind, self.weight_decay, self.clip_norm, self.b1, self.b2)


def optimizer(
    kind: str = "adafactor",
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
) -> optax.GradientTransformation:
    """The optimizer at unit learning rate; the train step multiplies its update by the rate.

    Passing the scheduled rate into the step (instead of closing over a schedule) lets every run
    with the same model, method and optimizer reuse one compiled step, whatever its length or
    peak rate: a study of hundreds of short runs would otherwise spend most of its time
    compiling. This is exact because each optimizer here ends in a multiplication by the rate.
    Adafactor runs with relative step size off (`learning_rate` is the actual step size, as in
    the paper's recipe), factored second moments and no momentum.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer kind {kind!r}; allowed: {OPTIMIZERS}")
    if kind == "adafactor":
        core = optax.adafactor(1.0, multiply_by_parameter_scale=False)
    elif kind == "adamw":
        core = optax.adamw(1.0, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        core = optax.sgd(1.0)
    if clip_norm:
        return optax.chain(optax.clip_by_global_norm(clip_norm), core)
    return core
