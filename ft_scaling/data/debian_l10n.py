"""`debian_l10n`: a real, offline corpus from Debian's localisation data, as a TFDS builder.

Where the examples come from (see `debian_corpus.py` for the assembly and DEBIAN_L10N_CARD.md
for sizes and licences):

    ft-scaling data build debian_l10n            # system sources -> ~/ft_scaling_data/debian_l10n
    ft-scaling data build debian_l10n --snapshot # system sources -> the shipped snapshot
    tfds.load("debian_l10n/translate_en_de")     # the TFDS view of the data root below

The data root is the shipped snapshot (`snapshots/debian_l10n/`) unless the environment
variable FT_SCALING_DEBIAN_L10N_DIR points at a full build. The snapshot stores the
translation and summarization configs; the pretraining configs are derived from them when read
(the same function the full build uses), which keeps the committed files small.
"""

import datetime
import functools
import hashlib
import json
import os
import time

import tensorflow_datasets as tfds
from etils import epath

from ft_scaling import files as files_lib
from ft_scaling.data import debian_corpus

SNAPSHOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "snapshots", "debian_l10n")
DATA_DIR_ENV = "FT_SCALING_DEBIAN_L10N_DIR"
DEFAULT_LOCALE_DIR = "/usr/share/locale"
DEFAULT_LISTS_DIR = "/var/lib/apt/lists"
DEFAULT_BUILD_DIR = os.path.expanduser("~/ft_scaling_data/debian_l10n")
MANIFEST = "manifest.json"
# The snapshot keeps every translation pair (short UI strings: the demo's task) and a stable
# sample of the summarization configs, whose documents are long and would dominate its size.
SNAPSHOT_CAPS = {
    config: {"train": 2000, "validation": 200, "test": 200}
    for config in ("summarize_en", "summarize_de", "summarize_fr")
}
_FEATURES = {
    "translate": ("source", "target", "origin"),
    "summarize": ("document", "summary", "package"),
    "pretrain": ("text",),
}


def data_root() -> str:
    """The directory the debian_l10n tasks read: $FT_SCALING_DEBIAN_L10N_DIR or the snapshot."""
    return os.environ.get(DATA_DIR_ENV) or SNAPSHOT_DIR


def _check_config(config: str) -> None:
    if config not in debian_corpus.CONFIGS:
        raise ValueError(
            f"debian_l10n has no config {config!r}; configs: {', '.join(debian_corpus.CONFIGS)}"
        )


@functools.cache
def _load_corpus_part(root: str, config: str) -> dict[str, list[dict[str, str]]]:
    if config in debian_corpus.PRETRAIN_CONFIGS and not os.path.exists(
        debian_corpus.split_path(root, config, "train")
    ):
        # Derive as the full build does. Held-out strings come from every stored config.
        corpus = {
            c: _load_corpus_part(root, c)
            for c in (*debian_corpus.TRANSLATE_CONFIGS, *debian_corpus.SUMMARIZE_CONFIGS)
        }
        parts = debian_corpus.PRETRAIN_CONFIGS[config]
        return debian_corpus.pretrain_examples(corpus, parts)
    return {s: debian_corpus.read_split(root, config, s) for s in debian_corpus.SPLITS}


def load_split(config: str, split: str, root: str | None = None) -> list[dict[str, str]]:
    """The examples of one config and split, read once per process and cached.

    Args:
      config: one of `debian_corpus.CONFIGS`, e.g. "translate_en_de".
      split: "train", "validation" or "test".
      root: data directory; defaults to `data_root()`.

    Returns:
      A list of dicts of strings, in the stored (deterministic) order.
    """
    _check_config(config)
    if split not in debian_corpus.SPLITS:
        raise ValueError(f"debian_l10n has no split {split!r}; splits: {debian_corpus.SPLITS}")
    return _load_corpus_part(os.path.abspath(root or data_root()), config)[split]


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build(
    out_dir: str,
    locale_dir: str = DEFAULT_LOCALE_DIR,
    lists_dir: str = DEFAULT_LISTS_DIR,
    snapshot: bool = False,
) -> dict:
    """Builds debian_l10n from system sources and writes it with a manifest.

    Args:
      out_dir: where to write `<config>/<split>.jsonl.xz` and `manifest.json`.
      locale_dir: gettext locale tree.
      lists_dir: apt list directory holding `Translation-<lang>` files.
      snapshot: apply SNAPSHOT_CAPS and leave out the (derivable) pretraining configs.

    Returns:
      The manifest: counts per config and split, full-build counts, timings, file hashes.
    """
    start = time.time()
    corpus = debian_corpus.build_corpus(locale_dir, lists_dir)
    build_seconds = time.time() - start
    full_counts = {c: {s: len(x) for s, x in splits.items()} for c, splits in corpus.items()}
    if snapshot:
        corpus = {c: x for c, x in corpus.items() if c not in debian_corpus.PRETRAIN_CONFIGS}
        corpus = debian_corpus.cap_corpus(corpus, SNAPSHOT_CAPS)
    # The snapshot is committed, so it gets the smaller files; a local build the faster write.
    counts = debian_corpus.write_corpus(corpus, out_dir, preset=6 if snapshot else 1)
    files = {
        f"{c}/{s}": _sha256(debian_corpus.split_path(out_dir, c, s))
        for c in corpus
        for s in debian_corpus.SPLITS
    }
    manifest = {
        "built": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sources": {"locale_dir": locale_dir, "lists_dir": lists_dir},
        "snapshot": snapshot,
        "counts": counts,
        "full_build_counts": full_counts,
        "build_seconds": round(build_seconds, 1),
        "write_seconds": round(time.time() - start - build_seconds, 1),
        "sha256": files,
    }
    # The committed snapshot's manifest keeps its layout (indent 1, sorted keys, ASCII).
    text = json.dumps(manifest, indent=1, sort_keys=True)
    files_lib.atomic_write_text(os.path.join(out_dir, MANIFEST), text)
    _load_corpus_part.cache_clear()
    return manifest


def read_manifest(root: str | None = None) -> dict:
    """The manifest of a data root (counts per config and split)."""
    with open(os.path.join(root or data_root(), MANIFEST)) as f:
        return json.load(f)


class DebianL10nConfig(tfds.core.BuilderConfig):
    """One debian_l10n config; `kind` is translate, summarize or pretrain."""

    def __init__(self, *, kind: str, **kwargs):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.kind = kind


class DebianL10n(tfds.core.GeneratorBasedBuilder):
    """TFDS view of debian_l10n: reads the data root (the snapshot unless overridden)."""

    BUILDER_CONFIGS = [
        DebianL10nConfig(name=config, kind=config.split("_")[0], description=config)
        for config in debian_corpus.CONFIGS
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default probes `importlib_resources`, which TFDS only installs on Python < 3.9,
        # and fails without it on 3.11 for builders defined outside TFDS.
        return epath.Path(os.path.abspath(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"id": tfds.features.Text()}
        for name in _FEATURES[self.builder_config.kind]:
            features[name] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Debian gettext catalogs and package descriptions (DEBIAN_L10N_CARD.md)",
            features=tfds.features.FeaturesDict(features),
            homepage="https://www.debian.org/international/l10n/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data root is local
        return {split: self._generate_examples(split) for split in debian_corpus.SPLITS}

    def _generate_examples(self, split):
        keep = ("id", *_FEATURES[self.builder_config.kind])
        for example in load_split(self.builder_config.name, split):
            yield example["id"], {k: example.get(k, "") for k in keep}
