"""Readers and cleaners for Debian's localisation data (the raw sources of `debian_l10n`).

Two sources, both real human translations shipped by Debian:

    /usr/share/locale/<lang>/LC_MESSAGES/*.mo     gettext catalogs: English msgid -> msgstr
    /var/lib/apt/lists/*_i18n_Translation-<lang>*  package descriptions: synopsis + long text,
                                                   keyed by the md5 of the English description

The readers parse the binary .mo format themselves (the stdlib `gettext` module rejects
catalogs whose charset header disagrees with their bytes, e.g. net-tools' Latin-1 catalog) and
decompress apt's lists with the stdlib, the `lz4` binary or apt's own `apt-helper cat-file`.
"""

import bz2
import dataclasses
import glob
import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess

_MO_MAGIC_LE = 0x950412DE
_MO_MAGIC_BE = 0xDE120495
# gettext joins a context to its msgid with EOT and plural forms with NUL.
_CONTEXT_SEP = "\x04"
_PLURAL_SEP = "\x00"
_CHARSET_RE = re.compile(r"charset=([\w.-]+)", re.IGNORECASE)
# printf, Python, shell and brace placeholders; what is left after removing them must hold a
# letter, or the string is format-only.
_FORMAT_RE = re.compile(
    r"%(\d+\$)?[-+ #0']*(\d+|\*)?(\.(\d+|\*))?(hh|h|ll|l|L|q|j|z|t|I64)?[diouxXeEfFgGaAcspnm%]"
    r"|%\([^)]+\)[-+ #0]*\d*(\.\d+)?[a-zA-Z]|\{[^{}\s]*\}|\$\{?\w+\}?|<[^<>]+>"
)
# Accelerator marks: GTK `_File`, Qt/Windows `&Open`, and the CJK style `文件(_F)`.
_CJK_ACCEL_RE = re.compile(r"\s*[(（]\s*[_&]\w\s*[)）]")
_ACCEL_RE = re.compile(r"(?<![\w&_])[_&](?=\w)")
_LETTER_RE = re.compile(r"[^\W\d_]")


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """One singular message of a gettext catalog."""

    domain: str  # the catalog's file name without `.mo`, e.g. "coreutils"
    source: str  # English msgid
    target: str  # translated msgstr


@dataclasses.dataclass(frozen=True)
class Description:
    """One package description of an apt `Translation-<lang>` file."""

    package: str
    md5: str  # md5 of the *English* description: the same for every language
    synopsis: str
    paragraphs: tuple[str, ...]  # long description, one string per paragraph


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return raw.decode("latin-1")


def parse_mo(data: bytes) -> list[tuple[str, str]]:
    """Parses a binary gettext catalog into (msgid, msgstr) pairs, header included.

    Args:
      data: the bytes of a `.mo` file.

    Returns:
      The raw pairs; context and plural separators are left in for the cleaner to judge.

    Raises:
      ValueError: if the bytes are not a gettext catalog.
    """
    if len(data) < 28:
        raise ValueError("file too short for a gettext catalog")
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == _MO_MAGIC_LE else ">" if magic == _MO_MAGIC_BE else None
    if order is None:
        raise ValueError(f"bad gettext magic number {magic:#x}")
    _, count, ids_at, strs_at = struct.unpack(order + "4I", data[4:20])
    raw_pairs = []
    for i in range(count):
        id_len, id_off = struct.unpack(order + "2I", data[ids_at + 8 * i : ids_at + 8 * i + 8])
        st_len, st_off = struct.unpack(order + "2I", data[strs_at + 8 * i : strs_at + 8 * i + 8])
        raw_pairs.append((data[id_off : id_off + id_len], data[st_off : st_off + st_len]))
    header = next((s for m, s in raw_pairs if m == b""), b"").decode("ascii", "replace")
    match = _CHARSET_RE.search(header)
    charset = match.group(1) if match else "utf-8"
    return [(_decode(m, "utf-8"), _decode(s, charset)) for m, s in raw_pairs]


def read_catalogs(locale_dir: str, lang: str) -> list[CatalogEntry]:
    """Reads every singular message of `<locale_dir>/<lang>/LC_MESSAGES/*.mo`.

    Args:
      locale_dir: root of the locale tree, usually `/usr/share/locale`.
      lang: locale name as the directory spells it, e.g. `de` or `zh_CN`.

    Returns:
      Entries sorted by (domain, msgid) so every build sees them in the same order.

    Raises:
      FileNotFoundError: naming the directory, when it holds no catalogs.
    """
    pattern = os.path.join(locale_dir, lang, "LC_MESSAGES", "*.mo")
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(
            f"no gettext catalogs for locale {lang!r}: nothing matches {pattern}. "
            f"Available locales there: {sorted(os.listdir(locale_dir))[:40] if os.path.isdir(locale_dir) else 'none (no such directory)'}"  # noqa: E501
        )
    entries = []
    for path in paths:
        domain = os.path.basename(path)[: -len(".mo")]
        with open(path, "rb") as f:
            try:
                pairs = parse_mo(f.read())
            except ValueError:
                continue  # a damaged catalog should not sink the build; the card counts files
        for msgid, msgstr in pairs:
            # Plural entries carry NULs; their forms do not align 1:1 with the English pair.
            if not msgid or _PLURAL_SEP in msgid or _PLURAL_SEP in msgstr:
                continue
            source = msgid.split(_CONTEXT_SEP, 1)[-1]
            entries.append(CatalogEntry(domain, source, msgstr))
    entries.sort(key=lambda e: (e.domain, e.source, e.target))
    return entries


