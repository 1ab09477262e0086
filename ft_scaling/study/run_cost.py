"""What one run of a study costs, read from its gin files and bindings before anything runs.

    read_shapes(runs) -> [RunShape]   each run's gin parsed as execute.train_run parses it, and
                                      what loop.train would be called with read back: model
                                      config, method, batch, feature lengths, TRAIN_STEPS,
                                      MAX_EPOCHS, D_f, packing, optimizer, save/keep settings
    cost(shape) -> RunCost            steps, tokens, model FLOPs, trainable parameters, kept
                                      checkpoints and their bytes

Nothing is trained, built or downloaded: a suite model's shape comes from its config.json (a
local directory, else models/hf/published_configs.py, else the Hugging Face cache).

Steps: `settings.StopRule.total_steps`, the trainer's own rule: TRAIN_STEPS or MAX_EPOCHS
passes over the train data, whichever is fewer; one epoch is D_f // BATCH_SIZE full batches
(input_pipeline.batches_per_epoch: an unpacked D_f subset has exactly D_f examples, assuming
the task's train split has at least D_f). Without D_f (pretraining) or when packed, the epoch
is unknown offline and TRAIN_STEPS alone is taken: an upper bound (`RunCost.exact` False).
Tokens: steps x BATCH_SIZE x the summed TASK_FEATURE_LENGTHS: every example is padded (or
packed) to the feature lengths, and padded positions cost as much as real ones.
Model FLOPs (configs.train_flops_per_token counts full tuning: 6 per matmul weight, plus
attention; rematerialisation's recomputed forward is not counted, as in MFU):
    fmt      train_flops_per_token(T) per token, T = the summed feature lengths
    frozen   prompt, LoRA, BitFit: the backward pass still runs through every frozen matmul
             (the activations' gradient, 2 per weight) but skips its weight gradient, so
             4 per frozen weight: train_flops_per_token(T) - 2 W, W = matmul weights
             = train_flops_per_token(config, 0) / 6
    prompt   + the P prompt positions through every block (T + P positions, attention over
             T + P); the decoder computes no logits at them
    LoRA     + 6 per LoRA weight (forward 2; gradients of the factors and of their input, 4),
             less the first block's input gradients nothing below needs (param_sizes)
    other    (layer freezing, methods added later) counted as full tuning: an upper bound
Checkpoints: what `CheckpointStore` keeps of a run: its keep_last newest, its best by dev loss
and its keep_steps, each holding the trainable params and the optimizer state
(study/param_sizes.py).
"""

import ast
import dataclasses
import functools
import inspect
from collections.abc import Sequence

import gin
from ft_scaling.config import flags
from ft_scaling.models import configs
from ft_scaling.models.hf import published_configs
from ft_scaling.study import param_sizes

# Per-run bindings that change nothing a run costs beyond D_f, which is read from the binding:
# runs differing only in them share one gin parse.
_PER_POINT = ("SEED", "FINETUNE_EXAMPLES")
_LOOP_ARGS = ("batch_size", "feature_lengths", "train_steps", "max_epochs", "finetune_examples",
              "pack", "optimizer_kind", "save_every", "eval_every", "keep_checkpoints",
              "keep_steps")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunShape:
    """What a run trains, as loop.train would be called with it."""

    model_config: configs.ModelConfig
    method: object  # a methods.base.Method
    batch_size: int
    feature_lengths: dict
    train_steps: int
    max_epochs: float | None
    finetune_examples: int | None
    pack: bool
    optimizer_kind: str
    save_every: int
    eval_every: int
    keep_checkpoints: int
    keep_steps: tuple


@dataclasses.dataclass(frozen=True)
class RunCost:
    """One run's cost. `exact` is False when the step count is TRAIN_STEPS, an upper bound."""

    steps: int
    exact: bool
    tokens: int  # steps x batch x summed feature lengths
    flops: float
    trainable_params: int
    kept_checkpoints: int
    checkpoint_bytes: int  # one checkpoint: trainable params + optimizer state


