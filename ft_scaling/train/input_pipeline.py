"""Batches from seqio tasks, in a deterministic order that a checkpoint can resume exactly.

The order of training batches depends only on (task, split, seed, batch size, packing); the
position in that order is the number of batches consumed, saved with every checkpoint. Resuming
rebuilds the same stream and skips that many batches, so a resumed run sees exactly the batches
an uninterrupted run would have seen.

Per process, what is the same for many runs is built once: a train split of up to
IN_MEMORY_EXAMPLES examples (a D_f subset) is converted once per (task, lengths, seed) and kept
as numpy columns (up to TRAIN_CACHE_BYTES in all), so another run on it (another model, method
or learning rate) only reshuffles it; the eval batches of a split are kept likewise. Building a
seqio pipeline traces its preprocessors with autograph, which costs more than a short run's
steps. The cached columns are the pipeline's examples in its order, so every batch is the same.
"""

import collections
import dataclasses
import functools
from collections.abc import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

# TensorFlow is only the input pipeline here: keep it off accelerators JAX owns.
tf.config.set_visible_devices([], "GPU")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What to read: a registered seqio task or mixture and how to batch it."""

    task: str
    feature_lengths: Mapping[str, int]
    batch_size: int
    pack: bool = False
    seed: int = 0
    # Evaluation reads only the first `max_examples` of a split (a CPU-budget option; the
    # paper evaluates whole splits, which is the default).
    max_examples: int | None = None


def get_task(name: str):
    import ft_scaling.data.tasks  # noqa: F401  (registers the package's tasks, idempotently)

    try:
        return seqio.get_mixture_or_task(name)
    except ValueError as err:
        known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
        raise ValueError(
            f"unknown task or mixture {name!r}; registered: {', '.join(known) or '(none)'}"
        ) from err


def feature_converter(task_name: str, pack: bool) -> seqio.FeatureConverter:
    """Prefix-LM converter (loss on targets only) for tasks with inputs, else a plain LM."""
    features = get_task(task_name).output_features
    if "inputs" in features:
        return seqio.PrefixLMFeatureConverter(loss_on_targets_only=True, pack=pack)
    return seqio.DecoderFeatureConverter(pack=pack)


def _dataset(spec: InputSpec, split: str, shuffle: bool, num_epochs: int | None):
    return seqio.get_dataset(
        spec.task,
        task_feature_lengths=dict(spec.feature_lengths),
        feature_converter=feature_converter(spec.task, spec.pack),
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=spec.seed,
        verbose=False,
    )


# Train sets up to this many examples (D_f subsets) are converted once and kept in memory.
IN_MEMORY_EXAMPLES = 200_000


# Converted train splits kept per process, in bytes (least recently used dropped first).
TRAIN_CACHE_BYTES = 1 << 30
_TRAIN_CACHE: collections.OrderedDict = collections.OrderedDict()


def train_batches(spec: InputSpec, position: int = 0, prefetch: int = 2) -> Iterator[dict]:
    """Endless numpy batches of the train split, starting after `position` batches.

    A split of up to IN_MEMORY_EXAMPLES examples (a D_f subset) is batched from its converted
    columns in memory (`ShuffledBatches`: a seeded permutation per epoch, O(1) to resume).
    A larger one streams through tf.data with `prefetch` batches made ahead in a background
    thread (the same batches, in the same order, as with none)."""
    known = None if spec.pack else get_task(spec.task).num_input_examples("train")
    if known and known <= IN_MEMORY_EXAMPLES:
        # One conversion, then a reshuffle per epoch: a finetuning subset is otherwise re-read
        # (and re-filtered from its parent split) every epoch. No tf.data iterator per run:
        # freeing one was measured to stall for up to 20 s on 2 busy cores.
        columns = converted_train_examples(spec)
        return ShuffledBatches(columns, spec.batch_size, spec.seed, position)
    ds = _dataset(spec, "train", shuffle=True, num_epochs=None)
    ds = ds.batch(spec.batch_size, drop_remainder=True).skip(position)
    return (ds.prefetch(prefetch) if prefetch else ds).as_numpy_iterator()


class ShuffledBatches:
    """Batches of `batch_size` rows from in-memory columns, endlessly, epoch after epoch.

    Epoch e visits the rows in `default_rng([seed, e]).permutation(rows)`; batches run on
    across epoch ends (shuffle, repeat, then batch), so every batch is full and each epoch
    shows every example once. Batch `position` is found by arithmetic, not by skipping.
    """

    def __init__(self, columns: dict[str, np.ndarray], batch_size: int, seed: int, position=0):
        self.columns, self.batch_size, self.seed = columns, batch_size, seed
        self.rows = len(next(iter(columns.values())))
        if self.rows == 0 or batch_size <= 0:
            raise ValueError(f"cannot batch {self.rows} examples in batches of {batch_size}")
        self.next_row = int(position) * batch_size  # in the endless stream of epochs
        self._orders: dict[int, np.ndarray] = {}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        start, self.next_row = self.next_row, self.next_row + self.batch_size
        stream = np.arange(start, self.next_row)
        epochs, offsets = np.divmod(stream, self.rows)
        indices = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            indices[here] = self._order(int(epoch))[offsets[here]]
        return {key: column[indices] for key, column in self.columns.items()}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            for old in [e for e in self._orders if e < epoch - 1]:
                del self._orders[old]
            rng = np.random.default_rng([self.seed, epoch])
            self._orders[epoch] = rng.permutation(self.rows)
        return self._orders[epoch]


def converted_train_examples(spec: InputSpec) -> dict[str, np.ndarray]:
    """The unpacked train split as converted by the pipeline, in stored order: feature ->
    [examples, length] array. Cached per (task, lengths, seed); the caller must not modify it.
    """
    key = (spec.task, tuple(sorted(spec.feature_lengths.items())), spec.seed)
    if key in _TRAIN_CACHE:
        _TRAIN_CACHE.move_to_end(key)
        return _TRAIN_CACHE[key]
    batches = list(
        _dataset(spec, "train", shuffle=False, num_epochs=1).batch(4096).as_numpy_iterator()
    )
    if not batches:
        raise ValueError(f"task {spec.task!r} has an empty train split")
    columns = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    size = sum(v.nbytes for v in columns.values())
    if size <= TRAIN_CACHE_BYTES:
        _TRAIN_CACHE[key] = columns
        while sum(v.nbytes for c in _TRAIN_CACHE.values() for v in c.values()) > TRAIN_CACHE_BYTES:
            _TRAIN_CACHE.popitem(last=False)
    return columns


def batches_per_epoch(spec: InputSpec) -> int:
    """Full batches in one pass over the train split."""
    known = None if spec.pack else get_task(spec.task).num_input_examples("train")
    if known:  # unpacked: one example per row, and the source knows how many there are
        return max(int(known) // spec.batch_size, 1)
    ds = _dataset(spec, "train", shuffle=False, num_epochs=1)
    count = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
    if count == 0:
        raise ValueError(f"task {spec.task!r} has an empty train split")
    return max(count // spec.batch_size, 1)


def eval_batches(spec: InputSpec, split: str, batch_size: int) -> tuple[dict, ...]:
    """Every example of `split` once, in order; the last batch padded with zero-weight rows.

    Cached per process: the evaluation data of a task is the same for every run of a study and
    every evaluation of a run, and rebuilding the pipeline costs more than evaluating.
    """
    return _eval_batches(
        spec.task, tuple(sorted(spec.feature_lengths.items())), spec.max_examples, split, batch_size
    )


@functools.lru_cache(maxsize=16)
def _eval_batches(task, feature_lengths, max_examples, split, batch_size):
    spec = InputSpec(task, dict(feature_lengths), batch_size, max_examples=max_examples)
    ds = _dataset(spec, split, shuffle=False, num_epochs=1)
    if max_examples is not None:
        ds = ds.take(max_examples)
    out = []
    for batch in ds.batch(batch_size).as_numpy_iterator():
        rows = next(iter(batch.values())).shape[0]
        if rows < batch_size:
            batch = {k: _pad_rows(v, batch_size) for k, v in batch.items()}
        out.append(batch)
    if not out:
        raise ValueError(f"split {split!r} of task {task!r} is empty")
    return tuple(out)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    pad = np.zeros((rows - array.shape[0], *array.shape[1:]), array.dtype)
    return np.concatenate([array, pad], axis=0)
