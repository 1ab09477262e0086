"""`ft-scaling train` / `python -m ft_scaling.train`: parse t5x-style gin flags, train."""

import json
import logging
import sys
from collections.abc import Sequence

from ft_scaling.config import flags


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    flags.parse_flags(argv, "train (pretrain or finetune) a decoder-only LM from gin files")
    from ft_scaling.train import loop  # after gin parsing: imports TF/seqio (slow)

    summary = loop.train()
    print(json.dumps(summary.to_json(), indent=2, sort_keys=True))
    return 0 if summary.finished else 3
