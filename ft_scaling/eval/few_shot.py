"""Zero-shot directions and few-shot prompts (paper §5; PAPER.md §4 and §6).

Zero-shot: a model finetuned on En->Zh (En->De) translates related directions that share its
target language, {Fr, De, Hi, Tr, Pt}->Zh ({Fr, Zh, Hi, Tr, Pt}->De), on Flores-200; the paper
averages the scores over the directions. Sentences come from a local copy of Flores-200
(`flores200_dataset/<split>/<code>.<split>`, one sentence per line, aligned across languages,
as released at https://github.com/facebookresearch/flores) or from any TFDS translation dataset.

Few-shot prompt format (k demonstrations, then the query), token level:

    [demo_1 input] EOS [demo_1 target] EOS ... [demo_k input] EOS [demo_k target] EOS
    [query input] EOS

Each demonstration is exactly one finetuning example as the prefix-LM sees it (prompted input,
EOS, target, EOS), so the prompt reads like k finished examples followed by the start of a new
one; the model's continuation after the last EOS is the prediction. Inputs use the tasks'
translation prompt, e.g. "Translate French to Chinese: {sentence}". Demonstrations are drawn
with a fixed seed from a separate pool (Flores `dev` for `devtest` queries, the task's train
split for its test split), never from the queries.
"""

import os
import random
from collections.abc import Callable, Sequence

from ft_scaling.data.preprocessors import TRANSLATE_PROMPT
from ft_scaling.eval.examples import Example

LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "hi": "Hindi",
    "tr": "Turkish",
    "pt": "Portuguese",
    "zh": "Chinese",
    "es": "Spanish",
}
FLORES_CODES = {
    "en": "eng_Latn",
    "de": "deu_Latn",
    "fr": "fra_Latn",
    "hi": "hin_Deva",
    "tr": "tur_Latn",
    "pt": "por_Latn",
    "zh": "zho_Hans",
    "es": "spa_Latn",
}
# Paper §5: related directions sharing the finetuned model's target language.
ZERO_SHOT_SOURCES = {"zh": ("fr", "de", "hi", "tr", "pt"), "de": ("fr", "zh", "hi", "tr", "pt")}


def _language(code: str, table: dict) -> str:
    if code not in table:
        raise ValueError(f"unknown language {code!r}; known: {sorted(table)}")
    return table[code]


def flores_sentences(root: str, language: str, split: str = "devtest") -> list[str]:
    """The sentences of one Flores-200 language file (`root/<split>/<code>.<split>`)."""
    path = os.path.join(root, split, f"{_language(language, FLORES_CODES)}.{split}")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Flores-200 file {path} not found; download and unpack flores200_dataset "
            "(https://github.com/facebookresearch/flores) and pass its directory"
        )
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def flores_pairs(root: str, source: str, target: str, split: str = "devtest"):
    """Aligned (source sentence, target sentence) pairs of one direction."""
    sources, targets = flores_sentences(root, source, split), flores_sentences(root, target, split)
    if len(sources) != len(targets):
        raise ValueError(
            f"Flores {split}: {source} has {len(sources)} lines, {target} {len(targets)}"
        )
    return list(zip(sources, targets, strict=True))


def tfds_pairs(name: str, split: str, source_key: str, target_key: str, data_dir=None):
    """(source, target) pairs of a TFDS translation dataset, e.g. ('wmt14_translate/de-en')."""
    import tensorflow_datasets as tfds  # heavy; only this reader needs it

    dataset = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
    return [
        (ex[source_key].decode("utf-8"), ex[target_key].decode("utf-8"))
        for ex in tfds.as_numpy(dataset)
    ]


def translation_input(sentence: str, source: str, target: str) -> str:
    """The finetuning tasks' prompted input for one sentence."""
    prefix = TRANSLATE_PROMPT.format(
        source_language=_language(source, LANGUAGE_NAMES),
        target_language=_language(target, LANGUAGE_NAMES),
    )
    return prefix + sentence.strip()


def few_shot_prompt(
    encode: Callable[[str], Sequence[int]],
    demonstrations: Sequence[tuple[str, str]],
    query_input: str,
    eos_id: int,
) -> list[int]:
    """Token ids of k (input, target) demonstrations and the query input (format above)."""
    tokens = []
    for demo_input, demo_target in demonstrations:
        tokens += [*encode(demo_input), eos_id, *encode(demo_target), eos_id]
    return tokens + [*encode(query_input), eos_id]


def choose_demonstrations(pool: Sequence, shots: int, seed: int) -> list:
    """`shots` items of the pool, the same for every query (seeded, without replacement)."""
    if shots > len(pool):
        raise ValueError(
            f"{shots}-shot prompts need {shots} demonstrations; the pool has {len(pool)}"
        )
    return random.Random(seed).sample(list(pool), shots)


def direction_examples(
    pairs: Sequence[tuple[str, str]],
    source: str,
    target: str,
    encode: Callable[[str], Sequence[int]],
    eos_id: int,
    shots: int = 0,
    demonstration_pairs: Sequence[tuple[str, str]] = (),
    seed: int = 0,
) -> list[Example]:
    """Examples of one translation direction, zero-shot (shots=0) or k-shot.

    Args:
      pairs: (source sentence, reference) queries.
      source, target: language codes ('fr', 'zh', ...).
      encode: text -> token ids (the model's vocabulary, without EOS).
      eos_id: the separator and terminator.
      shots: demonstrations per prompt.
      demonstration_pairs: the pool demonstrations are drawn from (disjoint from `pairs`).
      seed: fixes which demonstrations are used.

    Returns:
      Examples whose prompts follow the module docstring's format.
    """
    demos = [
        (translation_input(s, source, target), t)
        for s, t in choose_demonstrations(demonstration_pairs, shots, seed)
    ]
    examples = []
    for sentence, reference in pairs:
        query = translation_input(sentence, source, target)
        prompt = few_shot_prompt(encode, demos, query, eos_id)
        examples.append(Example(prompt=prompt, source=query, target=reference))
    return examples
