"""Open model suites as base models: revisions, their pretraining tokens, and completeness.

A suite base model (`sweep.BaseModel` with `hf_source`) is one size of a public suite (Pythia,
OLMo-2) or of one of our own in Hugging Face layout. Its revisions give the pretraining-data
axis (the paper's intermediate checkpoints, PAPER.md §1); its final revision the model-size
and PET-size axes:

    BaseModel(name='1b', hf_source='EleutherAI/pythia-1b',
              revisions=('step48000', 'step95000'), final_revision='step143000',
              token_rule='pythia')                          # or revision_tokens=(t1, t2, t_final)
      -> checkpoints(model)  [Checkpoint('1b', 'step48000', 'EleutherAI/pythia-1b@step48000',
                              100_663_296_000, final=False), ..., (..., final=True)]
      -> each finetuning run: hf.gin after the run gin, HF_CHECKPOINT = Checkpoint.location

Where a revision lives (`location`):
    hub id 'org/name'       'org/name@<revision>' (hf.gin and loading.resolve accept it)
    local directory DIR     DIR/<revision>/ , each a Hugging Face checkpoint directory
    (or gs://...)           (config.json, model.safetensors[.index.json] + shards,
                            tokenizer.json); the final revision is DIR/<final_revision>/
                            when that exists, else DIR itself (a plain HF directory)

Pretraining tokens of a revision: `revision_tokens` (one per revision, then the final), or a
named rule (TOKEN_RULES):
    pythia   'step<N>' -> N x 2,097,152 (Biderman et al. 2023: 1024 sequences x 2048 tokens
             per step; 'main' is step143000 but says no step: name it)
    olmo2    the 'tokens<N>B' part of the name -> N x 10^9
             ('stage1-step928646-tokens3896B' -> 3,896,000,000,000; the name rounds up to
             whole billions, so the count is within 1B of the true one)

Completeness (`check_complete`, called by runner.plan before any run): every checkpoint a study
needs has config.json, tokenizer.json and its weights -- every shard named in
model.safetensors.index.json, or model.safetensors (older hub revisions: the pytorch_model.bin
equivalents, which the loader also reads). Local directories are checked on the filesystem
(through files.py, so gs:// works); hub ids through huggingface_hub: the repository's refs and
files with a network, the local Hugging Face cache when HF_HUB_OFFLINE is set or the hub cannot
be reached. Everything missing is named in one SuiteIncompleteError:
    model '1b' revision 'step48000' (EleutherAI/pythia-1b@step48000): tokenizer.json
"""

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence

from ft_scaling import files

PYTHIA_TOKENS_PER_STEP = 2_097_152  # Biderman et al. 2023: 1024 sequences x 2048 tokens
CONFIG, TOKENIZER = "config.json", "tokenizer.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class SuiteIncompleteError(FileNotFoundError):
    """Revisions a study needs are missing or incomplete; the message lists every one."""


def pythia_tokens(revision: str) -> int:
    match = re.fullmatch(r"step(\d+)", revision)
    if not match:
        raise ValueError(
            f"token_rule 'pythia': revision {revision!r} is not 'step<N>' (Pythia's 'main' is "
            "'step143000': name it so its tokens are known)"
        )
    return int(match.group(1)) * PYTHIA_TOKENS_PER_STEP


def olmo2_tokens(revision: str) -> int:
    match = re.search(r"(?:^|-)tokens(\d+)B(?:-|$)", revision)
    if not match:
        raise ValueError(
            f"token_rule 'olmo2': revision {revision!r} has no 'tokens<N>B' part (e.g. "
            "'stage1-step928646-tokens3896B'); give revision_tokens instead"
        )
    return int(match.group(1)) * 10**9


TOKEN_RULES: dict[str, Callable[[str], int]] = {"pythia": pythia_tokens, "olmo2": olmo2_tokens}


