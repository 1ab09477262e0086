"""Few-shot subsets: per-class balance, nesting over sizes, seeds, and the unlabeled pool."""

import numpy as np
import pytest

from ft_scaling.classify import subsets

LABELS = np.random.default_rng(0).integers(0, 3, 600)


def test_subsets_are_balanced_and_nested():
    previous = set()
    for per_class in (16, 32, 64, 128):
        index = subsets.per_class_subset(LABELS, 3, per_class, seed=1, salt="mnli")
        assert len(index) == len(set(index)) == 3 * per_class
        np.testing.assert_array_equal(np.bincount(LABELS[index], minlength=3), [per_class] * 3)
        assert previous <= set(index.tolist())
        previous = set(index.tolist())
    # Interleaved by class: 0, 1, 2, 0, 1, 2, ...
    np.testing.assert_array_equal(LABELS[index[:6]], [0, 1, 2, 0, 1, 2])


def test_seeds_draw_different_subsets_and_are_reproducible():
    a = subsets.per_class_subset(LABELS, 3, 16, seed=0)
    b = subsets.per_class_subset(LABELS, 3, 16, seed=1)
    np.testing.assert_array_equal(a, subsets.per_class_subset(LABELS, 3, 16, seed=0))
    assert set(a.tolist()) != set(b.tolist())


def test_too_few_examples_of_a_class_is_an_error():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ValueError, match=r"classes \{1: 3\}"):
        subsets.per_class_subset(labels, 2, 4, seed=0)


def test_unlabeled_pool_avoids_the_labelled_subset():
    index = subsets.per_class_subset(LABELS, 3, 32, seed=0)
    pool = subsets.unlabeled_pool(len(LABELS), index, 200, seed=0)
    assert len(set(pool.tolist())) == 200
    assert not set(pool.tolist()) & set(index.tolist())
    with pytest.raises(ValueError, match="only 504 remain"):
        subsets.unlabeled_pool(len(LABELS), index, 600, seed=0)
