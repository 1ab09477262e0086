"""A scaling study as data, and its expansion into runs.

    Study(task, base models, methods with their D_f grids and PET sizes, seeds, recipes)
      -> pretraining runs   one per base model (its intermediate checkpoints give the
                            pretraining-data axis, as in the paper, PAPER.md §1)
      -> finetuning runs    the paper's three axes (§2), each run once:
           model size       every base model (final checkpoint) x every method at its default
                            PET size x D_f x seed
           pretraining data the default model's intermediate checkpoints x methods x D_f x seed
           PET size         the default model x each PET size of prompt/LoRA x D_f x seed

A base model is one of three kinds (`BaseModel`):
    in-house      model_gin + pretrain_steps (+ pretrain_checkpoints): pretrained by the study;
                  tokens of a checkpoint = step x Study.tokens_per_pretrain_step
    checkpoint    model_gin + checkpoint: an existing MODEL_DIR; no pretraining-data axis
    suite         hf_source (hub id or local directory) + revisions (the pretraining-data axis)
                  + final_revision, tokens by token_rule ('pythia', 'olmo2') or revision_tokens
                  (study/suites.py: layout, rules, completeness); its finetuning runs include
                  t5x_configs/models/hf.gin after the run gin with HF_CHECKPOINT = the revision

    BaseModel(name, model_gin=None, pretrain_steps=0, pretrain_checkpoints=(), checkpoint=None,
              hf_source=None, revisions=(), final_revision='main', revision_tokens=(),
              token_rule=None)
    suite_checkpoints(study) -> [suites.Checkpoint]   the revisions the study finetunes from

A run is a list of gin files plus bindings; its id is a hash of them (the operative config), so
the same run expanded twice has the same id and a rerun study skips it.
"""

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence

import gin
from ft_scaling.study import generation, suites

