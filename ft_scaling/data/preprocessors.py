"""seqio preprocessors: raw examples -> `inputs`/`targets` text, before tokenization.

Prompts (the paper states only the summarization one, PAPER.md §2; the MT prompt is our
choice, T5-style and one line, so that short UI strings stay short):

    translation     inputs  = "Translate English to German: {source}"   targets = "{target}"
    summarization   inputs  = "Summarize the following document in {language}: {document}"
    language model  targets = "{text}"                                  (no inputs)

The prefix-LM converter concatenates inputs and targets into one sequence and puts the loss on
the target tokens only; `inputs` ends with EOS (see tasks.py), which separates the two.
"""

import tensorflow as tf

TRANSLATE_PROMPT = "Translate {source_language} to {target_language}: "
SUMMARIZE_PROMPT = "Summarize the following document in {language}: "


def translate(
    dataset: tf.data.Dataset,
    source_key: str,
    target_key: str,
    source_language: str,
    target_language: str,
) -> tf.data.Dataset:
    """Maps {source_key, target_key} examples to prompted {inputs, targets}.

    Args:
      dataset: raw examples holding string features `source_key` and `target_key`.
      source_key: feature with the source sentence, e.g. "en".
      target_key: feature with the reference translation, e.g. "de".
      source_language: English name used in the prompt, e.g. "English".
      target_language: English name used in the prompt, e.g. "German".

    Returns:
      Examples with string features `inputs` and `targets`.
    """
    prefix = TRANSLATE_PROMPT.format(
        source_language=source_language, target_language=target_language
    )

    def _map(example):
        return {
            "inputs": tf.strings.join([prefix, tf.strings.strip(example[source_key])]),
            "targets": tf.strings.strip(example[target_key]),
        }

    return dataset.map(_map, num_parallel_calls=tf.data.AUTOTUNE)


def summarize(
    dataset: tf.data.Dataset, document_key: str, summary_key: str, language: str
) -> tf.data.Dataset:
    """Maps {document_key, summary_key} examples to prompted {inputs, targets}.

    Args:
      dataset: raw examples.
      document_key: feature with the article, e.g. "text" (MLSUM) or "article" (CNN/DM).
      summary_key: feature with the reference summary.
      language: English name of the summary language, e.g. "German" (PAPER.md §2 prefix).

    Returns:
      Examples with string features `inputs` and `targets`.
    """
    prefix = SUMMARIZE_PROMPT.format(language=language)

    def _map(example):
        return {
            "inputs": tf.strings.join([prefix, tf.strings.strip(example[document_key])]),
            "targets": tf.strings.strip(example[summary_key]),
        }

    return dataset.map(_map, num_parallel_calls=tf.data.AUTOTUNE)


def lm_text(dataset: tf.data.Dataset, text_key: str = "text") -> tf.data.Dataset:
    """Maps {text_key} examples to targets-only language-model examples."""
    return dataset.map(lambda ex: {"targets": ex[text_key]}, num_parallel_calls=tf.data.AUTOTUNE)


def drop_empty(dataset: tf.data.Dataset, keys: tuple[str, ...] = ("targets",)) -> tf.data.Dataset:
    """Drops examples where any of `keys` is the empty string (a few raw WMT lines are)."""

    def _keep(example):
        return tf.reduce_all([tf.strings.length(example[k]) > 0 for k in keys])

    return dataset.filter(_keep)


def strip_text(output: str, example=None, is_target: bool = False) -> str:
    """Postprocessor: decoded predictions and reference strings, whitespace-stripped."""
    del example, is_target  # same treatment for predictions and references
    if isinstance(output, bytes):
        output = output.decode("utf-8")
    return output.strip()


def split_targets_to_length(
    dataset: tf.data.Dataset, sequence_length: dict[str, int]
) -> tf.data.Dataset:
    """Cuts each tokenized `targets` into chunks of at most `sequence_length["targets"]`.

    Language-model documents longer than the sequence would otherwise be truncated; chunking
    keeps every token, and the feature converter packs the chunks (pack=True).

    Args:
      dataset: examples with an int `targets` vector.
      sequence_length: must hold "targets".

    Returns:
      One example {"targets": chunk} per chunk, in order.
    """
    length = sequence_length["targets"]

    def _chunks(example):
        tokens = example["targets"]  # [num_tokens]
        num_tokens = tf.size(tokens)
        num_chunks = tf.maximum(1, (num_tokens + length - 1) // length)
        last = num_tokens - length * (num_chunks - 1)
        row_lengths = tf.concat([tf.fill([num_chunks - 1], length), [last]], axis=0)
        chunks = tf.RaggedTensor.from_row_lengths(tokens, row_lengths)  # [num_chunks, None]
        return tf.data.Dataset.from_tensor_slices({"targets": chunks})

    return dataset.flat_map(_chunks)
