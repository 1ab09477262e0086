"""`translation_match`: an offline classification set derived from the embedded corpus.

"Is this German text a translation of this English text?" Two classes, balanced:

    label 1 (translation)  (english_i, german_i)       a true pair of debian_l10n translate_en_de
    label 0 (mismatch)     (english_j, german_σ(j))    σ a cyclic shift over a seeded order of
                                                       the negative half: never the true partner

Per split, a seeded permutation sends the first half of the pairs to positives and the second
half to negatives (each English string is used once). A negative whose German string equals
the true partner's (two sources with the same translation) or whose English equals the
partner's English is dropped, then positives are cut to the same count; the rows alternate
positive, negative, so any prefix of a split is balanced to within one example.

Domains (the origin of each pair, DEBIAN_L10N_CARD.md):

    in-domain   gettext catalog strings (program UI messages)    train / validation / test
    OOD         package synopses (one-line apt descriptions)      validation_ood / test_ood

The corpus split (a stable hash of the source string) is kept, so no test string appears in the
train pool or in the pretraining text. Synopses are as short as UI strings (median 43 vs 33
characters), so the OOD shift is the kind of text, not its length.
"""

import numpy as np

from ft_scaling.data import debian_corpus, debian_l10n

CONFIG = "translate_en_de"
LABEL_NAMES = ("mismatch", "translation")
IN_DOMAIN_ORIGIN = "catalog"
OOD_ORIGIN = "synopsis"
# Our split name -> (debian_l10n split, origin kind).
SPLITS = {
    "train": ("train", IN_DOMAIN_ORIGIN),
    "validation": ("validation", IN_DOMAIN_ORIGIN),
    "test": ("test", IN_DOMAIN_ORIGIN),
    "validation_ood": ("validation", OOD_ORIGIN),
    "test_ood": ("test", OOD_ORIGIN),
}


def _origin_kind(origin: str) -> str:
    return origin.split(":", 1)[0]


def source_pairs(split: str) -> list[tuple[str, str]]:
    """(English, German) pairs of one of SPLITS, in the corpus's stored order."""
    if split not in SPLITS:
        raise ValueError(f"translation_match has no split {split!r}; splits: {sorted(SPLITS)}")
    corpus_split, kind = SPLITS[split]
    return [
        (example["source"], example["target"])
        for example in debian_l10n.load_split(CONFIG, corpus_split)
        if _origin_kind(example.get("origin", "")) == kind
    ]


def match_examples(pairs: list[tuple[str, str]], seed: int, salt: str = "") -> list[dict]:
    """Balanced positive/negative rows built from aligned pairs (module docstring).

    Args:
      pairs: aligned (english, german) strings.
      seed: fixes which pairs become positives and which German strings the negatives get.
      salt: decorrelates splits that share a seed.

    Returns:
      Rows {"english", "german", "label"}, alternating label 1 and label 0.
    """
    rng = np.random.default_rng([seed, debian_corpus.stable_hash(salt) % (1 << 32)])
    order = rng.permutation(len(pairs))
    half = len(pairs) // 2
    positives = [pairs[i] for i in order[:half]]
    negative_sources = [pairs[i] for i in order[half : 2 * half]]
    negatives = []
    for index, (english, german) in enumerate(negative_sources):
        other_english, other_german = negative_sources[(index + 1) % len(negative_sources)]
        if other_german != german and other_english != english:
            negatives.append((english, other_german))
    rows = []
    for positive, negative in zip(positives, negatives, strict=False):
        rows.append({"english": positive[0], "german": positive[1], "label": 1})
        rows.append({"english": negative[0], "german": negative[1], "label": 0})
    return rows


def split_examples(split: str, seed: int = 0) -> list[dict]:
    """The rows of one split of translation_match (fixed by `seed`; the study uses 0)."""
    return match_examples(source_pairs(split), seed, salt=f"translation_match/{split}")
