"""A scaling study as data, and its expansion into runs.

    Study(task, base models, methods with their D_f grids and PET sizes, seeds, recipes)
      -> pretraining runs   one per base model (its intermediate checkpoints give the
                            pretraining-data axis, as in the paper, PAPER.md §1)
      -> finetuning runs    the paper's three axes (§2), each run once:
           model size       every base model (final checkpoint) x every method at its default
                            PET size x D_f x seed
           pretraining data the default model's intermediate checkpoints x methods x D_f x seed
           PET size         the default model x each PET size of prompt/LoRA x D_f x seed

A run is a list of gin files plus bindings; its id is a hash of them (the operative config), so
the same run expanded twice has the same id and a rerun study skips it.
"""

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence

import gin
from ft_scaling.study import generation

PRETRAIN_GIN = "t5x_configs/runs/pretrain.gin"
FINETUNE_GIN = "t5x_configs/runs/finetune.gin"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BaseModel:
    """A pretrained LM of the study.

    Attributes:
      name: short name, e.g. 'tiny_2' or '1b'.
      model_gin: the size gin (t5x_configs/models/<size>.gin).
      pretrain_steps: steps of its pretraining run (0 when `checkpoint` is given).
      pretrain_checkpoints: intermediate steps kept as the pretraining-data axis.
      checkpoint: an existing pretrained MODEL_DIR to finetune from instead of pretraining.
      model_params: its parameter count, filled in by the study from the model gin.
    """

    name: str
    model_gin: str
    pretrain_steps: int = 0
    pretrain_checkpoints: tuple[int, ...] = ()
    checkpoint: str | None = None


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MethodGrid:
    """One finetuning method of the study and its grids.

    Attributes:
      name: 'fmt', 'prompt', 'lora', ... (the results' `method` column; by convention the
        methods.registry name).
      method_gin: the method's gin file, `registry.gin_file(name)` (gin/methods/full.gin for
        'fmt': the file is named for its module, methods/full.py).
      finetune_examples: the D_f grid.
      size_macro: the PET-size macro ('PROMPT_LENGTH', 'LORA_RANK'), None for FMT.
      default_size: the PET size of the model-size and pretraining-data axes.
      pet_sizes: PET sizes swept on the default model (the PET-size axis).
      bindings: extra gin bindings of this method's runs (learning rate, batch size, ...).
    """

    name: str
    method_gin: str
    finetune_examples: tuple[int, ...]
    size_macro: str | None = None
    default_size: int | None = None
    pet_sizes: tuple[int, ...] = ()
    bindings: tuple[str, ...] = ()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Study:
    """A whole study; see the module docstring for how it expands.

    Attributes:
      name: the study's name.
      task: finetuning task (seqio name); pretrain_task: its pretraining text task.
      base_models, methods: as above; default_model: name of the model of the
        pretraining-data and PET-size axes (the paper's 1B, §2).
      seeds: one run per seed and point, each on a different D_f subset (the paper: 3).
      pretrain_bindings, finetune_bindings: gin bindings of every pretraining / finetuning run.
      tokens_per_pretrain_step: BATCH_SIZE x target length of pretraining (for the
        pretraining-token axis).
      gin_files: extra gin files of every run (e.g. the task gin).
      held_out: the fitter's held-out rule for the report ('paper', 'largest_x', 'largest_d',
        'none'); report_bootstrap: bootstrap replicates of the report's fits.
      generation_metrics: decode test examples of every finished finetuning run and store
        BLEU/chrF or ROUGE-L in its row (study/generation.py); None (default) skips it.
    """

    name: str
    task: str
    pretrain_task: str
    base_models: tuple[BaseModel, ...]
    methods: tuple[MethodGrid, ...]
    default_model: str
    tokens_per_pretrain_step: int
    seeds: tuple[int, ...] = (0,)
    pretrain_bindings: tuple[str, ...] = ()
    finetune_bindings: tuple[str, ...] = ()
    gin_files: tuple[str, ...] = ()
    held_out: str = "paper"
    report_bootstrap: int = 100
    generation_metrics: generation.GenerationMetrics | None = None


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: what to train (gin) and where it sits in the study (record)."""

    run_id: str
    kind: str  # 'pretrain' or 'finetune'
    gin_files: tuple[str, ...]
    bindings: tuple[str, ...]
    record: Mapping[str, object]
    depends_on: str | None = None

    def model_dir(self, out_dir: str) -> str:
        return f"{out_dir}/runs/{self.kind}_{self.run_id}"


def run_id(gin_files: Sequence[str], bindings: Sequence[str]) -> str:
    payload = json.dumps({"gin_files": list(gin_files), "bindings": sorted(bindings)})
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _make_run(kind, gin_files, bindings, record, depends_on=None, out_dir=None) -> Run:
    gin_files, bindings = tuple(gin_files), tuple(bindings)
    # The id must not depend on where the study lives (paths of its pretraining checkpoints).
    portable = [b.replace(out_dir, "$OUT") if out_dir else b for b in bindings]
    return Run(run_id(gin_files, portable), kind, gin_files, bindings, dict(record), depends_on)


def pretrain_runs(study: Study) -> dict[str, Run]:
    """name -> pretraining run, for base models without an existing checkpoint."""
    runs = {}
    for model in study.base_models:
        if model.checkpoint:
            continue
        if model.pretrain_steps <= 0:
            raise ValueError(f"base model {model.name!r} needs pretrain_steps > 0 or a checkpoint")
        bad = [s for s in model.pretrain_checkpoints if not 0 < s < model.pretrain_steps]
        if bad:
            raise ValueError(
                f"base model {model.name!r}: pretrain_checkpoints {bad} must lie strictly "
                f"between 0 and pretrain_steps={model.pretrain_steps}"
            )
        keep = tuple(sorted(model.pretrain_checkpoints))
        bindings = [
            f"MIXTURE_OR_TASK_NAME={study.pretrain_task!r}",
            f"TRAIN_STEPS={model.pretrain_steps}",
            f"train.keep_steps={keep!r}",
            *study.pretrain_bindings,
        ]
        files = [model.model_gin, PRETRAIN_GIN, *study.gin_files]
        runs[model.name] = _make_run("pretrain", files, bindings, {"model_name": model.name})
    return runs


def _checkpoints(study: Study, model: BaseModel, pretrain: dict[str, Run], out_dir: str):
    """[(initial checkpoint path, pretrain tokens, is_final)] of a base model."""
    if model.checkpoint:
        return [(model.checkpoint, None, True)]
    run = pretrain[model.name]
    base = f"{run.model_dir(out_dir)}/checkpoints"
    points = [
        (f"{base}/{s}", s * study.tokens_per_pretrain_step, False)
        for s in sorted(model.pretrain_checkpoints)
    ]
    final = model.pretrain_steps
    points.append((f"{base}/{final}", final * study.tokens_per_pretrain_step, True))
    return points


def _finetune_points(study: Study):
    """(base model, checkpoint index selector, method, pet size) per study axis, deduplicated."""
    names = [m.name for m in study.base_models]
    if study.default_model not in names:
        raise ValueError(f"default_model {study.default_model!r} is not a base model: {names}")
    points = []
    for model in study.base_models:
        for method in study.methods:
            points.append((model, "final", method, method.default_size))
            if model.name == study.default_model:
                points.append((model, "intermediate", method, method.default_size))
                for size in method.pet_sizes:
                    if size != method.default_size:
                        points.append((model, "final", method, size))
    return points


def finetune_runs(study: Study, out_dir: str, pretrain: dict[str, Run]) -> list[Run]:
    runs = []
    for model, which, method, size in _finetune_points(study):
        for path, tokens, is_final in _checkpoints(study, model, pretrain, out_dir):
            if (which == "final") != is_final:
                continue
            base = {
                "model": model,
                "method": method,
                "size": size,
                "path": path,
                "tokens": tokens,
                "pretrain_run": pretrain.get(model.name),
            }
            for examples in method.finetune_examples:
                for seed in study.seeds:
                    runs.append(_finetune_run(study, base, examples, seed, out_dir))
    return runs


def _finetune_run(study: Study, base: dict, examples: int, seed: int, out_dir: str) -> Run:
    model, method, size = base["model"], base["method"], base["size"]
    path, tokens, pretrain_run = base["path"], base["tokens"], base["pretrain_run"]
    bindings = [
        f"MIXTURE_OR_TASK_NAME={study.task!r}",
        f"INITIAL_CHECKPOINT_PATH={path!r}",
        f"FINETUNE_EXAMPLES={examples}",
        f"SEED={seed}",
        *study.finetune_bindings,
        *method.bindings,
    ]
    if method.size_macro:
        bindings.append(f"{method.size_macro}={size}")
    record = {
        "task": study.task,
        "method": method.name,
        "model_name": model.name,
        "pretrain_tokens": tokens,
        "pet_size": size,
        "finetune_examples": examples,
        "seed": seed,
    }
    files = [model.model_gin, FINETUNE_GIN, method.method_gin, *study.gin_files]
    depends = pretrain_run.run_id if pretrain_run else None
    return _make_run("finetune", files, bindings, record, depends, out_dir)


def expand(study: Study, out_dir: str) -> list[Run]:
    """All runs of the study: pretraining runs first, then finetuning runs, in a fixed order."""
    pretrain = pretrain_runs(study)
    runs = list(pretrain.values()) + finetune_runs(study, out_dir, pretrain)
    if not any(r.kind == "finetune" for r in runs):
        raise ValueError(
            f"study {study.name!r} expands to no finetuning runs: check its "
            "methods' finetune_examples and seeds"
        )
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"study {study.name!r} expands to duplicate runs")
    return runs


def assigned(runs: Sequence[Run], worker_index: int, num_workers: int) -> list[Run]:
    """This worker's share: run i goes to worker i mod num_workers."""
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index={worker_index} not in [0, num_workers={num_workers})")
    return [r for i, r in enumerate(runs) if i % num_workers == worker_index]
