"""The `ft-scaling` entry point: picks a subcommand and hands it the remaining argv.

Each subcommand lives in the module that owns its concept and exposes `main(argv) -> int`;
this file only dispatches, so importing it is cheap and adding a subcommand is one table row.
"""

import importlib
import sys
import traceback

SUBCOMMANDS = {
    "train": ("ft_scaling.train.main", "train (pretrain or finetune) from gin files"),
    "eval": ("ft_scaling.eval.main", "perplexity and generation metrics of a checkpoint"),
    "infer": ("ft_scaling.eval.infer_main", "write predictions of a checkpoint as JSONL"),
    "info": ("ft_scaling.models.info", "print parameter counts of gin-configured models"),
    "convert": ("ft_scaling.models.hf.convert_cli", "hf-to-orbax / orbax-to-hf SRC DST"),
    "fit": ("ft_scaling.scaling.fit_cli", "fit scaling laws to a results table"),
    "data": ("ft_scaling.data.data_cli", "build the embedded debian_l10n corpus"),
    "study": ("ft_scaling.study.main", "run a scaling study and write its report"),
    "search": ("ft_scaling.study.search.main", "early-stopped hyperparameter search (Optuna TPE)"),
    "classify": ("ft_scaling.classify.main", "few-shot classification (FT, PBFT, ICL, distill)"),
    "launch": ("launch.tpu", "launch a study on TPU pods (--dry_run prints commands)"),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<8} {desc}" for name, (_, desc) in SUBCOMMANDS.items())
    return f"usage: ft-scaling <command> [flags]\n\ncommands:\n{rows}\n"


def one_line(error: BaseException, limit: int = 600) -> str:
    """An error as one line: its type and message with the whitespace folded."""
    message = " ".join(str(error).split()) or "(no message)"
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    return f"{type(error).__name__}: {message}"


def main(argv: list[str] | None = None) -> int:
    """Runs a subcommand. A failure prints one line naming the problem and exits 1; the
    traceback is printed only with `--verbose` (anywhere in argv)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        sys.stderr.write(f"ft-scaling: unknown command {name!r}\n{_usage()}")
        return 2
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        return int(module.main(rest) or 0)
    except Exception as error:  # noqa: BLE001 - the CLI's one place that reports any error
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (rerun with --verbose for the traceback)"
        sys.stderr.write(f"ft-scaling {name}: error: {one_line(error)}{hint}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
