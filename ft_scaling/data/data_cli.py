"""`ft-scaling data`: build the embedded corpus, show what a data root holds, size a subset.

    ft-scaling data build debian_l10n [--out DIR] [--locale_dir D] [--lists_dir D]
                                      [--snapshot] [--vocab_size_ende N] [--vocab_size_enzh N]
    ft-scaling data info [--root DIR]
    ft-scaling data subset TASK --size N [--seed S]

`build` reads this machine's gettext catalogs and apt Translation files (fetch the latter with
`apt-get -o Acquire::Languages=en,de,zh_CN,fr update`), writes every config, then trains the
SentencePiece vocabularies on its pretraining text. `--snapshot` rewrites the snapshot shipped
in the package (capped summarization, derived pretraining text) instead.
"""

import argparse
import json
import sys
import time

from ft_scaling.data import debian_l10n


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ft-scaling data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a dataset from system sources")
    build.add_argument("dataset", choices=["debian_l10n"])
    build.add_argument("--out", default=None, help=f"default {debian_l10n.DEFAULT_BUILD_DIR}")
    build.add_argument("--locale_dir", default=debian_l10n.DEFAULT_LOCALE_DIR)
    build.add_argument("--lists_dir", default=debian_l10n.DEFAULT_LISTS_DIR)
    build.add_argument("--snapshot", action="store_true", help="rewrite the shipped snapshot")
    build.add_argument("--vocab_size_ende", type=int, default=0, help="0: the default (4096)")
    build.add_argument("--vocab_size_enzh", type=int, default=0, help="0: the default (8192)")
    info = commands.add_parser("info", help="counts of a debian_l10n data root")
    info.add_argument(
        "--root", default=None, help="default: $FT_SCALING_DEBIAN_L10N_DIR or snapshot"
    )
    subset = commands.add_parser("subset", help="examples and tokens of a D_f subset")
    subset.add_argument("task")
    subset.add_argument("--size", type=int, required=True)
    subset.add_argument("--seed", type=int, default=0)
    return parser


def _build(args: argparse.Namespace) -> int:
    from ft_scaling.data import vocab  # imports seqio/TF: only when needed

    out = debian_l10n.SNAPSHOT_DIR if args.snapshot else (args.out or debian_l10n.DEFAULT_BUILD_DIR)
    manifest = debian_l10n.build(out, args.locale_dir, args.lists_dir, snapshot=args.snapshot)
    for name, size in (
        ("debian_l10n_ende", args.vocab_size_ende),
        ("debian_l10n_enzh", args.vocab_size_enzh),
    ):
        start = time.time()
        path = vocab.build_vocabulary(name, data_root=out, out_dir=out, vocab_size=size)
        print(f"vocabulary {name}: {path} ({time.time() - start:.0f}s)")
    for config, counts in manifest["counts"].items():
        print(f"{config:18s} " + "  ".join(f"{s}={n}" for s, n in counts.items()))
    print(f"wrote {out} (build {manifest['build_seconds']}s, write {manifest['write_seconds']}s)")
    if not args.snapshot:
        print(f"use it with: export {debian_l10n.DATA_DIR_ENV}={out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    manifest = debian_l10n.read_manifest(args.root)
    print(json.dumps({k: manifest[k] for k in ("built", "snapshot", "counts")}, indent=1))
    return 0


def _subset(args: argparse.Namespace) -> int:
    import ft_scaling.data.tasks  # noqa: F401 - registers the tasks
    from ft_scaling.data import subsets

    stats = subsets.subset_stats(args.task, args.size, args.seed)
    print(json.dumps({"task": args.task, "seed": args.seed, **stats}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ft-scaling data`; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    handler = {"build": _build, "info": _info, "subset": _subset}[args.command]
    try:
        return handler(args)
    except (FileNotFoundError, ValueError) as e:
        # Missing sources and bad names are user errors: say what is wrong, no traceback.
        sys.stderr.write(f"ft-scaling data {args.command}: {e}\n")
        return 1
