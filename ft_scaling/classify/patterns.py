"""Patterns and verbalizers of pattern-based finetuning (PBFT), ICL and context distillation.

A pattern turns an example's fields into the LM input; label c is scored as the likelihood of
the verbalizer text `verbalizers[c]` after it (scoring.py), in the finetuning sequence format

    [pattern(example)] EOS [verbalizer of label c]

Patterns follow Schick & Schütze (2021) and Mosbach et al. (2023), e.g. MNLI's
`{premise} Question: {hypothesis} Yes, Maybe or No?`. Gin selects one by name (PATTERN), so a
study can compare them; every pattern names each field of its task exactly once.
"""

import dataclasses
import string

from ft_scaling.classify import tasks


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Attributes: task (tasks.TASKS key), template (str.format fields = the task's fields),
    verbalizers (one text per class, in label order)."""

    task: str
    template: str
    verbalizers: tuple[str, ...]

    def render(self, texts: tuple[str, ...]) -> str:
        """The pattern filled with an example's texts (in TaskSpec.fields order)."""
        fields = tasks.get_task(self.task).fields
        return self.template.format(**dict(zip(fields, texts, strict=True)))


PATTERNS = {
    "cola_question": Pattern(
        "cola", "{sentence} Question: Is this sentence grammatical? Yes or No?", ("No", "Yes")
    ),
    "cola_true_false": Pattern(
        "cola", "{sentence} This sentence is correct: True or False?", ("False", "True")
    ),
    "mnli_question": Pattern(
        "mnli", "{premise} Question: {hypothesis} Yes, Maybe or No?", ("Yes", "Maybe", "No")
    ),
    "mnli_gpt3": Pattern(
        "mnli",
        "{premise} question: {hypothesis} true, false or neither?",
        ("true", "neither", "false"),
    ),
    "tm_question": Pattern(
        "translation_match",
        "English: {english} German: {german} Is the German a translation? Yes or No?",
        ("No", "Yes"),
    ),
    # Single-token verbalizers in the debian_l10n_ende vocabulary ("Yes" is two pieces).
    "tm_same": Pattern(
        "translation_match",
        "{english} = {german} Same or different?",
        ("different", "same"),
    ),
    "tm_german": Pattern(
        "translation_match",
        "Englisch: {english} Deutsch: {german} Übersetzung? Ja oder Nein?",
        ("Nein", "Ja"),
    ),
}


def _check(name: str, pattern: Pattern) -> None:
    task = tasks.get_task(pattern.task)
    names = [f for _, f, _, _ in string.Formatter().parse(pattern.template) if f is not None]
    if sorted(names) != sorted(task.fields):
        raise ValueError(
            f"pattern {name!r} uses fields {names}; task {task.name!r} has {list(task.fields)}"
        )
    if len(pattern.verbalizers) != task.num_classes or len(set(pattern.verbalizers)) < len(
        pattern.verbalizers
    ):
        raise ValueError(
            f"pattern {name!r} needs {task.num_classes} distinct verbalizers, "
            f"got {pattern.verbalizers}"
        )


for _name, _pattern in PATTERNS.items():
    _check(_name, _pattern)


def get_pattern(name: str, task: str) -> Pattern:
    """The pattern `name` of `task`; ValueError lists the task's patterns."""
    allowed = sorted(n for n, p in PATTERNS.items() if p.task == task)
    if name not in PATTERNS or PATTERNS[name].task != task:
        raise ValueError(f"PATTERN={name!r} is not a pattern of task {task!r}; allowed: {allowed}")
    return PATTERNS[name]
