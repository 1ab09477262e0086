"""A classification study: LM stages, then methods x examples per class x seeds, resumably.

    OUT/pretrain    the pretraining stage (LM trainer)  -- or PRETRAINED_CHECKPOINT, reused
    OUT/adaptive    the adaptive stage from it          -- when the study has one
    OUT/results.sqlite  one row per finished run (study/store.py), written atomically; or the
                        database of --store=postgresql://... (OUT/store.json points to it)
    OUT/report.md, OUT/results.csv   the comparison table (report.py)

Plan, then execute: `run_ids` lists the runs, and each stage and run goes through the one run
executor (study/execute.py), which records its row or, for a run, its failure with the
traceback, and the study goes on (a failed stage stops it: the runs need it). A rerun skips
finished rows and finished stages (a killed stage resumes from its checkpoint). The study's
configuration is fingerprinted in OUT: rerunning OUT with another configuration is refused,
since its rows would silently mix two studies. Runs are ordered by method so that runs sharing
a compiled step follow each other.
"""

import dataclasses
import os
import sys
import time

import jax

import gin
from ft_scaling import files
from ft_scaling.classify import adaptive as adaptive_lib
from ft_scaling.classify import report, run, tasks
from ft_scaling.study import execute
from ft_scaling.study import store as store_lib
from ft_scaling.train import checkpoints


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ClassifyStudy:
    """Attributes:
    name: the study's name (report title).
    settings: shared run settings (task, pattern, model, lengths, evaluation).
    methods: the methods compared (rows of the report).
    per_class: labelled examples per class (columns of the report), nested subsets.
    seeds: subset/initialisation seeds; the report gives mean ± std over them.
    pretrain: the pretraining stage, or None to use `pretrained_checkpoint` (or scratch).
    pretrain_task: its seqio LM task.
    adaptive: the adaptive stage (needed by methods with base 'adaptive'), or None.
    pretrained_checkpoint: an existing pretrained MODEL_DIR to start from instead.
    """

    name: str
    settings: run.RunSettings
    methods: tuple
    per_class: tuple = (16, 32, 64, 128)
    seeds: tuple = (0, 1, 2)
    pretrain: adaptive_lib.LMStage | None = None
    pretrain_task: str = "debian_l10n_pretrain_en_de"
    adaptive: adaptive_lib.LMStage | None = None
    pretrained_checkpoint: str | None = None

    def __post_init__(self):
        names = [m.name for m in self.methods]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"ClassifyStudy.methods need distinct names, got {names}")
        if self.pretrain is not None and self.pretrained_checkpoint:
            raise ValueError("set ClassifyStudy.pretrain or pretrained_checkpoint, not both")
        if self.adaptive is None and any(m.base == "adaptive" for m in self.methods):
            raise ValueError("a method has base 'adaptive' but ClassifyStudy.adaptive is None")


def _fingerprint(study: ClassifyStudy) -> dict:
    """What every row depends on; methods, sizes and seeds may grow between reruns."""
    fields = ("settings", "pretrain", "pretrain_task", "adaptive", "pretrained_checkpoint")
    return {name: repr(getattr(study, name)) for name in fields}


def _check_finished(row: dict, spec) -> None:
    if row.get("method_config") != repr(spec):
        raise checkpoints.CheckpointError(
            f"run {row['run_id']} finished with method {row.get('method_config')}, the study now "
            f"says {spec!r}. Use a new --out directory, or rename the method."
        )


def run_stages(study: ClassifyStudy, out_dir: str, store) -> dict:
    """Runs (or skips) the LM stages; returns the bases {'pretrained': dir, 'adaptive': dir}."""
    config = study.settings.model_config
    pretrained = study.pretrained_checkpoint
    if study.pretrain is not None:
        pretrained = os.path.join(out_dir, "pretrain")
        _stage(store, "pretrain", study.pretrain, pretrained, study.pretrain_task, config, None)
    bases = {"pretrained": pretrained}
    if study.adaptive is not None:
        task = tasks.get_task(study.settings.task)
        lm_task = adaptive_lib.register_adaptive_task(task, study.settings.vocabulary)
        bases["adaptive"] = os.path.join(out_dir, "adaptive")
        _stage(store, "adaptive", study.adaptive, bases["adaptive"], lm_task, config, pretrained)
    return bases


