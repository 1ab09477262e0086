"""`ft-scaling infer`: a checkpoint's predictions on a task split, as JSONL.

    ft-scaling infer --gin_file=t5x_configs/runs/infer.gin \
        --gin_file=t5x_configs/models/tiny_1.gin \
        --gin_file=gin/tasks/debian_l10n_translate_en_de.gin --gin.CHECKPOINT_PATH="'/tmp/run'"

One line per example, in split order: {"input": prompted source text, "target": reference,
"prediction": decoded output}. The file is written whole to a temp file and renamed
(`files.atomic_write_jsonl`), so an interrupted run leaves no partial file. Default path:
MODEL_DIR/inference/<split>_step<N>.jsonl.
"""

import logging
import os
import sys
from collections.abc import Sequence

import flax.linen as nn
import jax

import gin
from ft_scaling import files
from ft_scaling.config import flags
from ft_scaling.eval import examples as examples_lib
from ft_scaling.eval import generate, restore
from ft_scaling.eval import main as eval_main


@gin.configurable
def infer(
    checkpoint_path: str = gin.REQUIRED,
    task: str = gin.REQUIRED,
    feature_lengths: dict = gin.REQUIRED,
    split: str = "test",
    model_config=None,
    method=None,
    decode: generate.DecodeSettings | None = None,
    output_path: str | None = None,
    max_examples: int | None = None,
    shots: int = 0,
    seed: int = 0,
    prefer_best: bool = True,
    mesh=None,
    rules=None,
) -> str:
    """Decodes every example of the split and writes the JSONL; returns its path."""
    decode = eval_main.resolve_decode(decode, feature_lengths)
    config = model_config or eval_main.default_config()
    restored = restore.restore(checkpoint_path, config, method, prefer_best, mesh=mesh, rules=rules)
    vocabulary = examples_lib.vocabulary(task)
    examples = examples_lib.task_examples(task, split, feature_lengths, max_examples)
    with jax.set_mesh(restored.mesh), nn.logical_axis_rules(restored.rules):
        if shots:
            examples = eval_main.task_few_shot(
                examples, task, feature_lengths, shots, seed, vocabulary
            )
        predictions = eval_main.predict(restored, examples, decode, vocabulary)
    suffix = f"_{shots}shot" if shots else ""
    name = f"{split}_step{restored.step}{suffix}.jsonl"
    path = output_path or os.path.join(restore.run_dir(checkpoint_path), "inference", name)
    rows = [
        {"input": e.source, "target": e.target, "prediction": p}
        for e, p in zip(examples, predictions, strict=True)
    ]
    files.atomic_write_jsonl(path, rows)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    flags.parse_flags(argv, "write predictions of a checkpoint on a task split as JSONL")
    print(f"predictions: {infer()}")
    return 0
