"""Few-shot training subsets: k examples per class, nested in k, fixed by seed.

    for each class c:  order_c = default_rng([seed, c, hash(task)]).permutation(indices of c)
    subset(k)        = order_0[:k] + order_1[:k] + ...     (then interleaved by class)

so subset(16) ⊂ subset(32) ⊂ subset(64) ⊂ subset(128) for one seed, every size is exactly
balanced, and seeds draw different examples (the sweep over k then measures data, not sampling
noise; Mosbach et al. 2023 average over such seeds). The unlabeled pool of context distillation
is drawn from the rest of the train split, disjoint from the largest labelled subset.
"""

from collections.abc import Sequence

import numpy as np

from ft_scaling.data import debian_corpus


def class_orders(labels: Sequence[int], num_classes: int, seed: int, salt: str) -> list:
    """Per class, the seeded order of that class's example indices."""
    labels = np.asarray(labels)
    orders = []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([seed, label, debian_corpus.stable_hash(salt) % (1 << 32)])
        orders.append(members[rng.permutation(len(members))])
    return orders


def per_class_subset(
    labels: Sequence[int], num_classes: int, per_class: int, seed: int, salt: str = ""
) -> np.ndarray:
    """Indices of `per_class` examples of every class (nested in `per_class`; see above).

    Args:
      labels: class index of every train example, in stored order.
      num_classes: classes of the task.
      per_class: examples per class (16, 32, 64, 128 in the study).
      seed: subset seed.
      salt: decorrelates tasks that share a seed (the task name).

    Returns:
      int64 indices, interleaved by class (class 0, 1, ..., 0, 1, ...).

    Raises:
      ValueError: when a class has fewer than `per_class` examples.
    """
    if per_class <= 0:
        raise ValueError(f"examples per class must be positive, got {per_class}")
    orders = class_orders(labels, num_classes, seed, salt)
    short = {c: len(o) for c, o in enumerate(orders) if len(o) < per_class}
    if short:
        raise ValueError(
            f"a subset of {per_class} per class needs more examples of classes {short} "
            "(class: available)"
        )
    return np.stack([order[:per_class] for order in orders], axis=1).reshape(-1)


def unlabeled_pool(
    num_examples: int, exclude: Sequence[int], size: int, seed: int, salt: str = ""
) -> np.ndarray:
    """`size` seeded indices of the train split outside `exclude` (labels unused)."""
    rng = np.random.default_rng([seed, debian_corpus.stable_hash("unlabeled" + salt) % (1 << 32)])
    order = rng.permutation(num_examples)
    keep = order[~np.isin(order, np.asarray(exclude, np.int64))]
    if size > len(keep):
        raise ValueError(f"{size} unlabeled examples requested; only {len(keep)} remain")
    return keep[:size]
