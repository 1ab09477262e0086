"""Classification metrics: accuracy and Matthews correlation (GLUE's CoLA metric).

Matthews correlation for K classes (Gorodkin 2004; equals the binary phi coefficient for K = 2)
from the confusion matrix C (rows = true class, columns = prediction), s = number of examples,
c = correct predictions, t_k = true count of class k, p_k = predicted count of class k:

    MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))

and 0 when a denominator factor is 0 (every prediction, or every label, is one class), as
scikit-learn defines it.
"""

from collections.abc import Sequence

import numpy as np

METRICS = ("accuracy", "matthews")


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int):
    """[num_classes, num_classes] counts; rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.size == 0:
        raise ValueError(
            f"need equally many labels and predictions, got {labels.shape}, {predictions.shape}"
        )
    return float(np.mean(labels == predictions))


def matthews_correlation(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Matthews correlation coefficient (formula above), in [-1, 1]."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    num_classes = int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
    matrix = confusion_matrix(labels, predictions, num_classes).astype(np.float64)
    samples, correct = matrix.sum(), np.trace(matrix)
    true_counts, predicted_counts = matrix.sum(axis=1), matrix.sum(axis=0)
    numerator = correct * samples - predicted_counts @ true_counts
    denominator = np.sqrt(
        (samples**2 - predicted_counts @ predicted_counts)
        * (samples**2 - true_counts @ true_counts)
    )
    return float(numerator / denominator) if denominator > 0 else 0.0


def scores(log_probs: np.ndarray, labels: Sequence[int], binary: bool = False) -> dict:
    """Accuracy and Matthews correlation of argmax predictions.

    Args:
      log_probs: [examples, classes] label log-probabilities.
      labels: true classes.
      binary: collapse predicted classes > 0 to 1 (HANS: neutral and contradiction are both
        non-entailment).

    Returns:
      {"accuracy", "matthews", "examples"}.
    """
    predictions = np.argmax(log_probs, axis=-1)
    if binary:
        predictions = (predictions > 0).astype(np.int64)
    return {
        "accuracy": accuracy(labels, predictions),
        "matthews": matthews_correlation(labels, predictions),
        "examples": len(predictions),
    }
