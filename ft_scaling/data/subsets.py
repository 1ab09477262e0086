"""Finetuning subsets D_f: fixed by (seed, size), nested in size, different across seeds.

    permutation = default_rng([seed, hash(task name)]).permutation(num_examples)
    subset(size) = {permutation[:size]}            so subset(500) ⊂ subset(1000) for one seed

A subset is exposed as a registered seqio task (or mixture) named
`<task>_df<size>_seed<seed>`: its `train` split holds the subset (read in stored order, then
fully shuffled when the trainer asks for shuffling); `validation` and `test` are the parent's,
untouched. Point MIXTURE_OR_TASK_NAME at it, or use `finetune_subset` for the examples.

Mixtures (mlsum) are subset per task: `size` is apportioned over the tasks in proportion to
their train sizes with Webster's divisor method, which is house-monotone (no task loses
examples when the total grows), so the language mix stays fixed and mixture subsets nest too.
Subset sizes count examples; `subset_stats` records their tokens.
"""

import numpy as np
import seqio
import tensorflow as tf

from ft_scaling.data import debian_corpus, sources


def get_task_or_mixture(name: str) -> seqio.Task | seqio.Mixture:
    """Looks up a registered task or mixture; the error lists the registered names."""
    if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
        return seqio.get_mixture_or_task(name)
    known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    raise ValueError(f"unknown task or mixture {name!r}; registered: {', '.join(known)}")


def subset_indices(num_examples: int, size: int, seed: int, salt: str = "") -> np.ndarray:
    """Indices (into the stored order) of the first `size` examples of a seeded permutation.

    Args:
      num_examples: examples in the split.
      size: D_f, at most `num_examples`.
      seed: subset seed; the paper averages three subsets per point (PAPER.md §2).
      salt: decorrelates tasks that share a seed (the task name).

    Returns:
      int64 indices, in permutation order.
    """
    if not 0 <= size <= num_examples:
        raise ValueError(f"subset of {size} examples requested from a split of {num_examples}")
    rng = np.random.default_rng([seed, debian_corpus.stable_hash(salt) % (1 << 32)])
    return rng.permutation(num_examples)[:size]


def apportion(size: int, weights: list[float]) -> list[int]:
    """Splits `size` over parts in proportion to `weights` (Webster; house-monotone).

    The allocation takes the `size` smallest of the points (j + 1/2) / w_i over parts i and
    j = 0, 1, ...; ties go to the earlier part. Growing `size` only adds points.
    """
    weights = np.asarray(weights, np.float64)
    quotas = size * weights / weights.sum()
    margin = 2
    while True:
        bounds = np.ceil(quotas).astype(np.int64) + margin
        points = np.concatenate(
            [(np.arange(b) + 0.5) / w for b, w in zip(bounds, weights, strict=True)]
        )
        owners = np.concatenate([np.full(b, i) for i, b in enumerate(bounds)])
        chosen = owners[np.lexsort((owners, points))[:size]]
        counts = np.bincount(chosen, minlength=len(weights))
        if np.all(counts < bounds):  # no part hit its bound, so none was truncated
            return counts.tolist()
        margin *= 2


def subset_task_name(name: str, size: int, seed: int) -> str:
    return f"{name}_df{size}_seed{seed}"


# {task: the task whose examples its subsets draw}: a task in another vocabulary (an HF
# checkpoint's tokenizer) subsets exactly the examples of the task it was derived from.
_SAME_EXAMPLES: dict[str, str] = {}


def share_examples(task_name: str, parent_name: str) -> None:
    """Subsets of `task_name` (same source as `parent_name`) draw the parent's examples."""
    _SAME_EXAMPLES[task_name] = _SAME_EXAMPLES.get(parent_name, parent_name)


IN_MEMORY_PARENT = 500_000  # parent splits up to this many examples are indexed in memory
_PARENTS: dict = {}


def _parent_columns(source: seqio.DataSource, split: str) -> dict[str, np.ndarray]:
    """The raw examples of a split as numpy columns, read once per process (stored order)."""
    key = (id(source), split)
    if key not in _PARENTS:
        batches = list(
            source.get_dataset(split=split, shuffle=False).batch(65536).as_numpy_iterator()
        )
        if not batches:
            raise ValueError(f"split {split!r} is empty: no subset can be drawn from it")
        _PARENTS[key] = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    return _PARENTS[key]