def _stage(store, name, stage, model_dir, lm_task, config, initial) -> None:
    """Runs (or resumes, or finds finished) one LM stage and records it; a failure propagates."""
    sys.stderr.write(f"[classify] stage {name}: {stage.steps} LM steps in {model_dir}\n")

    def train() -> execute.Record:
        summary = adaptive_lib.run_stage(stage, model_dir, lm_task, config, initial)
        execute.check_status(summary, f"stage {name}")
        row = {
            "stage": name,
            "steps": summary.step,
            "dev_loss": summary.final_dev_loss,
            "wall_time": summary.wall_time_s,
            "run_dir": model_dir,
        }
        return execute.Record("finished", row)

    execute.execute(store, f"stage_{name}", "stage", train, failed_row=None)


def run_ids(study: ClassifyStudy, methods: list | None = None) -> list[tuple]:
    """(run_id, method spec, per_class, seed) of every run, ordered by method."""
    chosen = [m for m in study.methods if methods is None or m.name in methods]
    if methods is not None:
        unknown = sorted(set(methods) - {m.name for m in study.methods})
        if unknown:
            raise ValueError(
                f"--methods {unknown} not in the study; allowed: {[m.name for m in study.methods]}"
            )
    return [
        (f"{spec.name}_k{per_class}_seed{seed}", spec, per_class, seed)
        for spec in chosen
        for per_class in study.per_class
        for seed in study.seeds
    ]


def run_study(
    study: ClassifyStudy, out_dir: str, methods: list | None = None, store_url: str | None = None
) -> dict:
    """Runs what is not finished yet and writes the report; returns run counts.

    Args:
      study, out_dir: the study and its directory.
      methods: run only these methods (names); default all.
      store_url: a SQLAlchemy URL (postgresql://...) for the rows instead of
        OUT/results.sqlite; OUT/store.json then points the report to it.

    Raises:
      store.StoreError: the database cannot be reached or holds another study.
    """
    files.check_fingerprint(out_dir, _fingerprint(study), write=jax.process_index() == 0)
    identity = {"kind": "classify", "name": study.name, **({"out": out_dir} if store_url else {})}
    location = store_url or os.path.join(out_dir, store_lib.DEFAULT_FILE)
    store = store_lib.ResultsStore(location, identity)
    if store_url:
        store_lib.point_to(out_dir, store_url)
    start = time.time()
    bases = run_stages(study, out_dir, store)
    runs = run_ids(study, methods)
    counts = {"finished": 0, "failed": 0, "skipped": 0, "total": len(runs)}
    finished = {row["run_id"]: row for row in store.rows("classify", "finished")}
    for position, (run_id, spec, per_class, seed) in enumerate(runs, start=1):
        if run_id in finished:
            _check_finished(finished[run_id], spec)
            counts["skipped"] += 1
            continue
        sys.stderr.write(f"[classify] run {position}/{len(runs)} {run_id}\n")
        record = _execute(store, run_id, spec, study.settings, per_class, seed, bases)
        counts[record.status] += 1
    counts["wall_time_s"] = round(time.time() - start, 1)
    store.close()
    report.write(out_dir, study)
    return counts


def _execute(store, run_id, spec, settings, per_class, seed, bases) -> execute.Record:
    """One classification run (classify/run.py) through the run executor."""

    def train() -> execute.Record:
        row = run.run(spec, settings, per_class, seed, bases)
        return execute.Record("finished", {**row, "method_config": repr(spec)})

    failed = {"method": spec.name, "per_class": per_class, "seed": seed}
    return execute.execute(store, run_id, "classify", train, failed)
