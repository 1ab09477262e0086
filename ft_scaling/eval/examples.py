"""Evaluation examples of a seqio task split: prompt tokens plus the source and reference text.

The prompt is the task's own `inputs` feature (prompted text, tokenized, ending with EOS): in the
prefix-LM sequence inputs + targets, the model continues it with the target.
"""

import dataclasses

import seqio

import ft_scaling.data.tasks  # noqa: F401  (registers the study's tasks by name)


@dataclasses.dataclass(frozen=True)
class Example:
    """Attributes: prompt (token ids ending with EOS), source (prompted input text), target
    (reference text)."""

    prompt: list[int]
    source: str
    target: str


def _tasks(name: str) -> list[seqio.Task]:
    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError as err:
        raise ValueError(f"unknown seqio task or mixture {name!r}") from err
    return list(getattr(provider, "tasks", [provider]))


def vocabulary(task_name: str) -> seqio.Vocabulary:
    """The targets vocabulary of a task (or of a mixture's first task)."""
    return _tasks(task_name)[0].output_features["targets"].vocabulary


def task_examples(
    task_name: str,
    split: str,
    feature_lengths: dict,
    max_examples: int | None = None,
) -> list[Example]:
    """Every example of `split` in order (a mixture: its tasks one after another).

    Args:
      task_name: a registered seqio task or mixture with `inputs` and `targets`.
      split: e.g. 'validation' or 'test'.
      feature_lengths: {'inputs': n, 'targets': m}; inputs are trimmed to n tokens (EOS kept).
      max_examples: keep only the first ones (None: all).

    Returns:
      The examples.

    Raises:
      ValueError: unknown task, a task without inputs, or an empty split.
    """
    examples = []
    for task in _tasks(task_name):
        if "inputs" not in task.output_features:
            raise ValueError(f"task {task.name!r} has no `inputs` to generate from")
        dataset = task.get_dataset(dict(feature_lengths), split=split, shuffle=False)
        for ex in dataset.as_numpy_iterator():
            if max_examples is not None and len(examples) >= max_examples:
                break
            examples.append(
                Example(
                    prompt=[int(t) for t in ex["inputs"]],
                    source=ex["inputs_pretokenized"].decode("utf-8"),
                    target=ex["targets_pretokenized"].decode("utf-8"),
                )
            )
    if not examples:
        raise ValueError(f"split {split!r} of {task_name!r} is empty: nothing to evaluate")
    return examples