PRETRAIN_GIN = "t5x_configs/runs/pretrain.gin"
FINETUNE_GIN = "t5x_configs/runs/finetune.gin"
HF_GIN = "t5x_configs/models/hf.gin"  # after the run, method and study gins (it says why)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BaseModel:
    """A pretrained LM of the study.

    Attributes:
      name: short name, e.g. 'tiny_2' or '1b'.
      model_gin: the size gin (t5x_configs/models/<size>.gin); None for a suite model (its
        config.json gives the architecture).
      pretrain_steps: steps of its pretraining run (0 when `checkpoint` or `hf_source` is given).
      pretrain_checkpoints: intermediate steps kept as the pretraining-data axis.
      checkpoint: an existing pretrained MODEL_DIR to finetune from instead of pretraining.
      hf_source: a suite model: hub id 'org/name' or a local directory (suites.py: layout).
      revisions: its intermediate revisions, the pretraining-data axis (e.g. 'step48000').
      final_revision: its final revision (model-size and PET-size axes).
      revision_tokens: pretraining tokens of each revision, then of the final one.
      token_rule: or a rule deriving them from the names: 'pythia' or 'olmo2'.
    The results' model_params is counted by each run from the model it trains.
    """

    name: str
    model_gin: str | None = None
    pretrain_steps: int = 0
    pretrain_checkpoints: tuple[int, ...] = ()
    checkpoint: str | None = None
    hf_source: str | None = None
    revisions: tuple[str, ...] = ()
    final_revision: str = "main"
    revision_tokens: tuple[int, ...] = ()
    token_rule: str | None = None


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
      task: finetuning task (seqio name); pretrain_task: its pretraining text task (None
        when no base model is pretrained by the study, e.g. a suite study).
      base_models, methods: as above; default_model: name of the model of the
        pretraining-data and PET-size axes (the paper's 1B, §2).
      seeds: one run per seed and point, each on a different D_f subset (the paper: 3).
      pretrain_bindings, finetune_bindings: gin bindings of every pretraining / finetuning run.
      tokens_per_pretrain_step: BATCH_SIZE x target length of pretraining (for the
        pretraining-token axis of in-house models; suite models count their own).
      gin_files: extra gin files of every run (e.g. the task gin).
      held_out: the fitter's held-out rule for the report ('paper', 'largest_x', 'largest_d',
        'none'); report_bootstrap: bootstrap replicates of the report's fits.
      generation_metrics: decode test examples of every finished finetuning run and store
        BLEU/chrF or ROUGE-L in its row (study/generation.py); None (default) skips it.
      pack_runs: K > 1 trains up to K compatible finetuning runs at once in one compiled
        step (study/packed.py); 1 (default) trains every run alone.
    """

    name: str
    task: str
    pretrain_task: str | None
    base_models: tuple[BaseModel, ...]
    methods: tuple[MethodGrid, ...]
    default_model: str
    tokens_per_pretrain_step: int | None = None
    seeds: tuple[int, ...] = (0,)
    pretrain_bindings: tuple[str, ...] = ()
    finetune_bindings: tuple[str, ...] = ()
    gin_files: tuple[str, ...] = ()
    held_out: str = "paper"
    report_bootstrap: int = 100
    generation_metrics: generation.GenerationMetrics | None = None
    pack_runs: int = 1

    def __post_init__(self):
        if not isinstance(self.pack_runs, int) or self.pack_runs < 1:
            raise ValueError(f"Study.pack_runs={self.pack_runs!r} must be an integer >= 1")


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
        _check_kind(model)
        if model.checkpoint or model.hf_source:
            continue
        if not study.tokens_per_pretrain_step or study.tokens_per_pretrain_step <= 0:
            raise ValueError(
                f"base model {model.name!r} is pretrained by the study: set "
                "Study.tokens_per_pretrain_step (BATCH_SIZE x target length) > 0"
            )
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


def _check_kind(model: BaseModel) -> None:
    """One kind per base model (module docstring): in-house, checkpoint or suite."""
    where = f"base model {model.name!r}"
    if model.hf_source is None:
        if not model.model_gin:
            raise ValueError(f"{where} needs model_gin (or hf_source for a suite model)")
        if model.revisions or model.revision_tokens or model.token_rule:
            raise ValueError(f"{where}: revisions, revision_tokens and token_rule need hf_source")
        return
    given = [f for f in ("model_gin", "checkpoint", "pretrain_steps", "pretrain_checkpoints")
             if getattr(model, f)]  # fmt: skip
    if given:
        raise ValueError(
            f"{where} has hf_source={model.hf_source!r}, so its architecture and weights come "
            f"from the checkpoint (config.json; {HF_GIN}): drop {', '.join(given)}"
        )


def _checkpoints(study: Study, model: BaseModel, pretrain: dict[str, Run], out_dir: str):
    """[(initial checkpoint path, pretrain tokens, is_final, revision)] of a base model."""
    if model.hf_source:
        return [(c.location, c.pretrain_tokens, c.final, c.revision)
                for c in suites.checkpoints(model)]  # fmt: skip
    if model.checkpoint:
        return [(model.checkpoint, None, True, None)]
    run = pretrain[model.name]
    base = f"{run.model_dir(out_dir)}/checkpoints"
    points = [
        (f"{base}/{s}", s * study.tokens_per_pretrain_step, False, None)
        for s in sorted(model.pretrain_checkpoints)
    ]
    final = model.pretrain_steps
    points.append((f"{base}/{final}", final * study.tokens_per_pretrain_step, True, None))
    return points


def suite_checkpoints(study: Study) -> list[suites.Checkpoint]:
    """The suite revisions the study's finetuning runs start from, each once, in run order."""
    needed = []
    for model, which, _, _ in _finetune_points(study):
        if model.hf_source:
            needed += [c for c in suites.checkpoints(model) if c.final == (which == "final")]
    return list(dict.fromkeys(needed))


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
        for path, tokens, is_final, revision in _checkpoints(study, model, pretrain, out_dir):
            if (which == "final") != is_final:
                continue
            base = {
                "model": model,
                "method": method,
                "size": size,
                "path": path,
                "tokens": tokens,
                "revision": revision,
                "pretrain_run": pretrain.get(model.name),
            }
            for examples in method.finetune_examples:
                for seed in study.seeds:
                    runs.append(_finetune_run(study, base, examples, seed, out_dir))
    return runs


def _finetune_run(study: Study, base: dict, examples: int, seed: int, out_dir: str) -> Run:
    model, method, size = base["model"], base["method"], base["size"]
    path, tokens, pretrain_run = base["path"], base["tokens"], base["pretrain_run"]
    # A suite model's revision is HF_CHECKPOINT; hf.gin makes it INITIAL_CHECKPOINT_PATH too.
    start = "HF_CHECKPOINT" if model.hf_source else "INITIAL_CHECKPOINT_PATH"
    bindings = [
        f"MIXTURE_OR_TASK_NAME={study.task!r}",
        f"{start}={path!r}",
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
    if model.hf_source:
        record["revision"] = base["revision"]
        files = [FINETUNE_GIN, method.method_gin, *study.gin_files, HF_GIN]
    else:
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
