"""Few-shot classification tasks: seqio tasks of text fields + label, and what to evaluate.

    task               seqio task(s)                 fields               classes  metric
    cola               glue_cola (TFDS glue/cola)    sentence             2        Matthews corr
    mnli               glue_mnli (TFDS glue/mnli)    premise, hypothesis  3        accuracy
    translation_match  translation_match (offline)   english, german      2        accuracy

    task               in-domain eval                  OOD eval sets (gin OOD_SET picks one)
    cola               glue_cola validation            cola_ood: CoLA out-of-domain dev (local)
    mnli               glue_mnli validation_matched    mnli_mismatched (default), hans (local)
    translation_match  translation_match test          package_synopses (test_ood)

The seqio tasks yield the raw text fields and an int64 `label`, untokenized: each method renders
them differently (a pattern, demonstrations, or plain fields for the head), so tokenization
happens in `encoding.py`. GLUE test labels are hidden (-1), so validation splits are the
evaluation sets, as in Mosbach et al. 2023. TFDS has no HANS and GLUE's CoLA has no
out-of-domain dev set: `local_sets.py` reads local copies of both (MNLI mismatched is the OOD
set that needs no extra file). The translation_match set is `translation_match.py`.
"""

import dataclasses
import functools

import seqio
import tensorflow as tf

from ft_scaling.classify import local_sets, translation_match
from ft_scaling.data import sources


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled example: its text fields (in TaskSpec.fields order) and class index."""

    texts: tuple[str, ...]
    label: int


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A split to evaluate on; `binary` sets (HANS) count every class > 0 as class 1."""

    seqio_task: str
    split: str
    binary: bool = False


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    seqio_task: str
    fields: tuple[str, ...]
    label_names: tuple[str, ...]
    metric: str
    in_domain: EvalSet
    ood_sets: dict
    default_ood: str | None
    train_split: str = "train"

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


TASKS = {
    "cola": TaskSpec(
        "cola",
        "glue_cola",
        ("sentence",),
        ("unacceptable", "acceptable"),
        "matthews",
        EvalSet("glue_cola", "validation"),
        {"cola_ood": EvalSet("cola_out_of_domain", "validation")},
        "cola_ood",
    ),
    "mnli": TaskSpec(
        "mnli",
        "glue_mnli",
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        "accuracy",
        EvalSet("glue_mnli", "validation_matched"),
        {
            "mnli_mismatched": EvalSet("glue_mnli", "validation_mismatched"),
            "hans": EvalSet("hans", "validation", binary=True),
        },
        "mnli_mismatched",
    ),
    "translation_match": TaskSpec(
        "translation_match",
        "translation_match",
        ("english", "german"),
        translation_match.LABEL_NAMES,
        "accuracy",
        EvalSet("translation_match", "test"),
        {"package_synopses": EvalSet("translation_match", "test_ood")},
        "package_synopses",
    ),
}


def get_task(name: str) -> TaskSpec:
    """The TaskSpec registered as `name`; ValueError lists the known tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown classification task {name!r}; allowed: {sorted(TASKS)}")
    return TASKS[name]


def ood_set(task: TaskSpec, name: str | None) -> EvalSet | None:
    """The named OOD set of `task` ('default' picks the task's default; None: no OOD eval)."""
    if name is None:
        return None
    name = task.default_ood if name == "default" else name
    if name not in task.ood_sets:
        raise ValueError(
            f"OOD_SET={name!r} is not an OOD set of {task.name!r}; allowed: "
            f"{sorted(task.ood_sets)}, 'default' or None"
        )
    return task.ood_sets[name]


def _select(dataset: tf.data.Dataset, keys: tuple[str, ...]) -> tf.data.Dataset:
    """Keeps the text fields and the label (TFDS GLUE also carries `idx`)."""
    return dataset.map(lambda ex: {k: ex[k] for k in (*keys, "label")})


def _rows_loader(rows_fn, fields: tuple[str, ...]) -> sources.Loader:
    """In-memory rows {field: str, "label": int} as a dataset, in stored order."""

    def load(shuffle_files: bool, seed: int | None) -> tf.data.Dataset:
        del shuffle_files, seed  # few-shot subsets are drawn by index (subsets.py), not here
        rows = rows_fn()
        columns = {f: tf.constant([r[f] for r in rows], tf.string) for f in fields}
        columns["label"] = tf.constant([r["label"] for r in rows], tf.int64)
        return tf.data.Dataset.from_tensor_slices(columns)

    return load


def _add(name: str, source: seqio.DataSource, fields: tuple[str, ...]) -> None:
    if name in seqio.TaskRegistry.names():
        return
    select = functools.partial(_select, keys=fields)
    seqio.TaskRegistry.add(name, source=source, preprocessors=[select], output_features={})


def register() -> None:
    """Registers the seqio tasks of the table above (idempotent; reads no data)."""
    glue = {
        "glue_cola": ("glue/cola:2.0.0", ("train", "validation"), ("sentence",)),
        "glue_mnli": (
            "glue/mnli:2.0.0",
            ("train", "validation_matched", "validation_mismatched"),
            ("premise", "hypothesis"),
        ),
    }
    for name, (tfds_name, splits, fields) in glue.items():
        loaders = {split: sources.tfds_loader(tfds_name, split) for split in splits}
        _add(name, sources.SplitSource(loaders), fields)
    local = {
        "cola_out_of_domain": (local_sets.cola_out_of_domain, ("sentence",)),
        "hans": (local_sets.hans, ("premise", "hypothesis")),
    }
    for name, (rows_fn, fields) in local.items():
        _add(name, sources.SplitSource({"validation": _rows_loader(rows_fn, fields)}), fields)
    fields = TASKS["translation_match"].fields
    loaders = {
        split: _rows_loader(functools.partial(translation_match.split_examples, split), fields)
        for split in translation_match.SPLITS
    }
    _add("translation_match", sources.SplitSource(loaders), fields)


def load_examples(
    task: TaskSpec, eval_set: EvalSet | None = None, limit: int | None = None
) -> list[Example]:
    """Examples of the task's train split, or of `eval_set`, in stored order.

    Args:
      task: the task (its `fields` name the text features).
      eval_set: None reads `task.train_split` of `task.seqio_task`.
      limit: read at most this many (a CPU-budget option; None reads the whole split).

    Returns:
      Examples with labels in 0..num_classes-1 (HANS: 0..1).
    """
    if eval_set is None:
        eval_set = EvalSet(task.seqio_task, task.train_split)
    examples = list(_read(eval_set.seqio_task, eval_set.split, task.fields, limit))
    bad = sorted({e.label for e in examples if not 0 <= e.label < task.num_classes})
    if bad:
        raise ValueError(
            f"{eval_set.seqio_task} {eval_set.split}: labels {bad} outside "
            f"0..{task.num_classes - 1}"
        )
    return examples


@functools.lru_cache(maxsize=32)
def _read(name: str, split: str, fields: tuple[str, ...], limit: int | None) -> tuple:
    """The examples of a split, read once per process (a study evaluates them dozens of times;
    tests under other mock data call `_read.cache_clear()`). Batched: per-element iteration of
    tf.data costs more than the rest of a study's data handling."""
    register()
    dataset = seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False)
    if limit is not None:
        dataset = dataset.take(limit)
    examples = []
    for batch in dataset.batch(4096).as_numpy_iterator():
        texts = zip(*[[t.decode("utf-8") for t in batch[f]] for f in fields], strict=True)
        examples += [Example(t, int(label)) for t, label in zip(texts, batch["label"], strict=True)]
    return tuple(examples)
