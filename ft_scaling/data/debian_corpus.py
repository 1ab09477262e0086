"""Assembles the `debian_l10n` corpus from Debian's localisation data, and reads/writes it.

    sources (debian_sources.py)          configs (each with train / validation / test)
    .mo catalogs  en->de, en->zh_CN  -+-> translate_en_de, translate_en_zh   {source, target}
    Translation-{en,de,fr,zh_CN}     -+-> summarize_{en,de,fr,zh}            {document, summary}
      (shared Description-md5)       -'    + synopsis/paragraph pairs into translate_*
    train items only, minus held-out --> pretrain_en_de, pretrain_en_zh     {text}

Splits come from a stable hash (sha256) of a key: the English source text for translation
pairs and the English description's md5 for summarization, so the same item lands in the same
split on every machine and in every build, and all languages of one package share a split.
Pretraining text is made of train items only, and any line equal to a validation or test
string of any config is removed from it.
"""

import collections
import hashlib
import json
import lzma
import os
from collections.abc import Iterable, Mapping

from ft_scaling import files
from ft_scaling.data import debian_sources

SPLITS = ("train", "validation", "test")
# Per-mille buckets: 2% validation, 2% test, the rest train.
VALIDATION_PER_MILLE = 20
TEST_PER_MILLE = 20
TRANSLATE_CONFIGS = {"translate_en_de": "de", "translate_en_zh": "zh_CN"}
SUMMARIZE_CONFIGS = {
    "summarize_en": "en",
    "summarize_de": "de",
    "summarize_fr": "fr",
    "summarize_zh": "zh_CN",
}
PRETRAIN_CONFIGS = {
    "pretrain_en_de": ("translate_en_de", "summarize_en", "summarize_de"),
    "pretrain_en_zh": ("translate_en_zh", "summarize_en", "summarize_zh"),
}
CONFIGS = (*TRANSLATE_CONFIGS, *SUMMARIZE_CONFIGS, *PRETRAIN_CONFIGS)
# Summaries shorter than a few words and documents longer than a page are not useful
# summarization examples; pairs longer than MAX_PAIR_CHARS are help pages, not UI strings.
MIN_DOCUMENT_CHARS = 40
MAX_DOCUMENT_CHARS = 4000
MAX_PAIR_CHARS = 300

Corpus = dict[str, dict[str, list[dict[str, str]]]]


def stable_hash(key: str) -> int:
    """A 64-bit hash of `key` that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def split_of(key: str) -> str:
    """The split an item with this key belongs to."""
    bucket = stable_hash(key) % 1000
    if bucket < VALIDATION_PER_MILLE:
        return "validation"
    if bucket < VALIDATION_PER_MILLE + TEST_PER_MILLE:
        return "test"
    return "train"


def _pick_targets(pairs: Iterable[tuple[str, str, str]]) -> dict[str, tuple[str, str]]:
    """One target per source: the most frequent translation, ties broken alphabetically.

    Args:
      pairs: (source, target, origin) triples, already cleaned.

    Returns:
      source -> (target, origin).
    """
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    origins: dict[tuple[str, str], str] = {}
    for source, target, origin in pairs:
        counts[source][target] += 1
        origins.setdefault((source, target), origin)
    chosen = {}
    for source, counter in counts.items():
        target = min(counter, key=lambda t: (-counter[t], t))
        chosen[source] = (target, origins[(source, target)])
    return chosen


def description_pairs(
    english: Mapping[str, debian_sources.Description],
    translated: Iterable[debian_sources.Description],
) -> list[tuple[str, str, str]]:
    """En->X pairs from descriptions sharing a Description-md5: the synopsis and, when the
    paragraph counts agree, each paragraph."""
    pairs = []
    for description in translated:
        original = english.get(description.md5)
        if original is None:
            continue
        pairs.append((original.synopsis, description.synopsis, "synopsis"))
        if len(original.paragraphs) == len(description.paragraphs):
            pairs.extend(
                (en, xx, "paragraph")
                for en, xx in zip(original.paragraphs, description.paragraphs, strict=True)
            )
    return pairs


def translation_examples(
    catalog: Iterable[debian_sources.CatalogEntry], described: Iterable[tuple[str, str, str]]
) -> dict[str, list[dict[str, str]]]:
    """Cleans, deduplicates and splits En->X pairs from catalogs and descriptions."""
    raw = [(e.source, e.target, f"catalog:{e.domain}") for e in catalog]
    cleaned = []
    for source, target, origin in [*raw, *described]:
        pair = debian_sources.clean_pair(source, target, max_chars=MAX_PAIR_CHARS)
        if pair is not None:
            cleaned.append((*pair, origin))
    splits: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for source, (target, origin) in sorted(_pick_targets(cleaned).items()):
        example = {"id": f"{stable_hash(source):016x}", "source": source, "target": target}
        splits[split_of(source)].append({**example, "origin": origin})
    return splits


def summarization_examples(
    descriptions: Iterable[debian_sources.Description],
) -> dict[str, list[dict[str, str]]]:
    """Long description -> synopsis examples, split by the English description's md5."""
    splits: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    seen = set()
    for description in descriptions:
        document = "\n".join(description.paragraphs)
        summary = description.synopsis.strip()
        if not (MIN_DOCUMENT_CHARS <= len(document) <= MAX_DOCUMENT_CHARS):
            continue
        if not debian_sources.has_words(summary) or (document, summary) in seen:
            continue
        seen.add((document, summary))
        example = {"id": description.md5, "document": document, "summary": summary}
        splits[split_of(description.md5)].append({**example, "package": description.package})
    return splits


