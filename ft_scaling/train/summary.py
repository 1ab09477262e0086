"""What a training run reports: `loop.train` returns a `RunSummary`; MODEL_DIR/summary.json is it.

    status        'finished' | 'paused' (budget fraction reached) | 'preempted' (SIGTERM)
    step          steps trained so far; total_steps: the run's schedule length
    dev           final (last evaluation) and best (model selection) dev loss and PPL
    test          loss/PPL/tokens of the best checkpoint on the test split (finished runs only)
    generation    BLEU/chrF/ROUGE-L of decoded test examples, when an orchestrator asks for them
    sizes         trainable params (the method's mask) and model params (the base decoder)
    time          wall and first-step (compile) seconds

Every orchestrator (study, search, classify study) reads these fields by name, never a dict key.
"""

import dataclasses
import math

from ft_scaling import files

STATUSES = ("finished", "paused", "preempted")


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

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"RunSummary.status={self.status!r}; allowed: {STATUSES}")

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
