"""`ft-scaling eval` / `infer` end to end on the shipped debian_l10n snapshot (no network)."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.eval import decoding, examples, infer_main, main, restore
from ft_scaling.methods import base, lora
from ft_scaling.models.configs import ModelConfig
from ft_scaling.models.decoder import Decoder
from ft_scaling.train import checkpoints

SIZES = dict(num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, embed_dim=16, mlp_dim=32)
CONFIG = ModelConfig(vocab_size=4096, tie_embeddings=False, **SIZES)
TASK_GIN = "gin/tasks/debian_l10n_translate_en_de.gin"
MODEL_FLAGS = [f"--gin.ModelConfig.{k}={v}" for k, v in SIZES.items()] + [
    "--gin.ModelConfig.vocab_size=4096",
    "--gin.ModelConfig.tie_embeddings=False",
]


def _save(model_dir, params, step=3, base=None, frozen=None):
    store = checkpoints.CheckpointStore(str(model_dir))
    state = {"step": jnp.int32(step), "params": params}
    if frozen is not None:  # as the trainer saves a method run that had no base checkpoint
        state["frozen"] = frozen
    store.save(step, state, {"step": step, "base_checkpoint": base})
    store.close()


def _params(model, seed=0):
    params = model.init(jax.random.PRNGKey(seed), jnp.ones((1, 8), jnp.int32))["params"]
    return jax.tree.map(lambda p: p * 2.0 + 0.01, nn.meta.unbox(params))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("full_run")
    params = _params(Decoder(CONFIG))
    _save(model_dir, params)
    return model_dir, params


def _flags(run_gin, model_dir, *extra):
    return [
        f"--gin_file={run_gin}",
        f"--gin_file={TASK_GIN}",
        *MODEL_FLAGS,
        f"--gin.CHECKPOINT_PATH='{model_dir}'",
        *extra,
    ]


def test_eval_writes_perplexity_and_metrics(full_run):
    model_dir, _ = full_run
    flags = _flags(
        "t5x_configs/runs/eval.gin",
        model_dir,
        "--gin.EVAL_SPLIT='validation'",
        "--gin.MAX_EXAMPLES=4",
        "--gin.MAX_DECODE_LENGTH=6",
        "--gin.EVAL_BATCH_SIZE=64",
    )
    assert main.main(flags) == 0
    saved = json.load(open(model_dir / "eval" / "validation_step3.json"))
    got = saved["metrics"]
    assert saved["step"] == 3 and saved["generated_examples"] == 4
    assert got["examples"] > 1000  # perplexity covers the whole split, not MAX_EXAMPLES
    np.testing.assert_allclose(got["perplexity"], math.exp(got["loss"]), rtol=1e-12)
    assert 0 < got["loss"] < 20 and {"bleu", "chrf", "rougeL"} <= set(got)
    row = [json.loads(x) for x in open(model_dir / "metrics.jsonl")][-1]
    assert row["split"] == "eval/validation_step3" and row["loss"] == got["loss"]


def test_infer_writes_the_greedy_predictions(full_run, tmp_path):
    model_dir, params = full_run
    out = tmp_path / "pred.jsonl"
    flags = _flags(
        "t5x_configs/runs/infer.gin",
        model_dir,
        "--gin.INFER_SPLIT='validation'",
        "--gin.MAX_EXAMPLES=3",
        "--gin.MAX_DECODE_LENGTH=5",
        f"--gin.INFER_OUTPUT='{out}'",
    )
    assert infer_main.main(flags) == 0
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == 3 and set(rows[0]) == {"input", "target", "prediction"}
    # The first row again, decoded directly with the same params.
    first = examples.task_examples(
        "debian_l10n_translate_en_de", "validation", {"inputs": 64, "targets": 64}, max_examples=1
    )[0]
    assert rows[0]["input"] == first.source and rows[0]["target"] == first.target
    tokens, lengths = decoding.left_pad([first.prompt])
    out_tokens = decoding.greedy_decode(
        Decoder(CONFIG), {"params": params}, tokens, lengths, max_decode_length=5
    ).tokens
    vocab = examples.vocabulary("debian_l10n_translate_en_de")
    expected = vocab.decode(decoding.strip_after_eos(np.asarray(out_tokens))[0])
    assert rows[0]["prediction"] == expected


def test_mismatched_checkpoint_names_the_parameter(full_run):
    model_dir, _ = full_run
    flags = _flags("t5x_configs/runs/eval.gin", model_dir, "--gin.ModelConfig.mlp_dim=48")
    with pytest.raises(checkpoints.CheckpointError, match=r"mlp/wi_0/kernel has shape \(16, 32\)"):
        main.main(flags)
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoints under"):
        main.main(_flags("t5x_configs/runs/eval.gin", model_dir / "nothing"))


def test_lora_run_over_its_base_checkpoint(full_run, tmp_path):
    """A LoRA checkpoint holds only A and B; eval restores the base under it and merges."""
    base_dir, _ = full_run
    method = lora.LoRA(rank=2)
    params = _params(method.wrap(Decoder(CONFIG)), seed=1)
    lora_only = {
        k: v for k, v in traverse_util.flatten_dict(params).items() if k[-1] in ("lora_a", "lora_b")
    }
    _save(
        tmp_path / "lora_run", traverse_util.unflatten_dict(lora_only), step=5, base=str(base_dir)
    )
    flags = _flags(
        "t5x_configs/runs/eval.gin",
        tmp_path / "lora_run",
        "--gin_file=gin/methods/lora.gin",
        "--gin.LORA_RANK=2",
        "--gin.EVAL_SPLIT='validation'",
        "--gin.MAX_EXAMPLES=2",
        "--gin.MAX_DECODE_LENGTH=4",
        "--gin.evaluate.compute_perplexity=False",
    )
    assert main.main(flags) == 0
    assert os.path.exists(tmp_path / "lora_run" / "eval" / "validation_step5.json")


def test_method_run_without_base_restores_its_frozen_params(tmp_path):
    """Trained from scratch, a method run stores trainable and frozen splits side by side."""
    method = lora.LoRA(rank=2)
    model = method.wrap(Decoder(CONFIG))
    params = _params(model, seed=2)
    trainable, frozen = base.split(params, method.trainable_mask(params))
    _save(tmp_path / "run", trainable, step=4, frozen=frozen)
    restored = restore.restore(str(tmp_path / "run"), CONFIG, method, merge_lora=False)
    got = traverse_util.flatten_dict(jax.device_get(restored.variables["params"]))
    for path, leaf in traverse_util.flatten_dict(params).items():
        np.testing.assert_array_equal(got[path], leaf)
