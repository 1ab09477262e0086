"""t5x-style command-line flags for gin: `--gin_file` (repeatable), `--gin.KEY=VALUE`,
`--gin_search_paths`.

`--gin.MODEL_DIR="'/tmp/run'"` becomes the binding `MODEL_DIR = '/tmp/run'`: the value is gin
syntax, exactly as in t5x. Gin files are looked up in the search paths, which always include the
current directory and the repository root (where `t5x_configs/` and `gin/` live).
"""

import argparse
import os
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
    gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)


def parse_flags(argv: Sequence[str], description: str) -> argparse.Namespace:
    """Parses a subcommand's argv: gin flags plus the parser's own; gin is configured after."""
    bindings, rest = split_gin_bindings(argv)
    parser = argparse.ArgumentParser(description=description)
    add_gin_flags(parser)
    args = parser.parse_args(rest)
    parse_gin(args.gin_file, bindings, args.gin_search_paths)
    return args
