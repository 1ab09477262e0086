"""File access of the package: atomic writes, the operative gin config, the run fingerprint.

Every file ft-scaling writes (summaries, plans, reports, CSV tables, predictions, the operative
config) goes through this module, on `etils.epath` paths, so a local directory and a `gs://`
bucket are handled alike and a storage change touches one module. Checkpoints are the exception:
orbax writes them itself (train/checkpoints.py), to GCS through tensorstore.

    atomic_write_text(path, text)        a reader or a crash never sees half a file (below)
    atomic_write_json(path, obj)
    atomic_write_jsonl(path, rows)
    atomic_write_csv(path, rows, fields)
    atomic_write_bytes(path, data)       figures, binary files
    append_jsonl(path, row)              one line added to a log (metrics.jsonl); not atomic
    truncate_jsonl(path, keep)           a log cut back to the rows `keep` accepts, a line a
                                         kill cut off dropped (a resumed run's metrics.jsonl)
    write_operative_config(directory)    config.gin: what gin actually used
    check_fingerprint(directory, fp)     refuses a directory that holds another run
    read_fingerprint(directory)          what a directory holds (None: no fingerprint yet)
    DiskFullError, is_disk_full(err)     a full disk, recognised in OSError, orbax, SQLite
    check_free_space(path, bytes, what)  fails before a write that cannot fit (local disks)
    naming_full_disk(location, intact)   any full-disk error inside -> one DiskFullError
                                         naming the location and what is intact
    check_writable(directory)            fails at once, naming it, on a bucket that cannot
                                         be reached or written (before any training)
    upload_directory(local, location)    a local directory's files as objects (TensorBoard)

Which atomicity guarantee holds where:
  local disk   a temp file beside the target, then os.replace: POSIX rename is atomic, so a
               reader sees the old file or the new one, and a crash leaves the old one.
  gs://        rename is a copy plus a delete there, not atomic; instead each file is written
               as one object in one upload (no temp object, no rename). GCS makes an object
               visible only once its upload completes, and a read sees the old generation or
               the new one, never a mix; a crash mid-upload leaves the old object.
               append_jsonl rewrites the whole object (GCS objects cannot be appended to), so
               a crash loses at most the line being added. Directories do not exist there:
               nothing is created for them (and no bucket is ever created).
  checkpoints  orbax writes a step into a temp directory and finalises it by rename on a
               local disk; on GCS it writes the step's objects, then a commit_success.txt
               marker last, and a step without its marker is not a checkpoint.

gs:// goes through etils.epath's fsspec backend (gcsfs), not tf.io.gfile (epath's default
when TensorFlow is installed): gcsfs also talks to a GCS emulator (STORAGE_EMULATOR_HOST),
which is how the tests run the bucket path. EPATH_USE_TF=true picks tf.io.gfile again.
"""

import contextlib
import csv
import errno
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence

import fsspec
from etils import epath

import gin

# Before any gs:// path is touched: epath reads it once (module docstring).
os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs caches directory listings for the life of a process by default; other processes
# (another worker, the hosts of a pod, tensorstore writing checkpoints) change a bucket under
# it, and a stale listing hides a new checkpoint step from orbax. Every listing asks GCS.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)

FINGERPRINT_FILE = "run_fingerprint.json"
OPERATIVE_CONFIG_FILE = "config.gin"


class FingerprintError(ValueError):
    """A directory that holds a run of another configuration (named in the message)."""


def path(location: str | os.PathLike) -> epath.Path:
    """`location` as an epath.Path (local path or gs://...)."""
    return epath.Path(location)


def is_remote(location: str | os.PathLike) -> bool:
    """Whether `location` is in object storage (gs://), where there is no rename."""
    return os.fspath(location).startswith("gs://")


def absolute(location: str | os.PathLike) -> str:
    """A local path made absolute; a gs:// location as it is."""
    location = os.fspath(location)
    return location if is_remote(location) else os.path.abspath(location)


def _parent_dir(target: epath.Path) -> None:
    if not is_remote(target):  # object storage has no directories to make
        target.parent.mkdir(parents=True, exist_ok=True)


