"""The micro_pack study (tests/study/micro_pack.gin) for the packed-run tests: its base model,
its runs in-process, and what a packed study must equal of a solo one.

    python -m tests.study.micro_pack base DIR             pretrains the base model into DIR
    python -m tests.study.micro_pack study BASE OUT K [BINDING ...]
                                                          the study (pack_runs=K) into OUT
    python -m tests.study.micro_pack pair BASE SOLO PACKED [BINDING ...]
                                                          the study solo into SOLO, then
                                                          packed (pack_runs=4) into PACKED
    rows(OUT) -> {config_hash: row}                       its finished finetuning rows
    compare(reference, other, rtol) -> [difference]       rows and logs, run by run
"""

import contextlib
import io
import json
import math
import os
import sys

from ft_scaling.config import flags
from ft_scaling.study import runner, store, sweep
from ft_scaling.train import metrics_io

GIN = "tests/study/micro_pack.gin"
# 10 steps of tiny_0 on the pretraining text: every run of every study starts from it.
BASE_FILES = ["t5x_configs/models/tiny_0.gin", "t5x_configs/runs/pretrain.gin"]
BASE_BINDINGS = [
    "MIXTURE_OR_TASK_NAME = 'debian_l10n_pretrain_en_de'", "TRAIN_STEPS = 10",
    "TASK_FEATURE_LENGTHS = {'targets': 32}", "BATCH_SIZE = 8", "MAX_EPOCHS = None",
    "EVAL_EVERY = 0", "SAVE_EVERY = 10", "LOG_EVERY = 10", "train.eval_examples = 16",
]  # fmt: skip
# The LoRA grids of micro_pack.gin (one pack group; `methods_binding` names grids).
LORA = ("lora", "lora_lr")
PACK_RUNS = 4


def pretrain(model_dir: str) -> str:
    """Pretrains the base model into `model_dir`; returns it."""
    flags.parse_gin(BASE_FILES, [*BASE_BINDINGS, f"MODEL_DIR={model_dir!r}"])
    from ft_scaling.train import loop

    result = loop.train()
    if not result.finished:
        raise RuntimeError(f"pretraining the base model stopped: {result.status}")
    return model_dir


def methods_binding(names) -> str:
    """A binding that restricts the study to these MethodGrids of micro_pack.gin."""
    grids = ", ".join(f"@{name}/MethodGrid()" for name in names)
    return f"Study.methods = [{grids}]"


def study_bindings(base: str, pack_runs: int, extra=()) -> list[str]:
    return [f"BASE={base!r}", f"Study.pack_runs={pack_runs}", *extra]


def run(base: str, out: str, pack_runs: int, extra=()) -> tuple[dict, str]:
    """The study trained in this process: (its counts, what it wrote to stderr)."""
    flags.parse_gin([GIN], study_bindings(base, pack_runs, extra))
    study = sweep.Study()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        counts = runner.run_study(study, out)
    return counts, err.getvalue()


def rows(out: str) -> dict[str, dict]:
    """config_hash -> the finished finetuning row (each run recorded once)."""
    found = {}
    for results in store.open_all(out):
        for row in results.rows(kind="finetune", status="finished"):
            if row["config_hash"] in found:
                raise AssertionError(f"run {row['config_hash']} was recorded twice")
            found[row["config_hash"]] = row
        results.close()
    return found


def run_log(row: dict) -> dict[str, list[dict]]:
    """split -> the run's metrics rows of that split, in step order ('train', 'validation')."""
    log = {}
    for entry in metrics_io.read_jsonl(os.path.join(row["run_dir"], "metrics.jsonl")):
        log.setdefault(entry["split"], []).append(entry)
    return log


def best_step(row: dict) -> int | None:
    with open(os.path.join(row["run_dir"], "summary.json")) as f:
        return json.load(f)["best_step"]


ROW_LOSSES = ("dev_loss", "test_loss", "test_ppl")
LOG_VALUES = {"train": ("loss", "grad_norm", "learning_rate"), "validation": ("loss", "ppl")}


def compare(reference: dict, other: dict, rtol: float) -> list[str]:
    """What differs between two studies' rows (`rows`), as lines naming run and value: the
    set of runs; per run its steps and best step (exact), ROW_LOSSES (rtol), and in its
    metrics log the steps of every train and dev row (exact) and LOG_VALUES (rtol)."""
    if set(reference) != set(other):
        return [f"runs differ: only in reference {sorted(set(reference) - set(other))}, "
                f"only in the other {sorted(set(other) - set(reference))}"]  # fmt: skip
    out = []
    for run_id, want in sorted(reference.items()):
        got, name = other[run_id], describe(want)
        for key in ("steps", "finetune_examples", "seed", "pet_size", "method"):
            if got[key] != want[key]:
                out.append(f"{name}: {key} {got[key]} != {want[key]}")
        if best_step(got) != best_step(want):
            out.append(f"{name}: best step {best_step(got)} != {best_step(want)}")
        for key in ROW_LOSSES:
            if not _close(got[key], want[key], rtol):
                out.append(f"{name}: {key} {got[key]!r} != {want[key]!r}")
        got_log, want_log = run_log(got), run_log(want)
        for split, keys in LOG_VALUES.items():
            mine, theirs = got_log.get(split, []), want_log.get(split, [])
            steps = [r["step"] for r in mine], [r["step"] for r in theirs]
            if steps[0] != steps[1]:
                out.append(f"{name}: {split} rows at steps {steps[0]} != {steps[1]}")
                continue
            for a, b in zip(mine, theirs, strict=True):
                for key in keys:
                    if not _close(a[key], b[key], rtol):
                        out.append(f"{name}: {split} {key} at step {a['step']}: "
                                   f"{a[key]!r} != {b[key]!r}")  # fmt: skip
    return out


def _close(a, b, rtol: float) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def describe(row: dict) -> str:
    size = "" if row.get("pet_size") is None else f"[{row['pet_size']}]"
    return (
        f"{row['method']}{size} D_f={row['finetune_examples']} seed={row['seed']} "
        f"({row['config_hash']})"
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["base"] and len(argv) == 2:
        pretrain(argv[1])
        return 0
    if argv[:1] == ["study"] and len(argv) >= 4:
        base, out, pack_runs, *extra = argv[1:]
        counts, err = run(base, out, int(pack_runs), extra)
        sys.stderr.write(err)
        print(f"pack_runs={pack_runs}: {counts}", file=sys.stderr)
        return 0 if counts["failed"] == 0 else 1
    if argv[:1] == ["pair"] and len(argv) >= 4:
        base, solo, packed, *extra = argv[1:]
        for out, pack_runs in ((solo, 1), (packed, PACK_RUNS)):
            counts, err = run(base, out, pack_runs, extra)
            sys.stderr.write(err)
            print(f"pack_runs={pack_runs}: {counts}", file=sys.stderr)
            if counts["failed"]:
                return 1
        return 0
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
