"""What a training run needs of an imported checkpoint; t5x_configs/models/hf.gin calls it.

    hf.gin                                      here
    train.model_config = @hf.model_config()     config.json -> ModelConfig; the run fields
                                                (dtype, remat, remat_policy, dropout) from gin
    train.task = @hf.task()                     the task's variant in the checkpoint's own
                                                tokenizer (data.tasks.register_hf_variant)
    INITIAL_CHECKPOINT_PATH = %HF_CHECKPOINT    train/checkpoints.py: base params from
                                                load_pretrained, on their shardings

`settings.setup` calls `check_run` before any step, so a run whose INITIAL_CHECKPOINT_PATH is a
Hugging Face checkpoint fails by name unless it has the checkpoint's architecture and tokenizer
(which hf.gin, included after the run gin, provides). A checkpoint is a local directory in HF
layout or a hub id 'org/name[@revision]' (fetched only where a network is).
"""

import functools
import os
import re

import gin
from ft_scaling.models import configs
from ft_scaling.models.hf import config_conversion, loading

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")


@functools.cache
def local_directory(checkpoint: str) -> str:
    """The local HF directory of a path or hub id (a hub id is fetched once per process)."""
    return loading.resolve(checkpoint)


def is_hf_directory(path: str) -> bool:
    """A directory in HF layout (config.json), not one of our MODEL_DIRs or step directories."""
    return (
        os.path.isdir(path)
        and os.path.exists(os.path.join(path, "config.json"))
        and not os.path.isdir(os.path.join(path, "checkpoints"))
    )


def base_directory(initial_checkpoint_path: str | None) -> str | None:
    """The local directory of an HF INITIAL_CHECKPOINT_PATH; None for ours (or none).

    A path that exists is ours unless it is in HF layout; one that does not exist and reads
    as a hub id is resolved (loading.resolve says why when no network is there).
    """
    path = initial_checkpoint_path
    if not path:
        return None
    if os.path.exists(path):
        return os.path.abspath(path) if is_hf_directory(path) else None
    if not _HUB_ID.match(path):
        return None
    try:
        return os.path.abspath(local_directory(path))
    except loading.CheckpointError as error:
        raise FileNotFoundError(
            f"INITIAL_CHECKPOINT_PATH {path} does not exist, and as a Hugging Face hub id: {error}"
        ) from error


@gin.configurable(module="hf")
def model_config(
    checkpoint: str = gin.REQUIRED,
    dtype: str = "float32",
    remat: bool = False,
    remat_policy: str = "full",
    dropout_rate: float = 0.0,
) -> configs.ModelConfig:
    """The checkpoint's ModelConfig with this run's settings of the run-only fields.

    Args:
      checkpoint: HF directory or hub id (HF_CHECKPOINT).
      dtype, remat, remat_policy, dropout_rate: `configs.ModelConfig`'s run fields.

    Returns:
      The config `load_pretrained(checkpoint)` builds, with those fields set.
    """
    hf_config = loading.read_config(local_directory(checkpoint))
    run_fields = dict(dtype=dtype, remat=remat, remat_policy=remat_policy)
    return config_conversion.to_model_config(hf_config, **run_fields, dropout_rate=dropout_rate)


@gin.configurable(module="hf")
def task(name: str = gin.REQUIRED, checkpoint: str = gin.REQUIRED) -> str:
    """Registers (once) task or mixture `name` in the checkpoint's tokenizer; returns its name."""
    from ft_scaling.data import tasks  # noqa: PLC0415  (data registers its tasks on import)

    return tasks.register_hf_variant(name, local_directory(checkpoint))


def check_run(directory: str, model_config: configs.ModelConfig, task_name: str) -> None:
    """Refuses a run from HF checkpoint `directory` with another architecture or tokenizer.

    Args:
      directory: the local HF checkpoint (`base_directory` of INITIAL_CHECKPOINT_PATH).
      model_config: the run's config; must be the checkpoint's (run fields aside).
      task_name: the run's registered task or mixture; its vocabulary must be the checkpoint's.

    Raises:
      ValueError: naming what differs and what to include.
    """
    import seqio  # noqa: PLC0415  (TF and tokenizers: only for runs from an HF checkpoint)

    from ft_scaling.data import hf_vocab  # noqa: PLC0415

    hint = (
        "include t5x_configs/models/hf.gin after the run gin with HF_CHECKPOINT set to it "
        "(it sets the model config and the task's tokenizer from the checkpoint)"
    )
    hf_config = loading.read_config(directory)
    try:
        config_conversion.check_architecture(
            model_config,
            hf_config,
            f"INITIAL_CHECKPOINT_PATH {directory} is a Hugging Face checkpoint, but this run's",
        )
    except ValueError as error:
        raise ValueError(f"{error}; {hint}") from error
    vocabulary = hf_vocab.checkpoint_vocabulary(directory)
    task_vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    if task_vocabulary != vocabulary:
        raise ValueError(
            f"INITIAL_CHECKPOINT_PATH {directory} is a Hugging Face checkpoint, but the task's "
            f"vocabulary is {type(task_vocabulary).__name__}, not the checkpoint's tokenizer.json; "
            f"{hint}"
        )