def read_shapes(runs: Sequence) -> list[RunShape]:
    """The RunShape of every run (sweep.Run), one gin parse per distinct configuration.

    Raises:
      ValueError: a run's gin cannot be parsed, naming the run and the problem.
    """
    shapes, parsed = [], {}
    for run in runs:
        common = tuple(b for b in run.bindings if _key(b) not in _PER_POINT)
        key = (tuple(run.gin_files), common)
        if key not in parsed:
            try:
                parsed[key] = _parse(run.gin_files, common)
            except Exception as error:
                raise ValueError(
                    f"run {run.run_id} ({dict(run.record)}): its gin does not parse: {error}"
                ) from error
        shape, examples_by_macro = parsed[key]
        if examples_by_macro:  # train.finetune_examples is %FINETUNE_EXAMPLES: the run's own
            shape = dataclasses.replace(shape, finetune_examples=_finetune_examples(run))
        shapes.append(shape)
    return shapes


def _key(binding: str) -> str:
    return binding.split("=", 1)[0].strip()


def _finetune_examples(run) -> int | None:
    """The run's last FINETUNE_EXAMPLES binding (gin applies the last), None if it has none."""
    values = [b.split("=", 1)[1] for b in run.bindings if _key(b) == "FINETUNE_EXAMPLES"]
    return ast.literal_eval(values[-1].strip()) if values else None


def _parse(gin_files, bindings) -> tuple[RunShape, bool]:
    """The run's RunShape, and whether its D_f is the FINETUNE_EXAMPLES macro (then per run)."""
    flags.parse_gin(gin_files, bindings)
    from ft_scaling.train import loop  # noqa: PLC0415  (the run gins import it anyway)

    defaults = {name: p.default for name, p in inspect.signature(loop.train).parameters.items()}
    values = {name: _argument(name, defaults) for name in _LOOP_ARGS}
    values["feature_lengths"] = dict(values["feature_lengths"])
    values["keep_steps"] = tuple(values["keep_steps"] or ())
    values["pack"] = bool(values["pack"])
    shape = RunShape(model_config=_model_config(), method=_method(), **values)
    return shape, _is_macro("train.finetune_examples", "FINETUNE_EXAMPLES")


def _resolve(value):
    """A gin value with its macros (`%NAME`, possibly chained) replaced by their values."""
    while isinstance(value, gin.config.ConfigurableReference) and repr(value).startswith("%"):
        value = gin.query_parameter(repr(value))
    return value


def _argument(name: str, defaults: dict):
    try:
        return _resolve(gin.query_parameter(f"train.{name}"))
    except ValueError:  # not bound: loop.train's default
        return defaults[name]


def _is_macro(parameter: str, macro: str) -> bool:
    try:
        return repr(gin.query_parameter(parameter)) == f"%{macro}"
    except ValueError:
        return False


def _reference(parameter: str):
    try:
        return _resolve(gin.query_parameter(parameter))
    except ValueError:
        return None


def _method():
    """train.method as loop.train gets it (None: full-model tuning)."""
    from ft_scaling.methods import base  # noqa: PLC0415

    reference = _reference("train.method")
    if reference is None:
        return base.Method()
    return reference.scoped_configurable_fn()  # a method's constructor only checks its fields


def _model_config() -> configs.ModelConfig:
    """train.model_config: the gin ModelConfig, or a Hugging Face checkpoint's (hf.gin)."""
    reference = _reference("train.model_config")
    if reference is None:
        return configs.ModelConfig()  # loop.train's default, with the gin bindings
    if reference.selector != "hf.model_config":
        return reference.scoped_configurable_fn()
    run_fields = {
        field: _reference(f"hf.model_config.{field}")
        for field in ("dtype", "remat", "remat_policy", "dropout_rate")
    }
    run_fields = {field: value for field, value in run_fields.items() if value is not None}
    return hf_model_config(_reference("hf.model_config.checkpoint"), **run_fields)


