"""Accuracy and Matthews correlation against hand counts and the textbook formulas."""

import math

import numpy as np
import pytest

from ft_scaling.classify import metrics


def test_binary_matthews_equals_the_phi_formula_on_a_hand_count():
    # tp = 3, tn = 2, fp = 1, fn = 2 (positive class 1).
    labels = [1, 1, 1, 1, 1, 0, 0, 0]
    predictions = [1, 1, 1, 0, 0, 0, 0, 1]
    tp, tn, fp, fn = 3, 2, 1, 2
    phi = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.matthews_correlation(labels, predictions) == pytest.approx(phi, abs=1e-12)
    assert phi == pytest.approx(4 / math.sqrt(4 * 5 * 3 * 4))
    assert metrics.accuracy(labels, predictions) == 5 / 8


def test_three_class_matthews_matches_gorodkin_on_a_confusion_matrix():
    # Confusion matrix (rows true, columns predicted), counted by hand from the lists below.
    labels = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    predictions = [0, 0, 1, 1, 1, 2, 1, 2, 0, 2]
    matrix = metrics.confusion_matrix(labels, predictions, 3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 3, 1], [1, 0, 2]])
    s, c = 10, 7
    t, p = np.array([3, 4, 3]), np.array([3, 4, 3])
    expected = (c * s - p @ t) / math.sqrt((s * s - p @ p) * (s * s - t @ t))
    assert metrics.matthews_correlation(labels, predictions) == pytest.approx(expected)
    assert expected == pytest.approx(36 / 66)


def test_matthews_edge_cases():
    assert metrics.matthews_correlation([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0
    assert metrics.matthews_correlation([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
    # A constant prediction has no correlation (a zero denominator is defined as 0).
    assert metrics.matthews_correlation([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0


def test_scores_argmax_and_binary_collapse():
    log_probs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]]))
    assert metrics.scores(log_probs, [0, 2, 1])["accuracy"] == 1.0
    # HANS: neutral (1) and contradiction (2) both mean non-entailment (1).
    binary = metrics.scores(log_probs, [0, 1, 1], binary=True)
    assert binary["accuracy"] == 1.0 and binary["examples"] == 3


def test_accuracy_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="equally many"):
        metrics.accuracy([0, 1], [0])
