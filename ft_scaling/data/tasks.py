"""Registers the study's seqio tasks and mixtures. `import ft_scaling.data.tasks` is idempotent.

    name                          source                                 features   metric
    wmt14_ende                    TFDS wmt14_translate/de-en, En->De     in, tgt    BLEU 13a
    wmt19_enzh                    TFDS wmt19_translate/zh-en, En->Zh     in, tgt    BLEU zh
    mlsum (mixture of mlsum_{de,es,fr,en})  MLSUM De/Es/Fr + CNN/DM       in, tgt    ROUGE-L
    debian_l10n_translate_en_{de,zh}        shipped debian_l10n snapshot in, tgt    BLEU
    debian_l10n_summarize_{en,de,fr,zh}     (mixture debian_l10n_summarize: en+de+fr)  ROUGE-L
    debian_l10n_pretrain_en_{de,zh}         LM text, train items only    tgt        -
    hf_<digest>_<name>            <name> in an HF checkpoint's tokenizer (register_hf_variant)

Splits (PAPER.md §2, Table 1a): wmt14_ende validation = TFDS validation (newstest2013), test =
newstest2020+2021+2022 from sacrebleu (first reference); wmt19_enzh validation = newsdev2017
(sacrebleu "wmt17/dev"), test = newstest2020-2022; MLSUM/CNN-DM use their official dev/test
splits. MLSUM French is not in TFDS (GEM ships only de and es, and TFDS's Hugging Face wrapper
needs the `datasets` package, which we do not depend on), so it is read from a local copy of the
official release: $FT_SCALING_MLSUM_FR_DIR/fr_{train,val,test}.jsonl ({"text", "summary", ...}).

Features: `inputs` ends with EOS, which separates prompt and target in the concatenated
prefix-LM sequence; `targets` ends with EOS. Vocabularies: `vocab.get_vocabulary`
("debian_l10n_ende" for En/De/Es/Fr, "debian_l10n_enzh" for En/Zh; Spanish and French fall back
to bytes where pieces are missing). The mixtures weight tasks by their train sizes, so sampling
keeps the language mix of the full data (PAPER.md §2).
"""

import dataclasses
import functools
import os

import seqio
import tensorflow as tf

from ft_scaling.data import (
    debian_corpus,
    debian_l10n,
    preprocessors,
    sources,
    subsets,
    task_metrics,
)
from ft_scaling.data.vocab import get_vocabulary

DEFAULT_FEATURE_LENGTHS = {"inputs": 256, "targets": 256}  # PAPER.md §2, Table 1a "Length"
WMT_TEST_SETS = ("wmt20", "wmt21", "wmt22")  # newstest2020-2022, PAPER.md Table 1a
MLSUM_FR_DIR_ENV = "FT_SCALING_MLSUM_FR_DIR"
MLSUM_FR_HELP = (
    "MLSUM French is read from a local copy of the official release: download fr_train.zip, "
    "fr_val.zip, fr_test.zip from https://github.com/ThomasScialom/MLSUM, unzip the "
    f"fr_*.jsonl files into one directory and set {MLSUM_FR_DIR_ENV} to it."
)
_SAME_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
LANGUAGE_NAMES = {"en": "English", "de": "German", "es": "Spanish", "fr": "French", "zh": "Chinese"}


def output_features(vocabulary_name: str, with_inputs: bool = True) -> dict[str, seqio.Feature]:
    """`inputs` (optional) and `targets`, both ending with EOS, in the named vocabulary."""
    vocabulary = get_vocabulary(vocabulary_name)
    features = {"targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}
    if with_inputs:
        features["inputs"] = seqio.Feature(vocabulary=vocabulary, add_eos=True)
    return features


def _add_task(name, source, text_preprocessor, vocabulary_name, metric_fns=()):
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            text_preprocessor,
            preprocessors.drop_empty,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=output_features(vocabulary_name),
        postprocess_fn=preprocessors.strip_text,
        metric_fns=list(metric_fns),
    )


def _add_mixture(name, task_names):
    if name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(name, [(t, sources.train_examples_rate) for t in task_names])


def _tfds_source(name: str, split_map: dict, extra_loaders: dict | None = None):
    loaders = {ours: sources.tfds_loader(name, theirs) for ours, theirs in split_map.items()}
    counters = {ours: sources.tfds_counter(name, theirs) for ours, theirs in split_map.items()}
    loaders.update(extra_loaders or {})
    return sources.SplitSource(loaders, counters)