def check_writable(directory: str | os.PathLike) -> None:
    """Writes and deletes a probe object in a gs:// directory (a local one is made).

    Raises:
      OSError: the bucket cannot be reached, does not exist, or refuses the write; the
        message names the location.
    """
    if not is_remote(directory):
        path(directory).mkdir(parents=True, exist_ok=True)
        return
    probe = path(directory) / f".ft_scaling_probe.{os.getpid()}"
    try:
        probe.write_text("probe", encoding="utf-8")
        probe.unlink()
    except Exception as err:  # gcsfs raises aiohttp, OSError or HTTP errors alike
        raise OSError(f"cannot write to {directory}: {type(err).__name__}: {err}") from None


def upload_directory(local_dir: str | os.PathLike, location: str | os.PathLike) -> None:
    """Copies each file of a local directory to `location` (a gs:// directory), one object
    each: for files another library writes locally (TensorBoard event files)."""
    for name in sorted(os.listdir(local_dir)):
        source = os.path.join(local_dir, name)
        if os.path.isfile(source):
            with open(source, "rb") as f:
                atomic_write_bytes(path(location) / name, f.read())


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
    """Writes `text` through a temp file in the same directory, then renames it into place;
    on gs:// as one object in one upload (module docstring)."""
    target = path(location)
    if is_remote(target):
        target.write_text(text, encoding="utf-8")
        return
    _parent_dir(target)
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
    if is_remote(target):
        target.write_bytes(data)
        return
    _parent_dir(target)
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
    """Appends one JSON line (a log such as metrics.jsonl, written as a run goes); on gs://
    the object is rewritten whole with the line added (objects cannot be appended to)."""
    target = path(location)
    if is_remote(target):
        before = target.read_text(encoding="utf-8") if target.exists() else ""
        target.write_text(before + json.dumps(row) + "\n", encoding="utf-8")
        return
    _parent_dir(target)
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


def write_operative_config(directory: str | os.PathLike, text: str | None = None) -> None:
    """DIRECTORY/config.gin: the gin bindings in force (t5x writes the same file), or `text`,
    bindings captured earlier by `operative_config_text`."""
    text = operative_config_text() if text is None else text
    atomic_write_text(path(directory) / OPERATIVE_CONFIG_FILE, text)


def operative_config_text() -> str:
    """The gin bindings in force now, as config.gin holds them."""
    return gin.operative_config_str()


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


# --- A full disk ---------------------------------------------------------------------------
# What a full disk (or quota) looks like from Python, orbax/tensorstore and SQLite.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "database or disk is full", "disk quota exceeded")


class DiskFullError(OSError):
    """No space left where a run or study writes; the message names the place and says what
    is intact. Orchestrators stop on it (a study's next run would fail the same way).

    `final`: the message says all there is (where, what is intact); `naming_full_disk` passes
    such an error on as it is, and words any other.
    """

    def __init__(self, *args, final: bool = False):
        super().__init__(*args)
        self.final = final


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, says a disk or quota is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return True
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(error).lower() for text in _DISK_FULL_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_bytes(location: str | os.PathLike) -> int | None:
    """Bytes free on the local disk that holds `location` (or would); None for gs://."""
    if is_remote(location):
        return None
    directory = os.path.abspath(os.fspath(location))
    while not os.path.exists(directory):
        directory = os.path.dirname(directory)
    return shutil.disk_usage(directory).free


def check_free_space(location: str | os.PathLike, needed: int, what: str) -> None:
    """Raises DiskFullError, before writing, when `what` (`needed` bytes) cannot fit."""
    free = free_bytes(location)
    if free is not None and free < needed:
        raise DiskFullError(
            errno.ENOSPC,
            f"No space left on device for {what}: it needs about {needed / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB are free",
            os.fspath(location),
        )


@contextlib.contextmanager
def naming_full_disk(location: str | os.PathLike, intact: Callable[[], str] = lambda: ""):
    """Turns any full-disk error raised inside into one DiskFullError naming `location`.

    Args:
      location: the directory being written (MODEL_DIR, a study's OUT).
      intact: says what survived (e.g. the last good checkpoint), asked when it happens.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - only full-disk errors are translated
        if not is_disk_full(err) or getattr(err, "final", False):
            raise
        cause = " ".join(str(err).split())[:400]
        raise DiskFullError(
            f"no space left on the device of {location} ({type(err).__name__}: {cause}). "
            f"{intact()} Free space, then rerun the same command: it resumes from there.",
            final=True,
        ) from err
