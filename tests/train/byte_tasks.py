"""Small seqio tasks over real English text with a byte vocabulary, for trainer tests.

They go through the same seqio interface as the real tasks, need no files, and are registered
once per process (`register()` is idempotent).
"""

import seqio
import tensorflow as tf

TEXT = (
    "The study finetunes decoder-only language models of several sizes with three methods, "
    "full-model tuning, prompt tuning and low-rank adaptation, on translation and summarization, "
    "sweeps the amount of finetuning data, and fits a multiplicative joint scaling law in the "
    "model size and the data size. Model scaling helps more than pretraining data scaling, and "
    "the best method depends on the task and on how much finetuning data there is."
).split(". ")
VOCAB = seqio.ByteVocabulary()
LM_TASK, PREFIX_TASK = "test_bytes_lm", "test_bytes_reverse"


def _sentences(split: str, copies: int):
    rows = [f"{i}: {s}" for i in range(copies) for s in TEXT]
    held = {"train": lambda i: i % 5 != 0, "validation": lambda i: i % 5 == 0}[split]
    return [r for i, r in enumerate(rows) if held(i)]


def _lm_source(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"targets": _sentences(split, 8)})


def _reverse_source(split, shuffle_files, seed=None):
    del shuffle_files, seed
    words = [" ".join(s.split()[:6]) for s in _sentences(split, 8)]
    reversed_ = [" ".join(reversed(w.split())) for w in words]
    return tf.data.Dataset.from_tensor_slices({"inputs": words, "targets": reversed_})


def register() -> None:
    if LM_TASK in seqio.TaskRegistry.names():
        return
    feature = seqio.Feature(VOCAB, add_eos=True)
    preprocess = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
    seqio.TaskRegistry.add(
        LM_TASK,
        source=seqio.FunctionDataSource(_lm_source, splits=("train", "validation")),
        output_features={"targets": feature},
        preprocessors=preprocess,
    )
    seqio.TaskRegistry.add(
        PREFIX_TASK,
        source=seqio.FunctionDataSource(_reverse_source, splits=("train", "validation")),
        output_features={"inputs": feature, "targets": feature},
        preprocessors=preprocess,
    )