def register_wmt() -> None:
    """wmt14_ende and wmt19_enzh (PAPER.md §2)."""
    wmt14 = _tfds_source(
        "wmt14_translate/de-en:1.0.0",
        {"train": "train", "validation": "validation"},
        {"test": sources.sacrebleu_loader(WMT_TEST_SETS, "en-de")},
    )
    translate_de = functools.partial(
        preprocessors.translate,
        source_key="en",
        target_key="de",
        source_language="English",
        target_language="German",
    )
    _add_task("wmt14_ende", wmt14, translate_de, "debian_l10n_ende", [task_metrics.bleu_13a])
    wmt19 = _tfds_source(
        "wmt19_translate/zh-en:1.0.0",
        {"train": "train"},
        {
            "validation": sources.sacrebleu_loader(("wmt17/dev",), "en-zh"),
            "test": sources.sacrebleu_loader(WMT_TEST_SETS, "en-zh"),
        },
    )
    translate_zh = functools.partial(
        preprocessors.translate,
        source_key="en",
        target_key="zh",
        source_language="English",
        target_language="Chinese",
    )
    _add_task("wmt19_enzh", wmt19, translate_zh, "debian_l10n_enzh", [task_metrics.bleu_zh])


def _mlsum_fr_source() -> sources.SplitSource:
    def path(split):
        # The directory is looked up when read, not at import, so it can be set late.
        root = os.environ.get(MLSUM_FR_DIR_ENV, os.path.expanduser("~/ft_scaling_data/mlsum_fr"))
        return os.path.join(root, f"fr_{split}.jsonl")

    def records(split):
        return lambda: sources.jsonl_records(path(split), MLSUM_FR_HELP)

    def counter(split):
        return lambda: sources.count_lines(path(split), MLSUM_FR_HELP)

    splits = {"train": "train", "validation": "val", "test": "test"}
    loaders = {
        ours: sources.records_loader(records(theirs), ("text", "summary"))
        for ours, theirs in splits.items()
    }
    counters = {ours: counter(theirs) for ours, theirs in splits.items()}
    return sources.SplitSource(loaders, counters)


def register_mlsum() -> None:
    """The mlsum mixture: MLSUM de/es/fr + CNN/DailyMail (en), PAPER.md §2."""
    parts = {
        "de": (_tfds_source("gem/mlsum_de", _SAME_SPLITS), "text", "target"),
        "es": (_tfds_source("gem/mlsum_es", _SAME_SPLITS), "text", "target"),
        "fr": (_mlsum_fr_source(), "text", "summary"),
        "en": (_tfds_source("cnn_dailymail:3.4.0", _SAME_SPLITS), "article", "highlights"),
    }
    for lang, (source, document_key, summary_key) in parts.items():
        summarize = functools.partial(
            preprocessors.summarize,
            document_key=document_key,
            summary_key=summary_key,
            language=LANGUAGE_NAMES[lang],
        )
        _add_task(f"mlsum_{lang}", source, summarize, "debian_l10n_ende", [task_metrics.rouge_l])
    _add_mixture("mlsum", [f"mlsum_{lang}" for lang in parts])


def _debian_source(config: str, fields: tuple[str, ...]) -> sources.SplitSource:
    load = functools.partial(debian_l10n.load_split, config)
    loaders = {
        s: sources.records_loader(functools.partial(load, s), fields) for s in debian_corpus.SPLITS
    }
    counters = {s: (lambda s=s: len(load(s))) for s in debian_corpus.SPLITS}
    return sources.SplitSource(loaders, counters)


def register_debian_l10n() -> None:
    """The debian_l10n translation, summarization and pretraining tasks (snapshot data)."""
    for config, lang in debian_corpus.TRANSLATE_CONFIGS.items():
        target = lang[:2]
        translate = functools.partial(
            preprocessors.translate,
            source_key="source",
            target_key="target",
            source_language="English",
            target_language=LANGUAGE_NAMES[target],
        )
        metric = task_metrics.bleu_zh if target == "zh" else task_metrics.bleu_13a
        source = _debian_source(config, ("id", "source", "target"))
        _add_task(f"debian_l10n_{config}", source, translate, f"debian_l10n_en{target}", [metric])
    for config, lang in debian_corpus.SUMMARIZE_CONFIGS.items():
        target = lang[:2]
        summarize = functools.partial(
            preprocessors.summarize,
            document_key="document",
            summary_key="summary",
            language=LANGUAGE_NAMES[target],
        )
        vocabulary_name = "debian_l10n_enzh" if target == "zh" else "debian_l10n_ende"
        source = _debian_source(config, ("id", "document", "summary"))
        _add_task(
            f"debian_l10n_{config}", source, summarize, vocabulary_name, [task_metrics.rouge_l]
        )
    summarize_tasks = [f"debian_l10n_summarize_{lang}" for lang in ("en", "de", "fr")]
    _add_mixture("debian_l10n_summarize", summarize_tasks)
    for config in debian_corpus.PRETRAIN_CONFIGS:
        _add_pretrain_task(f"debian_l10n_{config}", config)


