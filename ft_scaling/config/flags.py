"""t5x-style command-line flags for gin: `--gin_file` (repeatable), `--gin.KEY=VALUE`,
`--gin_search_paths`.

`--gin.MODEL_DIR="'/tmp/run'"` becomes the binding `MODEL_DIR = '/tmp/run'`: the value is gin
syntax, exactly as in t5x. Gin files are looked up in the search paths, which always include the
current directory and the repository root (where `t5x_configs/` and `gin/` live).
"""

import argparse
import difflib
import os
import re
import sys
from collections.abc import Sequence

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument(
        "--gin_search_paths", default="", help="comma-separated directories to find gin files in"
    )


def split_gin_bindings(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--gin.KEY=VALUE` flags (argparse cannot declare them) from the rest."""
    bindings, rest = [], []
    for arg in argv:
        if arg.startswith("--gin."):
            key, sep, value = arg[len("--gin.") :].partition("=")
            if not sep or not key:
                raise ValueError(f"malformed flag {arg!r}; expected --gin.KEY=VALUE")
            bindings.append(f"{key} = {value}")
        else:
            rest.append(arg)
    return bindings, rest


def resolve_gin_file(name: str, search_paths: Sequence[str]) -> str:
    if os.path.isabs(name):
        if os.path.exists(name):
            return name
        raise FileNotFoundError(f"gin file {name!r} does not exist")
    for root in search_paths:
        candidate = os.path.join(root, name)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"gin file {name!r} not found in search paths {list(search_paths)}")


def parse_gin(
    gin_files: Sequence[str], bindings: Sequence[str], search_paths: str | Sequence[str] = ()
) -> None:
    """Clears gin, then parses the files and bindings; unknown names fail, naming the key.

    Args:
      gin_files: gin files, relative to a search path or absolute.
      bindings: extra `KEY = VALUE` lines, applied after the files (they override them).
      search_paths: extra directories (a comma-separated string or a list).
    """
    if isinstance(search_paths, str):
        search_paths = [p for p in search_paths.split(",") if p]
    paths = [*search_paths, os.getcwd(), REPO_ROOT]
    gin.clear_config()
    for path in paths:
        gin.add_config_file_search_path(path)
    files = [resolve_gin_file(f, paths) for f in gin_files]
    for warning in unreferenced_macros(files, bindings, paths):
        sys.stderr.write(f"warning: {warning}\n")
    gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)


_MACRO_REFERENCE = re.compile(r"%([A-Za-z_][\w/.]*)")
_INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]", re.MULTILINE)


def _referenced_macros(files: Sequence[str], search_paths: Sequence[str]) -> set[str]:
    """Every `%NAME` that the gin files, or the files they include, refer to."""
    seen, referenced, pending = set(), set(), list(files)
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        referenced.update(_MACRO_REFERENCE.findall(text))
        for name in _INCLUDE.findall(text):
            try:
                pending.append(resolve_gin_file(name, [os.path.dirname(path), *search_paths]))
            except FileNotFoundError:
                pass  # gin itself reports the missing include, by name
    return referenced


def unreferenced_macros(
    files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]
) -> list[str]:
    """Warnings for bound macros (`KEY = ...`, no dot) that no gin file or binding refers to.

    Gin accepts a binding of a macro nobody reads without complaint, so `--gin.TRAIN_STEP=3`
    (for TRAIN_STEPS) would silently change nothing; this names it and its close matches.
    """
    keys = [b.split("=", 1)[0].strip() for b in bindings if "=" in b]
    macros = [k for k in keys if k and "." not in k and "/" not in k]
    if not macros:
        return []
    referenced = _referenced_macros(files, search_paths)
    for binding in bindings:
        referenced.update(_MACRO_REFERENCE.findall(binding.split("=", 1)[-1]))
    warnings = []
    for macro in macros:
        if macro in referenced:
            continue
        close = difflib.get_close_matches(macro, sorted(referenced), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        warnings.append(f"--gin.{macro} is bound but no gin file refers to %{macro}{hint}")
    return warnings


def parse_flags(argv: Sequence[str], description: str) -> argparse.Namespace:
    """Parses a subcommand's argv: gin flags plus the parser's own; gin is configured after."""
    bindings, rest = split_gin_bindings(argv)
    parser = argparse.ArgumentParser(description=description)
    add_gin_flags(parser)
    args = parser.parse_args(rest)
    parse_gin(args.gin_file, bindings, args.gin_search_paths)
    return args
