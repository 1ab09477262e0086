"""seqio data sources: one loader per split, counts computed lazily, errors that say what to do.

    SplitSource({"train": loader, ...})      the seqio DataSource all our tasks use
      tfds_loader(name, split)               TFDS (real or under tfds.testing.mock_data)
      sacrebleu_loader(test_sets, langpair)  WMT news test sets through sacrebleu (online once)
      jsonl_loader(path_fn, fields)          local JSON-lines copies (MLSUM French)
      records_loader(records_fn, fields)     in-memory records (debian_l10n)

Loaders take (shuffle_files, seed) and return a tf.data.Dataset of string features. Nothing
is read at construction, so importing `ft_scaling.data.tasks` touches no data.
"""

import json
import os
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

Loader = Callable[[bool, int | None], tf.data.Dataset]


class SplitSource(seqio.FunctionDataSource):
    """A FunctionDataSource whose splits have separate loaders and lazy example counts."""

    def __init__(
        self,
        loaders: Mapping[str, Loader],
        counters: Mapping[str, Callable[[], int | None]] | None = None,
    ):
        self._loaders = dict(loaders)
        self._counters = dict(counters or {})
        super().__init__(dataset_fn=self._load, splits=tuple(self._loaders))

    def _load(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        if split not in self._loaders:
            raise ValueError(f"no split {split!r}; splits: {', '.join(self._loaders)}")
        return self._loaders[split](shuffle_files, seed)

    def num_input_examples(self, split: str) -> int | None:
        counter = self._counters.get(split)
        return counter() if counter else None


def _tfds_help(name: str, data_dir: str | None) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return (
        f"TFDS dataset {name!r} is not prepared in {where}. Obtain it with\n"
        f"  tfds build {name} --data_dir={where}\n"
        "(downloads the source files; WMT and MLSUM take tens of GB and hours), or point "
        "TFDS_DATA_DIR at a directory where it is already prepared."
    )


def tfds_loader(name: str, split: str, data_dir: str | None = None) -> Loader:
    """Loads `split` of TFDS dataset `name` without downloading; says how to get it if absent."""

    def load(shuffle_files: bool, seed: int | None) -> tf.data.Dataset:
        read_config = tfds.ReadConfig(shuffle_seed=seed)
        try:
            return tfds.load(
                name,
                split=split,
                data_dir=data_dir,
                shuffle_files=shuffle_files,
                download=False,
                read_config=read_config,
            )
        except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
            raise FileNotFoundError(_tfds_help(name, data_dir)) from e

    return load


def tfds_counter(name: str, split: str, data_dir: str | None = None) -> Callable[[], int | None]:
    """The number of examples of a prepared TFDS split, or None when it is unknown."""

    def count() -> int | None:
        try:
            return tfds.builder(name, data_dir=data_dir).info.splits[split].num_examples or None
        except Exception:  # noqa: BLE001 - unprepared or mocked datasets have no split info
            return None

    return count


def sacrebleu_pairs(test_set: str, langpair: str) -> list[tuple[str, str]]:
    """(source, first reference) lines of a sacrebleu test set; downloads it once if needed.

    Args:
      test_set: sacrebleu name, e.g. "wmt20" or "wmt17/dev".
      langpair: e.g. "en-de".

    Returns:
      Aligned (source, reference) strings.
    """
    from sacrebleu import utils as sacrebleu_utils  # heavy import, only when a test set is read

    try:
        source_path = sacrebleu_utils.get_source_file(test_set, langpair)
        reference_path = sacrebleu_utils.get_reference_files(test_set, langpair)[0]
    except Exception as e:
        raise FileNotFoundError(
            f"sacrebleu test set {test_set} {langpair} is not cached and could not be fetched "
            f"({e}). Run once online: sacrebleu -t {test_set} -l {langpair} --echo src"
        ) from e
    with open(source_path, encoding="utf-8") as src, open(reference_path, encoding="utf-8") as ref:
        return [(s.rstrip("\n"), r.rstrip("\n")) for s, r in zip(src, ref, strict=True)]


def sacrebleu_loader(test_sets: Sequence[str], langpair: str) -> Loader:
    """Concatenated sacrebleu test sets as {<src lang>: ..., <tgt lang>: ...} examples."""
    source_lang, target_lang = langpair.split("-")

    def load(shuffle_files: bool, seed: int | None) -> tf.data.Dataset:
        del shuffle_files, seed  # a test set is read in order
        # Looked up at call time, so tests can stand in for the download.
        pairs = [pair for test_set in test_sets for pair in sacrebleu_pairs(test_set, langpair)]
        return tf.data.Dataset.from_tensor_slices(
            {
                source_lang: tf.constant([p[0] for p in pairs], tf.string),
                target_lang: tf.constant([p[1] for p in pairs], tf.string),
            }
        )

    return load


def records_loader(
    records_fn: Callable[[], Sequence[Mapping[str, str]]], fields: Sequence[str]
) -> Loader:
    """In-memory records (dicts of strings) as a dataset of `fields`.

    Stored order when not shuffling. When shuffling, a full uniform shuffle: the records are
    in memory, and the task's 1000-example shuffle buffer alone would leave sorted files
    (debian_l10n is sorted by source text) nearly sorted.
    """

    def load(shuffle_files: bool, seed: int | None) -> tf.data.Dataset:
        records = records_fn()
        dataset = tf.data.Dataset.from_tensor_slices(
            {f: tf.constant([r.get(f, "") for r in records], tf.string) for f in fields}
        )
        if shuffle_files and records:
            dataset = dataset.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
        return dataset

    return load


def jsonl_records(path: str, missing_help: str) -> list[dict[str, str]]:
    """Reads a JSON-lines file, or raises FileNotFoundError with `missing_help`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist. {missing_help}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def count_lines(path: str, missing_help: str) -> int:
    """Non-empty lines of a JSON-lines file (its examples), without parsing them."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist. {missing_help}")
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


_COUNTS: dict[tuple[int, str], int] = {}


def count_examples(source: seqio.DataSource, split: str) -> int:
    """Examples in `split`: the source's own count, else one pass over it (cached)."""
    key = (id(source), split)
    if key not in _COUNTS:
        count = source.num_input_examples(split)
        if count is None:
            dataset = source.get_dataset(split=split, shuffle=False)
            count = int(dataset.reduce(0, lambda total, _: total + 1))
        _COUNTS[key] = count
    return _COUNTS[key]


def train_examples_rate(task: seqio.Task) -> float:
    """Mixture rate = train size, so a mixture samples its tasks in their natural proportion."""
    return float(count_examples(task.source, "train"))
