"""End to end through `ft-scaling train`'s loop: pretrain a base, then finetune it with each
PET method gin (INITIAL_CHECKPOINT_PATH), and rebuild the full model from the small checkpoint."""

import pytest
from flax import traverse_util

from ft_scaling.config import flags
from ft_scaling.methods import registry
from ft_scaling.train import checkpoints
from tests.train import byte_tasks

COMMON = [
    "VOCAB_SIZE=384",  # seqio.ByteVocabulary
    "BATCH_SIZE=8",
    "MAX_EPOCHS=None",
    "EVAL_EVERY=0",
    "LOG_EVERY=1",
]
# tiny_1 (d = 64, 2 blocks, 2 x 32 query heads, 1 kv head, FFN 256): closed-form trainables.
TRAINABLE = {"prompt": 8 * 64, "lora": 2 * 4 * (128 + 2 * 96 + 128 + 3 * 320)}


def _train(gin_files, bindings):
    flags.parse_gin(["t5x_configs/models/tiny_1.gin", *gin_files], [*COMMON, *bindings])
    from ft_scaling.train import loop

    return loop.train()


@pytest.mark.slow
def test_pet_gins_finetune_from_a_base_checkpoint(tmp_path):
    byte_tasks.register()
    base_dir = str(tmp_path / "base")
    _train(
        ["t5x_configs/runs/pretrain.gin"],
        [
            f"MODEL_DIR='{base_dir}'",
            f"MIXTURE_OR_TASK_NAME='{byte_tasks.LM_TASK}'",
            "TASK_FEATURE_LENGTHS={'targets': 32}",
            "TRAIN_STEPS=3",
            "PACK=False",
        ],
    )
    base_params, _ = checkpoints.load_params(base_dir)
    base_flat = traverse_util.flatten_dict(base_params)
    for name, trainable in TRAINABLE.items():
        model_dir = str(tmp_path / name)
        summary = _train(
            ["t5x_configs/runs/finetune.gin", registry.gin_file(name)],
            [
                f"MODEL_DIR='{model_dir}'",
                f"INITIAL_CHECKPOINT_PATH='{base_dir}'",
                f"MIXTURE_OR_TASK_NAME='{byte_tasks.PREFIX_TASK}'",
                "TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
                "TRAIN_STEPS=4",
                "PROMPT_LENGTH=8",
                "TEST_SPLIT=None",
            ],
        )
        assert summary.status == "finished" and summary.trainable_params == trainable
        params, meta = checkpoints.load_params(model_dir)
        assert meta["base_checkpoint"].rstrip("/").endswith("base")
        flat = traverse_util.flatten_dict(params)
        method_leaves = sorted("/".join(p) for p in set(flat) - set(base_flat))
        assert method_leaves and all(
            leaf == "prompt" or leaf.endswith(("lora_a", "lora_b")) for leaf in method_leaves
        )
        for path, leaf in base_flat.items():  # the frozen base came through unchanged
            assert (flat[path] == leaf).all(), path
