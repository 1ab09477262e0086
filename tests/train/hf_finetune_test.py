"""Finetuning imported Hugging Face models through `ft-scaling train` with hf.gin.

Tiny GPT-NeoX (parallel residual, partial RoPE, biases, untied, embedding padded past the
tokenizer) and Llama (BOS-adding tokenizer) checkpoints are written by transformers from a
config; their tokenizer.json is a byte-level BPE trained here with `tokenizers`. Nothing is
downloaded.
"""

import json
import math

import numpy as np
import pytest
from flax import traverse_util

from ft_scaling import cli, files
from ft_scaling.methods import lora
from ft_scaling.models import decoder
from ft_scaling.models.hf import loading, run_setup
from ft_scaling.train import checkpoints
from tests.train import byte_tasks

torch = pytest.importorskip("torch", reason="test extras: pip install -e '.[bench]'")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TOKENIZER_IDS = 300
SPECIALS = {
    # family: (special tokens first in the vocabulary, tokenizer_config.json)
    "gpt_neox": (
        ["<|endoftext|>", "<|padding|>"],
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": False},
    ),
    "llama": (
        ["<unk>", "<s>", "</s>"],
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True},
    ),
}
_SHAPES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
)
METHODS = {"lora": "gin/methods/lora.gin", "prompt": "gin/methods/prompt.gin"}
METHODS["bitfit"] = "gin/methods/bitfit.gin"


