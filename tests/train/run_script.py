"""Runs one small training in a fresh process (device layouts and kills need their own process).

usage: python tests/train/run_script.py MODEL_DIR TRAIN_STEPS [MESH_SHAPE] [key=value ...]
With JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set, it joins a multi-process
run (partitioning.initialize_distributed reads them).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ft_scaling.config import flags  # noqa: E402
from tests.train import byte_tasks  # noqa: E402

BASE_BINDINGS = [
    "MIXTURE_OR_TASK_NAME='test_bytes_lm'",
    "VOCAB_SIZE=384",
    "TASK_FEATURE_LENGTHS={'targets': 32}",
    "BATCH_SIZE=8",
    "LEARNING_RATE=0.003",
    "MAX_EPOCHS=None",
    "PACK=False",
    "LOG_EVERY=1",
    "EVAL_EVERY=0",
]


def bindings(model_dir: str, steps: int, mesh: str | None, extra: list[str]) -> list[str]:
    out = [*BASE_BINDINGS, f"MODEL_DIR='{model_dir}'", f"TRAIN_STEPS={steps}", *extra]
    if mesh:
        out.append(f"mesh_shape.shape={mesh}")
    return out


def main(argv):
    model_dir, steps = argv[0], int(argv[1])
    mesh = argv[2] if len(argv) > 2 and argv[2] != "-" else None
    byte_tasks.register()
    gin_files = ["t5x_configs/models/tiny_1.gin", "t5x_configs/runs/pretrain.gin"]
    flags.parse_gin(gin_files, bindings(model_dir, steps, mesh, argv[3:]))
    from ft_scaling.train import loop

    summary = loop.train()
    print("SUMMARY " + json.dumps(summary.to_json()))


if __name__ == "__main__":
    main(sys.argv[1:])