def tokens_of(rule: str, revision: str) -> int:
    """Pretraining tokens of `revision` by the named rule."""
    if rule not in TOKEN_RULES:
        raise ValueError(f"unknown token_rule {rule!r}; known: {', '.join(sorted(TOKEN_RULES))}")
    return TOKEN_RULES[rule](revision)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One revision of a suite base model, as a study finetunes from it.

    Attributes:
      model_name: the base model's name.
      revision: the revision's name.
      location: HF_CHECKPOINT of its runs: a directory or 'org/name@revision'.
      pretrain_tokens: its pretraining tokens (None when neither rule nor tokens are given).
      final: the final revision (model-size and PET-size axes), else an intermediate one.
    """

    model_name: str
    revision: str
    location: str
    pretrain_tokens: int | None
    final: bool


def is_hub_id(source: str) -> bool:
    """'org/name' that is not a local path (a path that exists, or reads as one, is local)."""
    if "://" in source or source.startswith(("/", ".", "~")) or os.path.exists(source):
        return False
    return bool(_HUB_ID.match(source))


def location(source: str, revision: str, final: bool) -> str:
    """Where `revision` of `source` lives (see the module docstring)."""
    if is_hub_id(source):
        return f"{source}@{revision}"
    root = source if files.is_remote(source) else os.path.abspath(os.path.expanduser(source))
    nested = f"{root.rstrip('/')}/{revision}"
    if final and not files.exists(nested) and files.exists(f"{root}/{CONFIG}"):
        return root  # a plain HF directory is its own final revision
    return nested


def checkpoints(model) -> list[Checkpoint]:
    """The intermediate revisions of a suite base model, in the given order, then its final.

    Args:
      model: a `sweep.BaseModel` with `hf_source` set (its name, hf_source, revisions,
        final_revision, revision_tokens and token_rule are read).

    Raises:
      ValueError: duplicate revisions, tokens of the wrong length or not positive, an unknown
        rule, a revision the rule cannot read, or revisions without tokens.
    """
    where = f"base model {model.name!r}"
    names = (*model.revisions, model.final_revision)
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: revisions {list(names)} (final last) repeat one")
    if model.token_rule is not None and model.revision_tokens:
        raise ValueError(f"{where}: give token_rule or revision_tokens, not both")
    if model.revision_tokens:
        if len(model.revision_tokens) != len(names):
            raise ValueError(
                f"{where}: revision_tokens has {len(model.revision_tokens)} values for "
                f"{len(names)} revisions {list(names)} (the intermediate ones, then the final)"
            )
        tokens = [int(t) for t in model.revision_tokens]
    elif model.token_rule is not None:
        tokens = [tokens_of(model.token_rule, name) for name in names]
    elif model.revisions:
        raise ValueError(
            f"{where}: revisions {list(model.revisions)} need their pretraining tokens: set "
            f"token_rule ({', '.join(sorted(TOKEN_RULES))}) or revision_tokens"
        )
    else:
        tokens = [None]
    if any(t is not None and t <= 0 for t in tokens):
        raise ValueError(f"{where}: pretraining tokens {tokens} must be positive")
    final = len(names) - 1
    return [
        Checkpoint(model.name, name, location(model.hf_source, name, i == final), t, i == final)
        for i, (name, t) in enumerate(zip(names, tokens, strict=True))
    ]


def missing(needed: Iterable[Checkpoint]) -> list[str]:
    """One line per incomplete checkpoint: what it lacks. Empty when all are complete."""
    lines, hub = [], _Hub()
    for checkpoint in dict.fromkeys(needed):  # each once, in order
        if is_hub_id(checkpoint.location.partition("@")[0]):
            lacks = hub.missing(checkpoint.location)
        else:
            lacks = _missing_files(_LocalFiles(checkpoint.location))
        if lacks:
            what = f"model {checkpoint.model_name!r} revision {checkpoint.revision!r}"
            lines.append(f"{what} ({checkpoint.location}): {', '.join(lacks)}")
    return lines


def check_complete(needed: Sequence[Checkpoint]) -> None:
    """Raises SuiteIncompleteError listing every incomplete checkpoint (none: returns)."""
    lines = missing(needed)
    if lines:
        raise SuiteIncompleteError(
            f"{len(lines)} of the study's {len(set(needed))} suite checkpoints are missing or "
            "incomplete (nothing was run): " + "; ".join(lines)
        )


def _missing_files(source) -> list[str]:
    """What a checkpoint lacks; `source` answers exists(name), any_weights(), read_json(name)
    and names what `absent` means (nothing of it there at all)."""
    if not source.exists(CONFIG) and not source.exists(TOKENIZER) and not source.any_weights():
        return [source.absent]
    lacks = [name for name in (CONFIG, TOKENIZER) if not source.exists(name)]
    for index, single in ((SAFETENSORS_INDEX, SAFETENSORS), (TORCH_BIN_INDEX, TORCH_BIN)):
        if source.exists(index):
            shards = sorted(set(dict(source.read_json(index).get("weight_map", {})).values()))
            if not shards:
                return [*lacks, f"{index} names no shards"]
            return lacks + [f"{s} (listed in {index})" for s in shards if not source.exists(s)]
        if source.exists(single):
            return lacks
    return [*lacks, f"weights ({SAFETENSORS} or {SAFETENSORS_INDEX} with its shards)"]


_WEIGHT_FILES = (SAFETENSORS_INDEX, SAFETENSORS, TORCH_BIN_INDEX, TORCH_BIN)


class _LocalFiles:
    """A checkpoint directory on the filesystem or a bucket (files.py: epath)."""

    def __init__(self, directory: str):
        self.directory = files.path(directory)
        self.absent = "no such directory"

    def exists(self, name: str) -> bool:
        return (self.directory / name).exists()

    def any_weights(self) -> bool:
        return any(self.exists(name) for name in _WEIGHT_FILES)

    def read_json(self, name: str) -> dict:
        return json.loads((self.directory / name).read_text())


class _Hub:
    """Hub revisions: refs and file lists with a network, else the local Hugging Face cache."""

    def __init__(self):
        self._refs: dict[str, set[str] | None] = {}
        self._unreachable: str | None = None  # after one failed request, the cache only

    @staticmethod
    def offline() -> bool:
        return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")

    def missing(self, hub_location: str) -> list[str]:
        repo, _, revision = hub_location.partition("@")
        revision = revision or "main"
        if self.offline():
            return _missing_files(_CachedFiles(repo, revision, "HF_HUB_OFFLINE is set"))
        if self._unreachable is None:
            try:
                return self._missing_online(repo, revision)
            except _network_errors() as error:  # no network: what the cache holds
                self._unreachable = f"the hub cannot be reached: {type(error).__name__}"
        return _missing_files(_CachedFiles(repo, revision, self._unreachable))

    def _missing_online(self, repo: str, revision: str) -> list[str]:
        import huggingface_hub  # noqa: PLC0415  (only hub ids need it)

        if repo not in self._refs:
            try:
                refs = huggingface_hub.list_repo_refs(repo)
            except huggingface_hub.errors.RepositoryNotFoundError:
                self._refs[repo] = None
            else:
                self._refs[repo] = {ref.name for ref in (*refs.branches, *refs.tags)}
        known = self._refs[repo]
        if known is None:
            return ["no such repository on the hub"]
        if revision not in known and not re.fullmatch(r"[0-9a-f]{40}", revision):
            return ["no such revision (not a branch or tag of the repository)"]
        names = set(huggingface_hub.list_repo_files(repo, revision=revision))
        return _missing_files(_ListedFiles(repo, revision, names))


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a request raises without a network: OSError (requests), the transport errors of
    httpx / httpx2 (newer huggingface_hub), and the hub's own offline error."""
    import importlib  # noqa: PLC0415

    import huggingface_hub  # noqa: PLC0415

    errors = [OSError, huggingface_hub.errors.OfflineModeIsEnabled]
    for name in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except ImportError:
            pass
    return tuple(errors)