def _add_pretrain_task(name: str, config: str) -> None:
    if name in seqio.TaskRegistry.names():
        return
    vocabulary_name = "debian_l10n_" + config.split("_", 1)[1].replace("_", "")
    seqio.TaskRegistry.add(
        name,
        source=_debian_source(config, ("id", "text")),
        preprocessors=[
            preprocessors.lm_text,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            # EOS marks the end of a document; long documents are then cut into
            # targets-length chunks (nothing dropped) that the converter packs.
            seqio.preprocessors.append_eos,
            preprocessors.split_targets_to_length,
        ],
        output_features=output_features(vocabulary_name, with_inputs=False),
    )


def register_hf_variant(name: str, directory: str) -> str:
    """Registers (once) task or mixture `name` in HF checkpoint `directory`'s tokenizer.

    The variant `hf_<digest>_<name>` keeps the source, splits, preprocessing and metrics; every
    output feature's vocabulary becomes the checkpoint's tokenizer.json (refused when it has
    more ids than config.json's vocab_size). When the tokenizer adds a BOS (Llama, Gemma) the
    BOS begins each sequence: prepended to `inputs`, or to `targets` of a targets-only task. A
    mixture's variant mixes its members' variants at the members' rates, and D_f subsets of
    a variant hold the same examples as the parent's (subsets.share_examples).

    Args:
      name: a registered task or mixture, e.g. "wmt14_ende" or "mlsum".
      directory: a local HF checkpoint directory holding tokenizer.json.

    Returns:
      The variant's registered name.
    """
    from ft_scaling.data import hf_vocab  # noqa: PLC0415  (tokenizers: an optional dependency)

    return _hf_variant(name, hf_vocab.checkpoint_vocabulary(directory))


def _hf_variant(name: str, vocabulary) -> str:
    variant = f"hf_{vocabulary.digest}_{name}"  # ends as the parent (eval reads its language there)
    provider = subsets.get_task_or_mixture(name)  # an unknown name lists the registered ones
    registered = seqio.TaskRegistry.names() | seqio.MixtureRegistry.names()
    if variant not in registered and isinstance(provider, seqio.Mixture):
        members = [
            (_hf_variant(task.name, vocabulary), lambda _, task=task: provider.get_rate(task))
            for task in provider.tasks
        ]
        seqio.MixtureRegistry.add(variant, members)
    elif variant not in registered:
        seqio.TaskRegistry.add_provider(variant, _task_in(provider, variant, vocabulary))
        subsets.share_examples(variant, name)
    return variant


def _task_in(task: seqio.Task, name: str, vocabulary) -> seqio.Task:
    """`task` renamed, with every feature in `vocabulary` and its BOS (when it adds one)."""
    if not task.output_features:
        raise ValueError(f"task {task.name!r} has no tokenized features to give a vocabulary")
    features = {
        key: dataclasses.replace(feature, vocabulary=vocabulary)
        for key, feature in task.output_features.items()
    }
    steps = list(task.preprocessors)
    if vocabulary.add_bos:
        if seqio.preprocessors.tokenize not in steps:
            raise ValueError(f"task {task.name!r} does not tokenize with seqio: no place for BOS")
        first = "inputs" if "inputs" in features else "targets"
        bos = functools.partial(prepend_bos, key=first, bos_id=vocabulary.bos_id)
        steps.insert(steps.index(seqio.preprocessors.tokenize) + 1, bos)
    return task.replace(name=name, output_features=features, preprocessors=steps)


def prepend_bos(dataset: tf.data.Dataset, key: str, bos_id: int) -> tf.data.Dataset:
    """Puts `bos_id` before the tokens of feature `key` (after tokenize, before trimming)."""

    def _map(example):
        ids = example[key]
        return {**example, key: tf.concat([tf.constant([bos_id], ids.dtype), ids], axis=0)}

    return dataset.map(_map, num_parallel_calls=tf.data.AUTOTUNE)


register_wmt()
register_mlsum()
register_debian_l10n()