def _tokenizer(directory, family: str) -> None:
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials, config = SPECIALS[family]
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_IDS,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(byte_tasks.TEXT * 4, trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{family: directory} of tiny checkpoints with their tokenizers."""
    dirs = {}
    configs = {
        # GPT-NeoX pads its embedding past the tokenizer (Pythia: 50277 ids, 50304 rows).
        "gpt_neox": transformers.GPTNeoXConfig(
            **_SHAPES, vocab_size=TOKENIZER_IDS + 20, rotary_pct=0.25, bos_token_id=0
        ),
        "llama": transformers.LlamaConfig(
            **_SHAPES, vocab_size=TOKENIZER_IDS, num_key_value_heads=2, rms_norm_eps=1e-5
        ),
    }
    for family, config in configs.items():
        directory = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
        model.save_pretrained(directory, max_shard_size="60KB")
        _tokenizer(directory, family)
        dirs[family] = directory
    return dirs


def _train(hf_dir, model_dir, method_gin: str, *bindings) -> int:
    byte_tasks.register()
    return cli.main(
        [
            "train",
            "--gin_file=t5x_configs/runs/finetune.gin",
            f"--gin_file={method_gin}",
            "--gin_file=t5x_configs/models/hf.gin",
            f"--gin.HF_CHECKPOINT='{hf_dir}'",
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.MIXTURE_OR_TASK_NAME='{byte_tasks.PREFIX_TASK}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 24}",
            "--gin.TRAIN_STEPS=12",
            "--gin.BATCH_SIZE=8",
            "--gin.FINETUNE_EXAMPLES=8",
            "--gin.MAX_EPOCHS=None",
            "--gin.EVAL_EVERY=0",
            "--gin.LOG_EVERY=1",
            "--gin.TEST_SPLIT=None",
            "--gin.PROMPT_LENGTH=4",
            "--gin.train.eval_examples=8",
            *bindings,
        ]
    )


def _train_losses(model_dir) -> list[float]:
    rows = files.read_jsonl(files.path(model_dir) / "metrics.jsonl")
    return [row["loss"] for row in rows if row.get("split") == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_lora_prompt_bitfit_finetune_an_imported_model(hf_dirs, family, tmp_path):
    base_params = traverse_util.flatten_dict(loading.load_pretrained(str(hf_dirs[family]))[1])
    for method, method_gin in METHODS.items():
        model_dir = tmp_path / method
        assert _train(hf_dirs[family], model_dir, method_gin) == 0, method
        losses = _train_losses(model_dir)
        assert len(losses) == 12 and all(math.isfinite(x) for x in losses), (method, losses)
        # A random tiny model on 8 repeated examples: every method's loss falls steadily (4
        # soft prompt tokens least: about 0.02 nats in 12 steps).
        assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.005, (method, losses)
        assert losses[-1] < losses[0], (method, losses)
        summary = json.loads((model_dir / "summary.json").read_text())
        assert summary["status"] == "finished"
        # The checkpoint refers to the HF base; rebuilt, the frozen leaves are the imported ones.
        params, meta = checkpoints.load_params(str(model_dir))
        assert meta["base_checkpoint"] == str(hf_dirs[family])
        flat = traverse_util.flatten_dict(params)
        frozen = ("layers_0", "attention", "query", "kernel")
        np.testing.assert_array_equal(np.asarray(flat[frozen]), np.asarray(base_params[frozen]))
        if method == "lora":
            _check_exported_lora(hf_dirs[family], model_dir, params, tmp_path / "lora_hf")
            _check_eval(hf_dirs[family], model_dir)


def _check_eval(hf_dir, model_dir) -> None:
    """`ft-scaling eval` with hf.gin: the LoRA run over its HF base, in the HF tokenizer."""
    argv = [
        "eval",
        "--gin_file=t5x_configs/runs/eval.gin",
        f"--gin_file={METHODS['lora']}",
        "--gin_file=t5x_configs/models/hf.gin",
        f"--gin.HF_CHECKPOINT='{hf_dir}'",
        f"--gin.CHECKPOINT_PATH='{model_dir}'",
        f"--gin.MIXTURE_OR_TASK_NAME='{byte_tasks.PREFIX_TASK}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 24}",
        "--gin.EVAL_SPLIT='validation'",
        "--gin.MAX_EXAMPLES=2",
        "--gin.MAX_DECODE_LENGTH=4",
    ]
    assert cli.main(argv) == 0
    (result,) = (model_dir / "eval").glob("validation_step*.json")
    metrics = json.loads(result.read_text())["metrics"]
    assert math.isfinite(metrics["perplexity"]) and "bleu" in metrics, metrics


def _check_exported_lora(hf_dir, model_dir, params, out_dir) -> None:
    """`ft-scaling convert orbax-to-hf` of the LoRA run: transformers gives our merged logits."""
    assert cli.main(["convert", "orbax-to-hf", str(model_dir), str(out_dir)]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(out_dir)).eval()
    merged = lora.LoRA(rank=4, alpha=4.0).merge(params)  # gin/methods/lora.gin's defaults
    tokens = np.random.default_rng(0).integers(3, TOKENIZER_IDS, (2, 16))
    config = run_setup.model_config(str(hf_dir))
    ours = np.asarray(decoder.Decoder(config).apply({"params": merged}, tokens))
    with torch.no_grad():
        theirs = exported(input_ids=torch.tensor(tokens)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-4
    base = checkpoints.load_params(str(model_dir))[1]["base_checkpoint"]
    unchanged = np.asarray(
        decoder.Decoder(config).apply({"params": loading.load_pretrained(base)[1]}, tokens)
    )
    assert np.abs(unchanged - theirs).max() > 1e-3  # the LoRA update is in the export


@pytest.mark.slow
def test_prompt_init_samples_the_imported_embedding_unscaled(hf_dirs, tmp_path):
    """Llama does not scale embeddings: the 'vocab' prompt is rows of the embedding itself."""
    model_dir = tmp_path / "prompt"
    frozen_lr = ("--gin.TRAIN_STEPS=1", "--gin.LEARNING_RATE=1e-12")  # the init, as saved
    assert _train(hf_dirs["llama"], model_dir, METHODS["prompt"], *frozen_lr) == 0
    params, _ = checkpoints.load_params(str(model_dir), prefer_best=False)
    prompt, embedding = np.asarray(params["prompt"]), np.asarray(params["embedding"])
    distances = np.linalg.norm(prompt[:, None, :] - embedding[None], axis=-1).min(axis=1)
    np.testing.assert_allclose(distances, 0.0, atol=1e-6)


def _cli_error(capsys, gin_files, *bindings) -> str:
    byte_tasks.register()
    argv = ["train", *(f"--gin_file={f}" for f in gin_files), *bindings]
    assert cli.main(argv) == 1
    return capsys.readouterr().err


def test_hf_base_without_its_architecture_is_refused_before_any_step(hf_dirs, tmp_path, capsys):
    """hf.gin before the run gin: the run gin's ModelConfig wins, and setup says so."""
    gin_files = ["t5x_configs/models/hf.gin", "t5x_configs/runs/finetune.gin", METHODS["lora"]]
    err = _cli_error(
        capsys,
        gin_files,
        f"--gin.HF_CHECKPOINT='{hf_dirs['llama']}'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{hf_dirs['llama']}'",
        f"--gin.MODEL_DIR='{tmp_path}'",
        f"--gin.MIXTURE_OR_TASK_NAME='{byte_tasks.PREFIX_TASK}'",
        "--gin.TRAIN_STEPS=1",
    )
    assert "is a Hugging Face checkpoint, but this run's model config" in err
    assert "include t5x_configs/models/hf.gin after the run gin" in err
    assert not (tmp_path / "checkpoints").exists()


def test_hf_base_with_another_vocabulary_is_refused(hf_dirs, tmp_path, capsys):
    gin_files = ["t5x_configs/runs/finetune.gin", METHODS["lora"], "t5x_configs/models/hf.gin"]
    err = _cli_error(
        capsys,
        gin_files,
        f"--gin.HF_CHECKPOINT='{hf_dirs['gpt_neox']}'",
        f"--gin.MODEL_DIR='{tmp_path}'",
        f"--gin.train.task='{byte_tasks.PREFIX_TASK}'",  # the byte vocabulary, not tokenizer.json
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 24}",
        "--gin.TRAIN_STEPS=1",
    )
    assert "the task's vocabulary is ByteVocabulary, not the checkpoint's tokenizer.json" in err