@functools.cache
def hf_model_config(checkpoint: str, **run_fields) -> configs.ModelConfig:
    """The ModelConfig of an HF checkpoint (HF_CHECKPOINT), offline.

    From, in order: a local (or gs://) directory's config.json; the published config of a
    hub id 'org/name[@revision]' (published_configs); its config.json in the local Hugging
    Face cache. Raises ValueError naming the checkpoint when none has it.
    """
    from ft_scaling import files  # noqa: PLC0415
    from ft_scaling.models.hf import config_conversion  # noqa: PLC0415
    from ft_scaling.study import suites  # noqa: PLC0415

    config_json = f"{checkpoint.rstrip('/')}/config.json"
    if not suites.is_hub_id(published_configs.repository(checkpoint)):
        if not files.exists(config_json):
            raise ValueError(f"HF_CHECKPOINT {checkpoint}: no {config_json}")
        return config_conversion.to_model_config(files.read_json(config_json), **run_fields)
    try:
        return published_configs.model_config(checkpoint, **run_fields)
    except KeyError as unknown:
        cached = _cached_config(checkpoint)
        if cached is None:
            raise ValueError(
                f"HF_CHECKPOINT {checkpoint}: {unknown.args[0]}, and its config.json is not in "
                "the local Hugging Face cache (huggingface-cli download REPO config.json)"
            ) from unknown
        return config_conversion.to_model_config(cached, **run_fields)


def _cached_config(hub_id: str) -> dict | None:
    """config.json of a hub id from the local Hugging Face cache, if it is there (no network)."""
    import json  # noqa: PLC0415

    try:
        import huggingface_hub  # noqa: PLC0415
    except ImportError:
        return None
    repo, _, revision = hub_id.partition("@")
    path = huggingface_hub.try_to_load_from_cache(repo, "config.json", revision=revision or None)
    if not isinstance(path, str):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cost(shape: RunShape) -> RunCost:
    """Steps, tokens, FLOPs, trainable parameters and checkpoints of one run (module doc)."""
    from ft_scaling.train import settings  # noqa: PLC0415

    examples = shape.finetune_examples
    known_epoch = examples is not None and not shape.pack
    # input_pipeline.batches_per_epoch of a D_f subset: its D_f examples in full batches.
    epoch_steps = max(examples // shape.batch_size, 1) if known_epoch else None
    steps = settings.StopRule(shape.train_steps, shape.max_epochs).total_steps(epoch_steps)
    sequence = sum(shape.feature_lengths.values())
    trainable, checkpoint_bytes = param_sizes.trainable_and_checkpoint_bytes(
        shape.model_config, shape.method, shape.optimizer_kind
    )
    examples_seen = steps * shape.batch_size
    per_example = flops_per_example(shape.model_config, shape.method, sequence, trainable)
    return RunCost(
        steps=steps,
        exact=shape.max_epochs is None or known_epoch,
        tokens=examples_seen * sequence,
        flops=float(per_example) * examples_seen,
        trainable_params=trainable,
        kept_checkpoints=kept_checkpoints(shape, steps),
        checkpoint_bytes=checkpoint_bytes,
    )


def flops_per_example(config, method, sequence: int, trainable_params: int) -> int:
    """Model FLOPs of one training example of `sequence` tokens (module docstring)."""
    full = configs.train_flops_per_token
    name = getattr(method, "name", "fmt")
    if name not in ("prompt", "lora", "bitfit"):
        return full(config, sequence) * sequence
    weight_gradients = full(config, 0) // 3  # 2 per matmul weight: what a frozen base skips
    if name == "prompt":
        positions = sequence + method.prompt_length
        no_logits = 4 * config.vocab_size * config.embed_dim * method.prompt_length
        return (full(config, positions) - weight_gradients) * positions - no_logits
    per_token = full(config, sequence) - weight_gradients
    if name == "lora":
        per_token += 6 * trainable_params
        per_token -= param_sizes.lora_skipped_input_gradient(config, method)
    return per_token * sequence


def kept_checkpoints(shape: RunShape, steps: int) -> int:
    """Checkpoints the run's store keeps at most: keep_last + the best + keep_steps, bounded by
    how many it saves (every SAVE_EVERY, on a new best at each EVAL_EVERY, at the end)."""
    keep_steps = [s for s in shape.keep_steps if s <= steps]
    policy = shape.keep_checkpoints + 1 + len(keep_steps)
    saves = 1 + len(keep_steps)
    for every in (shape.save_every, shape.eval_every):
        saves += steps // every if every else 0
    return min(policy, saves)
