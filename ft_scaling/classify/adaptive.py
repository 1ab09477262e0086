"""The LM stages of a classification study, run by the LM trainer (`train/loop.py`).

    pretrain   Decoder from scratch on `debian_l10n_pretrain_en_de` (monolingual En + De text;
               the pretraining text never pairs a string with its translation) so the LM head
               is meaningful for PBFT, ICL and distillation.
    adaptive   continued LM training of the pretrained model on the task's own unlabeled inputs
               (task-adaptive pretraining, Gururangan et al. 2020; "adaptive finetuning" in
               Srinivasan et al. 2024): every train example's fields joined by newlines, one
               document each, labels dropped. A `base = 'adaptive'` method then finetunes from it.

The adaptive text is registered as the seqio task `<task>_adaptive_lm`: its train split is the
task's train pool minus the last ADAPTIVE_VALIDATION examples, which form its validation split
(the trainer's dev perplexity). Evaluation sets are never read. Both stages are ordinary
`loop.train` runs, so they checkpoint, resume after a kill and write summary.json; a stage whose
summary says finished is not run again (its summary is returned as it was written).
"""

import dataclasses

import seqio

import gin
from ft_scaling.classify import tasks
from ft_scaling.data import preprocessors, sources
from ft_scaling.data import tasks as data_tasks
from ft_scaling.models import configs
from ft_scaling.train import loop
from ft_scaling.train import summary as summary_lib

ADAPTIVE_VALIDATION = 256


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LMStage:
    """One LM training run (packed rows of `length` tokens), gin: `<scope>/LMStage.<field>`."""

    steps: int
    batch_size: int = 16
    learning_rate: float = 0.01
    length: int = 64
    eval_examples: int = 128

    def __post_init__(self):
        if self.steps <= 0 or self.batch_size <= 0 or self.length <= 0:
            raise ValueError(f"LMStage needs positive steps, batch_size and length: {self}")


def adaptive_task_name(task: tasks.TaskSpec) -> str:
    return f"{task.name}_adaptive_lm"


def register_adaptive_task(task: tasks.TaskSpec, vocabulary: str) -> str:
    """Registers (once) the LM task of the task's unlabeled train inputs; returns its name."""
    name = adaptive_task_name(task)
    if name in seqio.TaskRegistry.names():
        return name

    def documents(split):
        examples = tasks.load_examples(task)
        if len(examples) <= 2 * ADAPTIVE_VALIDATION:
            raise ValueError(
                f"{task.name}: {len(examples)} train examples are too few for an "
                f"adaptive stage with {ADAPTIVE_VALIDATION} held out"
            )
        part = (
            examples[:-ADAPTIVE_VALIDATION] if split == "train" else examples[-ADAPTIVE_VALIDATION:]
        )
        return [{"text": "\n".join(e.texts)} for e in part]

    loaders = {
        s: sources.records_loader(lambda s=s: documents(s), ("text",))
        for s in ("train", "validation")
    }
    seqio.TaskRegistry.add(
        name,
        source=sources.SplitSource(loaders),
        preprocessors=[
            preprocessors.lm_text,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos,
            preprocessors.split_targets_to_length,
        ],
        output_features=data_tasks.output_features(vocabulary, with_inputs=False),
    )
    return name


def run_stage(
    stage: LMStage,
    model_dir: str,
    lm_task: str,
    model_config: configs.ModelConfig,
    initial_checkpoint: str | None,
    seed: int = 0,
) -> summary_lib.RunSummary:
    """Trains (or resumes, or skips when finished) one LM stage; returns its summary.

    Args:
      stage: steps, batch, rate and row length.
      model_dir: the stage's MODEL_DIR (checkpoints, metrics, summary.json).
      lm_task: a registered seqio task with a `targets` feature.
      model_config: the decoder's shapes; initial_checkpoint: the LM to continue (or None).
      seed: data order and initialisation seed.
    """
    summary = summary_lib.read(model_dir)
    if summary is not None and summary.finished:
        return summary
    return loop.train(
        model_dir=model_dir,
        task=lm_task,
        feature_lengths={"targets": stage.length},
        train_steps=stage.steps,
        batch_size=stage.batch_size,
        learning_rate=stage.learning_rate,
        model_config=model_config,
        initial_checkpoint_path=initial_checkpoint,
        optimizer_kind="adafactor",
        schedule_kind="cosine",
        max_epochs=None,
        pack=True,
        seed=seed,
        eval_every=stage.steps,
        save_every=stage.steps,
        log_every=max(1, stage.steps // 4),
        eval_examples=stage.eval_examples,
    )