def _texts_of(example: Mapping[str, str]) -> list[str]:
    """The natural-language strings of one example, split into lines."""
    fields = ("source", "target", "document", "summary", "text")
    return [line for f in fields if f in example for line in example[f].split("\n")]


def held_out_strings(corpus: Corpus) -> set[str]:
    """Every line of every validation and test example of every config."""
    return {
        line
        for config, splits in corpus.items()
        for split in ("validation", "test")
        for example in splits.get(split, [])
        for line in _texts_of(example)
    }


def pretrain_examples(corpus: Corpus, parts: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    """Monolingual LM documents from the train split of `parts`, minus held-out lines.

    Each translation pair gives two one-line documents (one per language, so the LM never sees
    aligned pairs), each description one document. A line equal to any held-out string of any
    config is dropped, so no validation or test item appears in the pretraining text. Held-out
    documents go to the pretraining validation/test splits for perplexity.
    """
    held_out = held_out_strings(corpus)
    out: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    seen = set()
    for split in SPLITS:
        for part in parts:
            for example in corpus[part][split]:
                docs = (
                    [example["source"], example["target"]]
                    if "source" in example
                    else [example["document"]]
                )
                for doc in docs:
                    if split == "train":
                        doc = "\n".join(ln for ln in doc.split("\n") if ln not in held_out)
                    if doc and doc not in seen:
                        seen.add(doc)
                        out[split].append({"id": f"{stable_hash(doc):016x}", "text": doc})
    return out


def build_corpus(locale_dir: str, lists_dir: str) -> Corpus:
    """Builds every config of `debian_l10n` from system sources.

    Args:
      locale_dir: gettext locale tree, usually `/usr/share/locale`.
      lists_dir: apt list directory, usually `/var/lib/apt/lists`.

    Returns:
      config -> split -> examples (lists of dicts of strings, in a deterministic order).
    """
    descriptions = {
        config: debian_sources.read_descriptions(lists_dir, lang)
        for config, lang in SUMMARIZE_CONFIGS.items()
    }
    english = {d.md5: d for d in descriptions["summarize_en"]}
    corpus: Corpus = {}
    for config, lang in TRANSLATE_CONFIGS.items():
        described = description_pairs(english, descriptions[f"summarize_{lang[:2]}"])
        catalog = debian_sources.read_catalogs(locale_dir, lang)
        corpus[config] = translation_examples(catalog, described)
    for config, items in descriptions.items():
        corpus[config] = summarization_examples(items)
    for config, parts in PRETRAIN_CONFIGS.items():
        corpus[config] = pretrain_examples(corpus, parts)
    return corpus


def cap_corpus(corpus: Corpus, caps: Mapping[str, Mapping[str, int]]) -> Corpus:
    """A stable sample: per config and split, the `caps[config][split]` examples of smallest
    hash (order preserved), so a smaller snapshot is a subset of a larger one."""
    capped: Corpus = {}
    for config, splits in corpus.items():
        capped[config] = {}
        for split, examples in splits.items():
            cap = caps.get(config, {}).get(split)
            if cap is not None and len(examples) > cap:
                keep = sorted(examples, key=lambda ex: stable_hash(ex["id"]))[:cap]
                ids = {ex["id"] for ex in keep}
                examples = [ex for ex in examples if ex["id"] in ids]
            capped[config][split] = examples
    return capped


def split_path(root: str, config: str, split: str) -> str:
    return os.path.join(root, config, f"{split}.jsonl.xz")


def write_corpus(corpus: Corpus, root: str, preset: int = 6) -> dict[str, dict[str, int]]:
    """Writes one xz-compressed JSONL file per config and split; returns the counts.

    Args:
      corpus: config -> split -> examples.
      root: output directory.
      preset: xz level; 6 for the committed snapshot (bytes matter), lower for local builds.

    Returns:
      config -> split -> number of examples written.
    """
    counts: dict[str, dict[str, int]] = {}
    for config, splits in corpus.items():
        for split, examples in splits.items():
            lines = (json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in examples)
            # Compressed whole, then written atomically: the same bytes as a streamed xz file.
            data = lzma.compress("".join(lines).encode("utf-8"), preset=preset)
            files.atomic_write_bytes(split_path(root, config, split), data)
            counts.setdefault(config, {})[split] = len(examples)
    return counts


def read_split(root: str, config: str, split: str) -> list[dict[str, str]]:
    """Reads one config/split written by `write_corpus`."""
    path = split_path(root, config, split)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"debian_l10n: no file {path} for config {config!r} split {split!r}. "
            "Rebuild with: ft-scaling data build debian_l10n"
        )
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
