"""What a training run reports: `loop.train` returns a `RunSummary`; MODEL_DIR/summary.json is it.

    status        'finished' | 'paused' (budget fraction reached) | 'preempted' (SIGTERM)
    step          steps trained so far; total_steps: the run's schedule length
    dev           final (last evaluation) and best (model selection) dev loss and PPL
    test          loss/PPL/tokens of the best checkpoint on the test split (finished runs only)
    generation    BLEU/chrF/ROUGE-L of decoded test examples, when an orchestrator asks for them
    sizes         trainable params (the method's mask) and model params (the base decoder)
    time          wall and first-step (compile) seconds
    timings       where the wall time went: seconds per phase (`TIMING_PHASES`, below); None in
                  a summary.json written before they were recorded

Timings (`timings`, filled by `train/timings.PhaseTimer`; every loop that returns a RunSummary
fills them, the packed loop per run). Phases are exclusive (a second is counted in one phase
at most), so each is >= 0 and their sum is <= wall_time_s; the rest is unattributed (summary
and config writes, Python between phases):

    setup       settings and input specs, state restore or init (base checkpoint read), step
                lookup, metrics writer, fingerprint and operative config
    compile     the first train step and the first eval batch of this call, synced: tracing
                and XLA compilation unless this process compiled them already
    input       producing batches: the train pipeline built and read, eval batches built (or
                found cached), batches put on devices
    train       train steps: dispatch, plus waiting for the device where the loop syncs (log
                steps, before an eval or a save, the end); async steps overlap `input`
    eval        dev evaluations
    checkpoint  checkpoint writes, and the best checkpoint's restore for the test split
    test        the test split's evaluation

Results rows carry them as `<phase>_time` columns (`timing_columns`), beside `wall_time`.

Every orchestrator (study, search, classify study) reads these fields by name, never a dict key.
"""

import dataclasses
import math

from ft_scaling import files

STATUSES = ("finished", "paused", "preempted")
TIMING_PHASES = ("setup", "compile", "input", "train", "eval", "checkpoint", "test")


@dataclasses.dataclass(frozen=True)
class RunSummary:
    status: str
    step: int
    total_steps: int
    final_dev_loss: float | None = None
    final_dev_ppl: float | None = None
    best_dev_loss: float | None = None
    best_dev_ppl: float | None = None
    best_step: int | None = None
    test_loss: float | None = None
    test_ppl: float | None = None
    test_tokens: float | None = None
    bleu: float | None = None
    chrf: float | None = None
    rouge_l: float | None = None
    trainable_params: int | None = None
    model_params: int | None = None
    wall_time_s: float | None = None
    compile_time_s: float | None = None
    checkpoint_dir: str | None = None
    timings: dict[str, float] | None = None  # phase -> seconds (module docstring)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"RunSummary.status={self.status!r}; allowed: {STATUSES}")
        unknown = sorted(set(self.timings or ()) - set(TIMING_PHASES))
        if unknown:
            raise ValueError(f"RunSummary.timings has phases {unknown}; known: {TIMING_PHASES}")

    def timing_columns(self) -> dict[str, float | None]:
        """The results row's `<phase>_time` columns (None for phases a summary lacks)."""
        timings = self.timings or {}
        return {f"{phase}_time": timings.get(phase) for phase in TIMING_PHASES}

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def replace(self, **changes) -> "RunSummary":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "RunSummary":
        """From summary.json; keys this version does not know are ignored (older/newer files)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})

    def write(self, model_dir) -> None:
        files.atomic_write_json(files.path(model_dir) / SUMMARY_FILE, self.to_json())


SUMMARY_FILE = "summary.json"


def read(model_dir) -> RunSummary | None:
    """The summary in MODEL_DIR, or None if the run has not written one yet."""
    location = files.path(model_dir) / SUMMARY_FILE
    if not location.exists():
        return None
    return RunSummary.from_json(files.read_json(location))


def ppl(loss: float | None) -> float | None:
    return None if loss is None else math.exp(loss)