def test_hub_id_without_a_network_says_so(tmp_path, capsys):
    gin_files = ["t5x_configs/runs/finetune.gin", METHODS["lora"], "t5x_configs/models/hf.gin"]
    err = _cli_error(
        capsys,
        gin_files,
        "--gin.HF_CHECKPOINT='EleutherAI/pythia-1b@step143000'",
        f"--gin.MODEL_DIR='{tmp_path}'",
        "--gin.MIXTURE_OR_TASK_NAME='wmt14_ende'",
        "--gin.TRAIN_STEPS=1",
    )
    assert "cannot fetch the hub model 'EleutherAI/pythia-1b@step143000': no network" in err


@pytest.mark.slow
def test_glue_classification_from_the_imported_model(hf_dirs):
    """GLUE (classify, MNLI under mock data): PBFT with LoRA from the imported Llama, in its
    own tokenizer (RunSettings.vocabulary 'hf:DIR'), base params from the HF directory."""
    import tensorflow_datasets as tfds

    from ft_scaling.classify import run, tasks
    from ft_scaling.data import hf_vocab, vocab

    directory = str(hf_dirs["llama"])
    assert vocab.get_vocabulary(f"hf:{directory}") is hf_vocab.checkpoint_vocabulary(directory)
    settings = run.RunSettings(
        task="mnli",
        pattern="mnli_question",
        model_config=run_setup.model_config(directory),
        vocabulary=f"hf:{directory}",
        field_tokens=8,
        sequence_length=48,
        batch_size=4,
        eval_batch_size=8,
        eval_examples=8,
        unlabeled_examples=8,
    )
    spec = run.MethodSpec("pbft_lora", "pbft", "lora", 1e-2, steps=3)
    tasks._read.cache_clear()
    with tfds.testing.mock_data(num_examples=40):
        row = run.run(spec, settings, per_class=2, seed=0, bases={"pretrained": directory})
    tasks._read.cache_clear()
    assert math.isfinite(row["last_train_loss"]) and 0.0 <= row["in_domain_accuracy"] <= 1.0