class _ListedFiles:
    """A hub revision's files as the hub lists them; index files are fetched to read shards."""

    def __init__(self, repo: str, revision: str, names: set[str]):
        self.repo, self.revision, self.names = repo, revision, names
        self.absent = "no files in this revision"

    def exists(self, name: str) -> bool:
        return name in self.names

    def any_weights(self) -> bool:
        return any(name in self.names for name in _WEIGHT_FILES)

    def read_json(self, name: str) -> dict:
        import huggingface_hub  # noqa: PLC0415

        path = huggingface_hub.hf_hub_download(self.repo, name, revision=self.revision)
        with open(path) as f:
            return json.load(f)


class _CachedFiles:
    """A hub revision as the local Hugging Face cache holds it (offline)."""

    def __init__(self, repo: str, revision: str, why: str):
        self.repo, self.revision = repo, revision
        self.absent = (
            f"not in the local Hugging Face cache ({why}): download it where a network is "
            f"(huggingface-cli download {repo} --revision {revision}) or give a local directory"
        )

    def _cached(self, name: str) -> str | None:
        import huggingface_hub  # noqa: PLC0415

        found = huggingface_hub.try_to_load_from_cache(self.repo, name, revision=self.revision)
        return found if isinstance(found, str) else None

    def exists(self, name: str) -> bool:
        return self._cached(name) is not None

    def any_weights(self) -> bool:
        return any(self.exists(name) for name in _WEIGHT_FILES)

    def read_json(self, name: str) -> dict:
        with open(self._cached(name)) as f:
            return json.load(f)
