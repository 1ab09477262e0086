"""Prefix-LM batches: the loss mask covers exactly the target tokens; LM batches pack."""

import numpy as np
import seqio

import ft_scaling.data.tasks  # noqa: F401 - registers the tasks

LENGTHS = {"inputs": 64, "targets": 64}


def _task_examples(name, split, count):
    task = seqio.get_mixture_or_task(name)
    return list(
        task.get_dataset(LENGTHS, split=split, shuffle=False).take(count).as_numpy_iterator()
    )


def test_prefix_lm_loss_mask_covers_exactly_the_targets():
    converter = seqio.PrefixLMFeatureConverter(loss_on_targets_only=True, pack=False)
    task = seqio.get_mixture_or_task("debian_l10n_translate_en_de")
    dataset = task.get_dataset(LENGTHS, split="validation", shuffle=False).take(50)
    batches = list(converter(dataset, LENGTHS).as_numpy_iterator())
    examples = _task_examples("debian_l10n_translate_en_de", "validation", 50)
    assert len(batches) == len(examples) == 50
    for example, batch in zip(examples, batches, strict=True):
        inputs, targets = example["inputs"], example["targets"]
        weights = batch["decoder_loss_weights"]
        assert batch["decoder_target_tokens"].shape == (128,)
        # The sequence is inputs (ending in EOS) then targets; the loss is on targets only.
        start = len(inputs)
        np.testing.assert_array_equal(
            np.flatnonzero(weights), np.arange(start, start + len(targets))
        )
        np.testing.assert_array_equal(batch["decoder_target_tokens"][weights == 1], targets)
        assert batch["decoder_input_tokens"][0] == 0  # shifted right
        assert int(weights.sum()) == len(targets)


def test_pretraining_task_packs_targets_only_documents():
    task = seqio.get_mixture_or_task("debian_l10n_pretrain_en_de")
    assert set(task.output_features) == {"targets"}
    lengths = {"targets": 64}
    dataset = task.get_dataset(lengths, split="validation", shuffle=False)
    packed = seqio.DecoderFeatureConverter(pack=True)(dataset, lengths)
    batch = next(packed.as_numpy_iterator())
    assert set(batch) == {
        "decoder_input_tokens",
        "decoder_target_tokens",
        "decoder_loss_weights",
        "decoder_segment_ids",
        "decoder_positions",
    }
    assert batch["decoder_segment_ids"].max() >= 2  # several documents share the row
    # Every chunk fits the length: long documents are cut, not truncated away.
    chunks = list(dataset.as_numpy_iterator())
    assert max(len(c["targets"]) for c in chunks) == 64
