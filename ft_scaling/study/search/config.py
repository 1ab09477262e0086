"""What an early-stopped search is (gin-configured) and the runs it trains.

    Search(task, base model, method, SearchSpace, D_f, trials, early_fraction, top_k, ...)
      -> one pretraining run of the base model (unless it reuses a checkpoint)
      -> one finetuning run per sampled config: the search's fixed bindings, then the sampled
         ones; its id is a hash of the portable config, so a config sampled twice is one run

The search itself (Optuna, phases, resuming) is `run.py`.
"""

import dataclasses
import os

import gin
from ft_scaling import files
from ft_scaling.config import flags
from ft_scaling.study import sweep
from ft_scaling.study.search import space as search_space

FULL_BUDGET_FOR = ("top_k", "all")
METRICS = ("dev_loss", "dev_ppl")
PRUNERS = ("none", "median")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Search:
    """An early-stopped search; see `run.py` for how it runs.

    Attributes:
      name: the search's name (also the Optuna study name).
      task, pretrain_task: finetuning task and pretraining text task (seqio names).
      base_model: the model every trial finetunes (pretrained here unless it has a checkpoint).
      method_gin: gin/methods/<name>.gin of the trials.
      space: the searched hyperparameters.
      finetune_examples: D_f of every trial.
      trials: number of trials (finished, pruned or failed in training).
      early_fraction: fraction of each trial's steps after which its metric is reported.
      top_k: trials continued to the full budget when full_budget_for='top_k'.
      full_budget_for: 'top_k' or 'all' (all gives the rank-correlation check every trial).
      metric: 'dev_loss' or 'dev_ppl' (lower is better; same ranks either way).
      seed: seed of the sampler and of every trial's data order.
      startup_trials: random trials before TPE models the results.
      pruner: 'none' or 'median' (Optuna's MedianPruner on the early metric).
      pack_trials: K > 1 trains the startup trials' early phases and the continuations in
        packs of K (packs.py; one worker); 1 trains every trial alone.
      pretrain_bindings, finetune_bindings, gin_files: as in `sweep.Study`.
      method_bindings: bindings of the method, after finetune_bindings (e.g. a prompt's
        vocabulary range for the tiny models).
    """

    name: str
    task: str
    pretrain_task: str
    base_model: sweep.BaseModel
    method_gin: str
    space: search_space.SearchSpace
    finetune_examples: int
    trials: int = 16
    early_fraction: float = 0.2
    top_k: int = 5
    full_budget_for: str = "top_k"
    metric: str = "dev_loss"
    seed: int = 0
    startup_trials: int = 8
    pruner: str = "none"
    pack_trials: int = 1
    pretrain_bindings: tuple[str, ...] = ()
    finetune_bindings: tuple[str, ...] = ()
    method_bindings: tuple[str, ...] = ()
    gin_files: tuple[str, ...] = ()

    def __post_init__(self):
        _check_choice("full_budget_for", self.full_budget_for, FULL_BUDGET_FOR)
        _check_choice("metric", self.metric, METRICS)
        _check_choice("pruner", self.pruner, PRUNERS)
        if not 0.0 < self.early_fraction <= 1.0:
            raise ValueError(f"Search.early_fraction={self.early_fraction} must lie in (0, 1]")
        if self.trials < 1 or self.top_k < 1:
            raise ValueError(f"Search.trials={self.trials} and top_k={self.top_k} must be >= 1")
        if self.pack_trials < 1:
            raise ValueError(f"Search.pack_trials={self.pack_trials} must be >= 1 (1: no packs)")

    @property
    def method(self) -> str:
        return os.path.splitext(os.path.basename(self.method_gin))[0]


def _check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"Search.{field}={value!r}; allowed: {', '.join(allowed)}")


def _make_run(kind, files, bindings, record, out_dir, depends_on=None) -> sweep.Run:
    # The id must not depend on where the search lives (the base checkpoint's path).
    portable = [b.replace(out_dir, "$OUT") for b in bindings]
    run_id = sweep.run_id(files, portable)
    return sweep.Run(run_id, kind, tuple(files), tuple(bindings), dict(record), depends_on)


def pretrain_run(search: Search, out_dir: str) -> sweep.Run | None:
    """The base model's pretraining run, or None when it reuses a checkpoint."""
    model = search.base_model
    if model.checkpoint:
        return None
    if model.pretrain_steps <= 0:
        raise ValueError(f"base model {model.name!r} needs pretrain_steps > 0 or a checkpoint")
    bindings = [
        f"MIXTURE_OR_TASK_NAME={search.pretrain_task!r}",
        f"TRAIN_STEPS={model.pretrain_steps}",
        *search.pretrain_bindings,
    ]
    files = [model.model_gin, sweep.PRETRAIN_GIN, *search.gin_files]
    return _make_run("pretrain", files, bindings, {"model_name": model.name}, out_dir)


def base_checkpoint(search: Search, out_dir: str) -> str:
    """The checkpoint every trial starts from."""
    run = pretrain_run(search, out_dir)
    if run is None:
        return search.base_model.checkpoint
    return f"{run.model_dir(out_dir)}/checkpoints/{search.base_model.pretrain_steps}"


def trial_run(search: Search, values: dict, out_dir: str) -> sweep.Run:
    """The run of one sampled config: the search's fixed bindings, then the sampled ones."""
    path = base_checkpoint(search, out_dir)
    bindings = [
        f"MIXTURE_OR_TASK_NAME={search.task!r}",
        f"INITIAL_CHECKPOINT_PATH={path!r}",
        f"FINETUNE_EXAMPLES={search.finetune_examples}",
        f"SEED={search.seed}",
        *search.finetune_bindings,
        *search.method_bindings,
        *search_space.bindings(values),
    ]
    files = [search.base_model.model_gin, sweep.FINETUNE_GIN, search.method_gin, *search.gin_files]
    record = {
        "task": search.task,
        "method": search.method,
        "model_name": search.base_model.name,
        "finetune_examples": search.finetune_examples,
        "seed": search.seed,
        "params": dict(values),
    }
    pretrain = pretrain_run(search, out_dir)
    return _make_run("trial", files, bindings, record, out_dir, pretrain and pretrain.run_id)


def check_space(search: Search, out_dir: str) -> None:
    """Fails before any training when a space key is not bindable in the trial's gin files:
    macros are looked up in the config without the sampled bindings (which would define
    them), then gin parses the sampled bindings, naming a bad `configurable.param`."""
    first = {p.key: p.choices[0] if p.choices else p.low for p in search.space.parameters()}
    run = trial_run(search, first, out_dir)
    model_dir = f"MODEL_DIR={run.model_dir(out_dir)!r}"
    sampled = search_space.bindings(first)
    flags.parse_gin(run.gin_files, [b for b in run.bindings if b not in sampled] + [model_dir])
    search_space.check_keys(search.space, gin.config_str())
    flags.parse_gin(run.gin_files, [*run.bindings, model_dir])


def write_settings(search: Search, out_dir: str) -> None:
    """What the report needs to know about the search (OUT/search_settings.json)."""
    settings = {
        "name": search.name,
        "trials": search.trials,
        "early_fraction": search.early_fraction,
        "top_k": search.top_k,
        "full_budget_for": search.full_budget_for,
        "metric": search.metric,
        "pruner": search.pruner,
        "startup_trials": search.startup_trials,
        "seed": search.seed,
        "method": search.method,
        "model_name": search.base_model.name,
        "finetune_examples": search.finetune_examples,
        "space": {k: list(v) for k, v in search.space.params.items()},
    }
    files.atomic_write_json(files.path(out_dir) / "search_settings.json", settings)
