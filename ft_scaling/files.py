"""File access of the package: atomic writes, the operative gin config, the run fingerprint.

Every file ft-scaling writes (summaries, plans, reports, CSV tables, predictions, the operative
config) goes through this module, on `etils.epath` paths, so a local directory and a `gs://`
bucket are handled alike and a storage change touches one module. Checkpoints are the exception:
orbax writes them itself (train/checkpoints.py).

    atomic_write_text(path, text)        temp file beside the target, then rename: a reader or
    atomic_write_json(path, obj)         a crash never sees half a file (on a local disk the
    atomic_write_jsonl(path, rows)       rename is atomic; on GCS an object appears whole)
    atomic_write_csv(path, rows, fields)
    atomic_write_bytes(path, data)       figures, binary files
    append_jsonl(path, row)              one line added to a log (metrics.jsonl); not atomic
    truncate_jsonl(path, keep)           a log cut back to the rows `keep` accepts, a line a
                                         kill cut off dropped (a resumed run's metrics.jsonl)
    write_operative_config(directory)    config.gin: what gin actually used
    check_fingerprint(directory, fp)     refuses a directory that holds another run
    read_fingerprint(directory)          what a directory holds (None: no fingerprint yet)
"""

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from etils import epath

import gin

FINGERPRINT_FILE = "run_fingerprint.json"
OPERATIVE_CONFIG_FILE = "config.gin"


class FingerprintError(ValueError):
    """A directory that holds a run of another configuration (named in the message)."""


def path(location: str | os.PathLike) -> epath.Path:
    """`location` as an epath.Path (local path or gs://...)."""
    return epath.Path(location)


def exists(location: str | os.PathLike) -> bool:
    return path(location).exists()


def read_text(location: str | os.PathLike) -> str:
    return path(location).read_text(encoding="utf-8")


def read_json(location: str | os.PathLike):
    """Parsed JSON; a file that is not valid JSON is a ValueError naming it."""
    text = read_text(location)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{location} is not valid JSON ({err})") from None


def atomic_write_text(location: str | os.PathLike, text: str) -> None:
    """Writes `text` through a temp file in the same directory, then renames it into place."""
    target = path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{target.name}.tmp.{os.getpid()}"
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def atomic_write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Writes `data` (a figure, a binary model file) as `atomic_write_text` writes text."""
    target = path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{target.name}.tmp.{os.getpid()}"
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def atomic_write_json(location: str | os.PathLike, obj) -> None:
    """JSON (indented, sorted keys, UTF-8 kept), atomically."""
    atomic_write_text(location, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False))


def atomic_write_jsonl(location: str | os.PathLike, rows: Iterable[Mapping]) -> None:
    """One JSON object per line, atomically."""
    atomic_write_text(location, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_write_csv(
    location: str | os.PathLike, rows: Iterable[Mapping], fieldnames: Sequence[str]
) -> None:
    """A CSV table with a header of `fieldnames` (keys not among them are left out)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in fieldnames})
    atomic_write_text(location, buffer.getvalue())


def append_jsonl(location: str | os.PathLike, row: Mapping) -> None:
    """Appends one JSON line (a log such as metrics.jsonl, written as a run goes)."""
    target = path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(location: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file; none when it does not exist yet."""
    target = path(location)
    if not target.exists():
        return []
    return [
        json.loads(line) for line in target.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def truncate_jsonl(location: str | os.PathLike, keep: Callable[[dict], bool]) -> list[dict]:
    """Cuts a JSONL log back to the rows `keep` accepts; returns them.

    A last line without its newline (a write a kill interrupted) and a line that is not JSON
    are dropped, so the next append starts a line of its own. Kept lines keep their bytes; the
    file is rewritten (atomically) only when something is dropped.
    """
    target = path(location)
    if not target.exists():
        return []
    text = target.read_text(encoding="utf-8")
    lines = text.split("\n")  # the last piece is "" when the file ends with its newline
    kept_lines, rows = [], []
    for line in lines[:-1]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and keep(row):
            kept_lines.append(line + "\n")
            rows.append(row)
    if len(kept_lines) != len(lines) - 1 or lines[-1]:
        atomic_write_text(target, "".join(kept_lines))
    return rows


def write_operative_config(directory: str | os.PathLike) -> None:
    """DIRECTORY/config.gin: the gin bindings in force (t5x writes the same file)."""
    atomic_write_text(path(directory) / OPERATIVE_CONFIG_FILE, gin.operative_config_str())


def check_fingerprint(
    directory: str | os.PathLike,
    fingerprint: dict,
    write: bool = True,
    optional: Sequence[str] = (),
) -> None:
    """Records a run's fingerprint, or refuses a directory that holds a different run.

    Args:
      directory: the run's directory (MODEL_DIR).
      fingerprint: JSON-serialisable settings that must match for a resume.
      write: record it when absent (only the first process of a pod writes).
      optional: keys compared only when both fingerprints have them (keys added after older
        run directories were written, or checked by the caller with a message of its own).

    Raises:
      FingerprintError: the saved fingerprint differs; the message names every differing key.
    """
    target = path(directory) / FINGERPRINT_FILE
    fingerprint = json.loads(json.dumps(fingerprint))  # compare as it would be read back
    if target.exists():
        saved = _saved_fingerprint(target)
        compared = set(saved) | set(fingerprint)
        compared -= {k for k in optional if k not in saved or k not in fingerprint}
        differ = sorted(k for k in compared if saved.get(k) != fingerprint.get(k))
        if differ:
            details = "; ".join(
                f"{k}: saved {saved.get(k)!r}, now {fingerprint.get(k)!r}" for k in differ
            )
            raise FingerprintError(
                f"MODEL_DIR {directory} holds a run with another configuration ({details}). "
                "Use a new MODEL_DIR, or delete this one to start over."
            )
        return
    if write:
        atomic_write_json(target, fingerprint)


def read_fingerprint(directory: str | os.PathLike) -> dict | None:
    """The fingerprint a run directory holds, or None; an unreadable one is a FingerprintError."""
    target = path(directory) / FINGERPRINT_FILE
    return _saved_fingerprint(target) if target.exists() else None


def _saved_fingerprint(target: epath.Path) -> dict:
    try:
        saved = read_json(target)
    except ValueError as err:
        saved = err
    if not isinstance(saved, dict):
        raise FingerprintError(
            f"{target} is unreadable ({saved}); it records the configuration this MODEL_DIR "
            "holds. Restore it, or delete it to resume with this command's configuration "
            "(then only the checkpoints' shapes are checked)."
        )
    return saved