def _subset_loader(task: seqio.Task, split: str, size: int, seed: int):
    num_examples = sources.count_examples(task.source, split)
    if size > num_examples:
        raise ValueError(
            f"task {task.name!r} split {split!r} has {num_examples} examples; "
            f"a subset of {size} was requested"
        )
    keep = np.zeros(num_examples, bool)
    salt = _SAME_EXAMPLES.get(task.name, task.name)
    keep[subset_indices(num_examples, size, seed, salt=salt)] = True

    def load(shuffle_files: bool, shuffle_seed: int | None) -> tf.data.Dataset:
        if num_examples <= IN_MEMORY_PARENT:
            # Index the parent split held in memory: a study registers dozens of subsets of
            # one split, and filtering the whole split for each costs more than training.
            columns = _parent_columns(task.source, split)
            rows = np.flatnonzero(keep)
            dataset = tf.data.Dataset.from_tensor_slices({k: v[rows] for k, v in columns.items()})
        else:
            keep_t = tf.constant(keep)
            dataset = task.source.get_dataset(split=split, shuffle=False)
            dataset = dataset.enumerate().filter(lambda i, _: tf.gather(keep_t, i))
            dataset = dataset.map(lambda _, example: example)
        if shuffle_files and size:
            dataset = dataset.shuffle(size, seed=shuffle_seed, reshuffle_each_iteration=True)
        return dataset

    return load


def _register_task_subset(task: seqio.Task, size: int, seed: int, split: str) -> str:
    name = subset_task_name(task.name, size, seed)
    if name in seqio.TaskRegistry.names():
        return name
    parent = task.source

    def passthrough(other):
        return lambda shuffle, s: parent.get_dataset(split=other, shuffle=shuffle, seed=s)

    loaders = {s: passthrough(s) for s in parent.splits}
    loaders[split] = _subset_loader(task, split, size, seed)
    counters = {s: (lambda s=s: parent.num_input_examples(s)) for s in parent.splits}
    counters[split] = lambda: size
    seqio.TaskRegistry.add(
        name,
        source=sources.SplitSource(loaders, counters),
        preprocessors=task.preprocessors,
        output_features=task.output_features,
        postprocess_fn=task.postprocessor,
        metric_objs=task.metric_objs,
        shuffle_buffer_size=task.shuffle_buffer_size,
    )
    return name


def member_sizes(mixture: seqio.Mixture, size: int) -> dict[str, int]:
    """D_f of each task of `mixture`, in proportion to the mixture rates (train sizes)."""
    rates = [mixture.get_rate(task) for task in mixture.tasks]
    return dict(zip([t.name for t in mixture.tasks], apportion(size, rates), strict=True))


def register_finetune_subset(name: str, size: int, seed: int, split: str = "train") -> str:
    """Registers (once) the D_f subset of a task or mixture and returns its name.

    Args:
      name: a registered task or mixture, e.g. "debian_l10n_translate_en_de" or "mlsum".
      size: D_f, the number of examples.
      seed: subset seed.
      split: the split to subset; the others are passed through.

    Returns:
      The registered name, `<name>_df<size>_seed<seed>`.

    Raises:
      ValueError: unknown name (lists the registered ones) or a subset larger than the split.
    """
    provider = get_task_or_mixture(name)
    if isinstance(provider, seqio.Task):
        return _register_task_subset(provider, size, seed, split)
    sizes = member_sizes(provider, size)
    members = [
        (_register_task_subset(seqio.get_mixture_or_task(task), part, seed, split), float(part))
        for task, part in sizes.items()
        if part > 0
    ]
    mixture_name = subset_task_name(name, size, seed)
    if mixture_name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(mixture_name, members)
    return mixture_name


def finetune_subset(
    name: str,
    split: str,
    size: int,
    seed: int,
    sequence_length: dict[str, int] | None = None,
) -> tf.data.Dataset:
    """The preprocessed, tokenized examples of a D_f subset, in a fixed order.

    Args:
      name: task or mixture name.
      split: usually "train".
      size: D_f.
      seed: subset seed.
      sequence_length: trims features like training does; None keeps every token.

    Returns:
      A dataset of exactly `size` examples (mixtures: their tasks' subsets concatenated).
    """
    subset = get_task_or_mixture(register_finetune_subset(name, size, seed, split))
    tasks = subset.tasks if isinstance(subset, seqio.Mixture) else [subset]
    datasets = [t.get_dataset(sequence_length, split=split, shuffle=False) for t in tasks]
    # Mixture members carry the same features, but only the common ones can be concatenated.
    common = set.intersection(*(set(d.element_spec) for d in datasets))
    dataset = datasets[0].map(lambda ex: {k: ex[k] for k in common})
    for other in datasets[1:]:
        dataset = dataset.concatenate(other.map(lambda ex: {k: ex[k] for k in common}))
    return dataset


def subset_stats(name: str, size: int, seed: int, split: str = "train") -> dict[str, int]:
    """Examples and (untrimmed) tokens per feature of a D_f subset, for the results store."""
    stats = {"examples": 0}
    for example in finetune_subset(name, split, size, seed).as_numpy_iterator():
        stats["examples"] += 1
        for key in ("inputs", "targets"):
            if key in example:
                stats[f"{key}_tokens"] = stats.get(f"{key}_tokens", 0) + len(example[key])
    return stats