def strip_accelerators(text: str) -> str:
    """Removes keyboard accelerator marks: `_File` -> `File`, `文件(_F)` -> `文件`."""
    return _ACCEL_RE.sub("", _CJK_ACCEL_RE.sub("", text))


def has_words(text: str) -> bool:
    """True when `text` holds a letter once placeholders and markup are removed."""
    return bool(_LETTER_RE.search(_FORMAT_RE.sub(" ", text)))


def clean_pair(
    source: str, target: str, max_chars: int = 300, max_ratio: float = 4.0
) -> tuple[str, str] | None:
    """Cleans one translation pair, or returns None when it should be dropped.

    Drops format-only strings, identical pairs, over-long strings and pairs whose length
    ratio is implausible (misaligned or partial translations).

    Args:
      source: English text.
      target: translated text.
      max_chars: drop pairs where either side is longer (keeps UI strings, drops help pages).
      max_ratio: drop pairs where one side is this many times longer than the other.

    Returns:
      The cleaned (source, target), or None.
    """
    source = " ".join(strip_accelerators(source).split())
    target = " ".join(strip_accelerators(target).split())
    if not source or not target or source == target:
        return None
    if not has_words(source) or not has_words(target):
        return None
    if max(len(source), len(target)) > max_chars:
        return None
    shorter, longer = sorted((len(source), len(target)))
    if longer > max_ratio * max(shorter, 4):
        return None
    return source, target


def _read_compressed(path: str) -> str:
    if path.endswith(".lz4"):
        # Python has no stdlib lz4; apt's own helper decompresses what apt wrote.
        lz4, apt_helper = shutil.which("lz4"), "/usr/lib/apt/apt-helper"
        if lz4:
            command = [lz4, "-dc", path]
        elif os.path.exists(apt_helper):
            command = [apt_helper, "cat-file", path]
        else:
            raise FileNotFoundError(f"{path} is lz4-compressed; install `lz4` to read it")
        raw = subprocess.run(command, check=True, capture_output=True).stdout
    else:
        opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(
            os.path.splitext(path)[1], open
        )
        with opener(path, "rb") as f:
            raw = f.read()
    return raw.decode("utf-8", "replace")


def find_translation_files(lists_dir: str, lang: str) -> list[str]:
    """Lists apt's `Translation-<lang>` files for the main archive (any compression).

    Args:
      lists_dir: apt's list directory, usually `/var/lib/apt/lists`.
      lang: apt's language code, e.g. `en`, `de`, `zh_CN`.

    Returns:
      Sorted paths.

    Raises:
      FileNotFoundError: with the apt command that fetches the files, when there are none.
    """
    # apt escapes `_` in file names as %5f.
    names = {f"Translation-{lang}", f"Translation-{lang.replace('_', '%5f')}"}
    paths = sorted(
        p
        for p in glob.glob(os.path.join(lists_dir, "*_i18n_Translation-*"))
        if os.path.basename(p).split("_i18n_")[-1].split(".")[0] in names
    )
    if not paths:
        raise FileNotFoundError(
            f"no apt Translation-{lang} files in {lists_dir}. Fetch them with: "
            "apt-get -o Acquire::Languages=en,de,zh_CN,fr update"
        )
    return paths


def _long_paragraphs(lines: list[str]) -> tuple[str, ...]:
    """Turns deb822 continuation lines into paragraphs (` .` separates paragraphs)."""
    paragraphs, current = [], []
    for line in lines:
        body = line[1:] if line.startswith(" ") else line
        if body.strip() == ".":
            if current:
                paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(body.strip())
    if current:
        paragraphs.append(" ".join(current))
    return tuple(" ".join(p.split()) for p in paragraphs if p.strip())


def parse_translation(text: str, lang: str) -> list[Description]:
    """Parses the deb822 stanzas of one `Translation-<lang>` file.

    Args:
      text: the decompressed file.
      lang: the language whose `Description-<lang>` field to read.

    Returns:
      One Description per stanza that has a synopsis.
    """
    descriptions = []
    field = f"Description-{lang}:"
    for stanza in text.split("\n\n"):
        package = md5 = synopsis = None
        long_lines: list[str] = []
        in_description = False
        for line in stanza.splitlines():
            if line.startswith("Package:"):
                package, in_description = line.split(":", 1)[1].strip(), False
            elif line.startswith("Description-md5:"):
                md5, in_description = line.split(":", 1)[1].strip(), False
            elif line.startswith(field):
                synopsis, in_description = line[len(field) :].strip(), True
            elif in_description and line.startswith(" "):
                long_lines.append(line)
            else:
                in_description = False
        if package and md5 and synopsis:
            descriptions.append(Description(package, md5, synopsis, _long_paragraphs(long_lines)))
    return descriptions


def read_descriptions(lists_dir: str, lang: str) -> list[Description]:
    """Reads all package descriptions in `lang`, one per Description-md5, sorted by md5."""
    by_md5: dict[str, Description] = {}
    for path in find_translation_files(lists_dir, lang):
        for description in parse_translation(_read_compressed(path), lang):
            # Several packages share one description; keep the first package name seen.
            by_md5.setdefault(description.md5, description)
    return [by_md5[k] for k in sorted(by_md5)]
