"""D_f subsets: nested in size, fixed by seed, different across seeds, mixture mix kept."""

import numpy as np
import pytest
import seqio

import ft_scaling.data.tasks  # noqa: F401 - registers the tasks
from ft_scaling.data import subsets

SIZES = (100, 250, 500, 1000, 2000)


def test_indices_nest_for_five_sizes_and_differ_across_seeds():
    for seed in (0, 1, 2):
        previous = set()
        for size in SIZES:
            current = set(subsets.subset_indices(67_261, size, seed, salt="t").tolist())
            assert len(current) == size and previous <= current
            previous = current
    seed0 = set(subsets.subset_indices(67_261, 1000, 0, salt="t").tolist())
    seed1 = set(subsets.subset_indices(67_261, 1000, 1, salt="t").tolist())
    # Two random 1000-subsets of 67k overlap in about 1000 * 1000 / 67k = 15 items.
    assert len(seed0 & seed1) < 60
    again = subsets.subset_indices(67_261, 1000, 0, salt="t")
    np.testing.assert_array_equal(again, subsets.subset_indices(67_261, 1000, 0, salt="t"))


def _targets(name, size, seed):
    dataset = subsets.finetune_subset(name, "train", size, seed)
    # (document, summary): some packages share a synopsis, none shares both.
    return [
        (ex["inputs_pretokenized"], ex["targets_pretokenized"])
        for ex in dataset.as_numpy_iterator()
    ]


def test_task_subsets_nest_and_are_registered_tasks():
    # The smallest task (932 train examples) keeps the five dataset passes quick.
    previous = set()
    for size in (50, 100, 200, 400, 800):
        targets = _targets("debian_l10n_summarize_zh", size, seed=3)
        assert len(targets) == len(set(targets)) == size
        assert previous <= set(targets)
        previous = set(targets)
    other_seed = set(_targets("debian_l10n_summarize_zh", 100, seed=4))
    assert len(other_seed & set(_targets("debian_l10n_summarize_zh", 100, seed=3))) < 40
    name = subsets.register_finetune_subset("debian_l10n_summarize_zh", 400, 3)
    assert name == "debian_l10n_summarize_zh_df400_seed3"
    task = seqio.get_mixture_or_task(name)
    assert task.num_input_examples("train") == 400
    parent = seqio.get_mixture_or_task("debian_l10n_summarize_zh")
    assert task.num_input_examples("validation") == parent.num_input_examples("validation")


def test_apportion_is_house_monotone_and_proportional():
    weights = [220_887.0, 266_367.0, 392_902.0, 287_113.0]
    previous = [0, 0, 0, 0]
    for size in range(0, 3000, 7):
        parts = subsets.apportion(size, weights)
        assert sum(parts) == size
        assert all(p >= q for p, q in zip(parts, previous, strict=True))
        previous = parts
    parts = subsets.apportion(100_000, weights)
    quotas = np.array(weights) / sum(weights) * 100_000
    assert np.all(np.abs(np.array(parts) - quotas) < 1)


def test_mixture_subset_keeps_the_language_mix():
    sizes = subsets.member_sizes(seqio.get_mixture_or_task("debian_l10n_summarize"), 900)
    assert sizes == {
        "debian_l10n_summarize_en": 300,
        "debian_l10n_summarize_de": 300,
        "debian_l10n_summarize_fr": 300,
    }
    stats = subsets.subset_stats("debian_l10n_summarize", 900, seed=0)
    assert stats["examples"] == 900
    assert stats["inputs_tokens"] > stats["targets_tokens"] > 900


def test_bad_requests_name_the_problem():
    with pytest.raises(ValueError, match=r"'debian_l10n_summarize_zh' split 'train' has 932"):
        subsets.register_finetune_subset("debian_l10n_summarize_zh", 5000, 0)
    with pytest.raises(ValueError, match=r"unknown task or mixture 'wmt14_deen'.*wmt14_ende"):
        subsets.register_finetune_subset("wmt14_deen", 10, 0)
