"""A tiny model suite of our own in Hugging Face layout, the shape of Pythia's (study/suites.py).

    build(root) -> root/<size>/step<N>/    for size in SIZES, N in STEPS: config.json,
                                           model.safetensors, tokenizer.json(+config)

Each size is a GPT-NeoX (Pythia's architecture) config written by hand, with a byte-level BPE
tokenizer.json (the Pythia-style setup of tests/data/pythia_style_tokenizer.py, 512 ids,
trained on a slice of the corpus' En-De pairs). Our trainer pretrains each size from scratch on
the embedded corpus (debian_l10n_pretrain_en_de in that tokenizer; pretrain.gin + hf.gin over a
seed directory of config and tokenizer only: pretrain.gin restores no checkpoint), keeping
steps STEPS; every kept step is exported with `ft-scaling convert orbax-to-hf`
(models/hf/convert_cli.py, save_pretrained). Nothing is
downloaded; no torch or transformers needed.

    python -m tests.study.tiny_suite DIR     builds it in DIR (new), for the study of
                                             tests/study/micro_suite.gin (~45 s CPU)
"""

import argparse
import json
import os

from ft_scaling import cli
from ft_scaling.data import debian_l10n
from tests.data import pythia_style_tokenizer

# size name: (layers, heads, model dim); head dim 16, FFN 4 x model dim (GPT-NeoX's). One
# layer each: compiling the steps is most of a tiny run's time, and it grows with the layers.
SIZES = {"s1": (1, 2, 32), "s2": (1, 3, 48), "s3": (1, 4, 64)}
STEPS = (8, 16, 24)  # the revisions: step8, step16 and the final step24
BATCH, LENGTH = 8, 32  # pretraining rows x packed tokens: 256 tokens per step
TOKENS_PER_STEP = BATCH * LENGTH
VOCAB = 512


def _tokenizer(directory: str) -> None:
    rows = debian_l10n.load_split("translate_en_de", "train")[:3000]
    text = [row[side] for row in rows for side in ("source", "target")]
    tokenizer = pythia_style_tokenizer.build(VOCAB, text)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        f.write(pythia_style_tokenizer.TOKENIZER_CONFIG)


def _config(layers: int, heads: int, width: int) -> dict:
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": VOCAB,
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * width,
        "hidden_act": "gelu",
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "max_position_embeddings": 128,
        "layer_norm_eps": 1e-5,
        "use_parallel_residual": True,
        "attention_bias": True,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    }


def _pretrain(seed_dir: str, model_dir: str) -> None:
    code = cli.main(
        [
            "train",
            "--gin_file=t5x_configs/runs/pretrain.gin",
            "--gin_file=t5x_configs/models/hf.gin",
            f"--gin.HF_CHECKPOINT='{seed_dir}'",
            f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.MIXTURE_OR_TASK_NAME='debian_l10n_pretrain_en_de'",
            f"--gin.TASK_FEATURE_LENGTHS={{'targets': {LENGTH}}}",
            f"--gin.TRAIN_STEPS={STEPS[-1]}",
            f"--gin.BATCH_SIZE={BATCH}",
            "--gin.MAX_EPOCHS=None",
            "--gin.EVAL_EVERY=0",
            f"--gin.SAVE_EVERY={STEPS[0]}",
            f"--gin.LOG_EVERY={STEPS[-1]}",
            f"--gin.train.keep_steps={STEPS[:-1]!r}",
            "--gin.train.eval_examples=16",
        ]
    )
    assert code == 0, f"pretraining {model_dir} failed"


def build(root: str) -> dict[str, str]:
    """Builds the suite under `root`; returns {size: root/size}."""
    from ft_scaling.models.hf import convert_cli

    tokenizer_dir = os.path.join(root, "_tokenizer")
    os.makedirs(tokenizer_dir)
    _tokenizer(tokenizer_dir)
    sources = {}
    for size, shape in SIZES.items():
        seed = os.path.join(root, "_seed", size)  # config + tokenizer: what save_pretrained copies
        os.makedirs(seed)
        with open(os.path.join(seed, "config.json"), "w") as f:
            json.dump(_config(*shape), f, indent=2)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            with (
                open(os.path.join(tokenizer_dir, name)) as src,
                open(os.path.join(seed, name), "w") as dst,
            ):
                dst.write(src.read())
        run = os.path.join(root, "_pretrain", size)
        _pretrain(seed, run)
        for step in STEPS:
            convert_cli.orbax_to_hf(
                f"{run}/checkpoints/{step}", os.path.join(root, size, f"step{step}"), source=seed
            )
        sources[size] = os.path.join(root, size)
    return sources


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="build the tiny suite of tests/study")
    parser.add_argument("root", help="a new directory for it")
    for size, where in build(parser.parse_args().root).items():
        print(size, where)
