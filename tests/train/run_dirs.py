"""Helpers for tests that check what a run leaves in its directory."""

import hashlib
import os


def tree_digest(root) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root` ('<dir>' for directories).

    Two digests are equal iff the same files hold the same bytes (directories included, so a
    run that only creates an empty directory is seen too).
    """
    root = os.fspath(root)
    out = {}
    for directory, subdirs, names in os.walk(root):
        for name in subdirs:
            out[os.path.relpath(os.path.join(directory, name), root)] = "<dir>"
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths added, removed or changed between two digests."""
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
