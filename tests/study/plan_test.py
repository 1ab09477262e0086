"""`ft-scaling study plan`: run counts from sweep.expand, steps by the trainer's StopRule, FLOPs
by configs.train_flops_per_token (and, for PET, the matmuls of the trainer's own gradient),
trainable parameters and checkpoint bytes of the real trees; the CLI's tables and files.

Nothing trains; every figure is computed from gin and abstract shapes."""

import functools
import json
import math
import shlex

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from ft_scaling.config import flags
from ft_scaling.methods import base, bitfit, full, lora, prompt
from ft_scaling.models import configs, decoder
from ft_scaling.study import main as study_main
from ft_scaling.study import param_sizes, plan, run_cost, sweep
from ft_scaling.train import input_pipeline, losses, optimizers, settings, trainer

# gin: (pretraining runs, model size, pretraining data, PET size), as each gin's header states.
STUDIES = {
    "paper_wmt14_ende": (5, 480, 384, 396),
    "paper_wmt19_enzh": (5, 465, 465, 396),
    "paper_mlsum": (5, 465, 372, 396),
    "pythia_wmt14_ende": (0, 576, 384, 396),
    "pythia_wmt19_enzh": (0, 558, 372, 396),
    "pythia_mlsum": (0, 558, 372, 396),
}


@functools.cache
def _planned(name: str):
    """(study, runs, shapes, costs, plan) of a study gin, as `study plan` computes them."""
    flags.parse_gin([f"gin/studies/{name}.gin"], [])
    study = sweep.Study()
    runs = sweep.expand(study, "/plan_test/out")
    shapes = run_cost.read_shapes(runs)
    costs = [run_cost.cost(shape) for shape in shapes]
    return study, runs, shapes, costs, plan.build(study, runs, costs, shapes, 0.4)


@pytest.mark.parametrize("name", STUDIES)
def test_runs_per_axis_are_the_expansion(name):
    study, runs, _, _, planned = _planned(name)
    pretraining, *axes = STUDIES[name]
    counted = {axis: sum(c.values()) for axis, c in planned["runs"]["by_axis"].items()}
    assert counted == {
        **({"pretraining": pretraining} if pretraining else {}),
        **dict(zip(plan.AXES, axes, strict=True)),
    }
    assert planned["runs"]["total"] == len(runs) == sum(counted.values())
    finetune = [r for r in runs if r.kind == "finetune"]
    for method in study.methods:  # each method's runs, over the axes, are its expanded ones
        mine = sum(c.get(method.name, 0) for c in planned["runs"]["by_axis"].values())
        assert mine == sum(r.record["method"] == method.name for r in finetune)
    rows = planned["finetuning_by_model"] + planned["pretraining_by_model"]
    assert sum(row["runs"] for row in rows) == len(runs)
    assert sum(row["tokens"] for row in rows) == planned["total"]["tokens"]


@pytest.mark.parametrize("name", ["paper_wmt14_ende", "pythia_wmt14_ende"])
def test_flops_are_train_flops_per_token_times_tokens(name):
    _, runs, shapes, costs, planned = _planned(name)
    for run, shape, cost in zip(runs, shapes, costs, strict=True):
        length = sum(shape.feature_lengths.values())
        assert cost.tokens == cost.steps * shape.batch_size * length
        if shape.method.name == "fmt":  # full tuning and pretraining: the formula itself
            assert cost.flops == configs.train_flops_per_token(shape.model_config, length) * (
                cost.tokens
            )
        else:  # a frozen base: fewer FLOPs than full tuning of the same tokens (LoRA, prompt)
            assert shape.method.name in ("lora", "prompt"), run.record
    total = sum(cost.flops for cost in costs)
    assert planned["total"]["flops"] == pytest.approx(total, rel=1e-12)
    hours = total / (275e12 * 0.4) / 3600
    assert planned["total"]["chip_hours"]["TPU v4"] == pytest.approx(hours, rel=1e-12)


def test_steps_and_tokens_of_the_paper_recipe():
    """TRAIN_STEPS 200K or 100 epochs of D_f // BATCH_SIZE, whichever is fewer (PAPER.md §3)."""
    _, runs, _, costs, _ = _planned("paper_wmt14_ende")
    by_point = {
        (r.record["model_name"], r.record["method"], r.record["pet_size"],
         r.record["finetune_examples"]): c
        for r, c in zip(runs, costs, strict=True) if r.kind == "finetune"
    }  # fmt: skip
    fmt_100k = by_point[("1b", "fmt", None, 100_000)]
    assert (fmt_100k.steps, fmt_100k.tokens) == (78_100, 78_100 * 128 * 512)  # 781 x 100
    assert by_point[("1b", "fmt", None, 4_500_000)].steps == 200_000  # 35,156 x 100 > 200K
    assert by_point[("1b", "lora", 4, 8_000)].steps == 50_000  # 500 batches of 16 x 100
    assert by_point[("16b", "prompt", 100, 100_000)].steps == 200_000
    assert all(c.exact for c in costs)  # pretraining: MAX_EPOCHS = None, TRAIN_STEPS governs
    pretrain = {r.record["model_name"]: c for r, c in zip(runs, costs, strict=True)
                if r.kind == "pretrain"}  # fmt: skip
    assert {c.steps for c in pretrain.values()} == {135_000}
    # last 2 + the best, + the 1B's 4 intermediate checkpoints (the pretraining-data axis)
    kept = {name: c.kept_checkpoints for name, c in pretrain.items()}
    assert kept == {"1b": 7, "2b": 3, "4b": 3, "8b": 3, "16b": 3}


def test_steps_equal_the_trainers_stop_rule_on_a_registered_subset():
    from ft_scaling.data import subsets

    task = subsets.register_finetune_subset("debian_l10n_translate_en_de", 1000, 0)
    lengths = {"inputs": 64, "targets": 64}
    for train_steps, max_epochs in ((10**6, 3), (100, 3), (50, None), (10**6, 0.5)):
        spec = input_pipeline.InputSpec(task, lengths, 16)
        expected = settings.StopRule(train_steps, max_epochs).steps(spec)[0]
        shape = run_cost.RunShape(
            configs.ModelConfig(), base.Method(), 16, lengths, train_steps, max_epochs, 1000,
            False, "adafactor", 500, 100, 2, (),
        )  # fmt: skip
        assert run_cost.cost(shape).steps == expected


TINY = {
    "swiglu": configs.ModelConfig(vocab_size=50, num_layers=2, num_heads=2, head_dim=8,
                                  embed_dim=12, mlp_dim=20),
    "neox": configs.ModelConfig(vocab_size=50, num_layers=2, num_heads=2, num_kv_heads=2,
                                head_dim=8, embed_dim=12, mlp_dim=20, mlp="gelu",
                                norm="layernorm", norm_placement="parallel", qkv_bias=True,
                                attention_out_bias=True, mlp_bias=True, rotary_fraction=0.25,
                                tie_embeddings=False),
    "olmo2": configs.ModelConfig(vocab_size=50, num_layers=2, num_heads=2, num_kv_heads=2,
                                 head_dim=8, embed_dim=12, mlp_dim=20, qk_norm="projection",
                                 norm_placement="post", embed_scale="none", tie_embeddings=False),
}  # fmt: skip
ATTENTION_ONLY = ("attention/(query|key|value|out)$",)
METHODS = {
    "fmt": full.FullModelTuning(),
    "prompt": prompt.PromptTuning(prompt_length=4, allow_longer_than_sequence=True),
    "lora": lora.LoRA(rank=3),
    "lora_attention": lora.LoRA(rank=2, targets=ATTENTION_ONLY),
    "bitfit": bitfit.BitFit(),
}
# Where the count is an upper bound (module docstring of run_cost): the first block's whole
# MLP branch, or more of BitFit's post-norm backward, is skipped by JAX.
UPPER_BOUND = {("neox", "lora_attention"), ("olmo2", "bitfit")}
LENGTH = 7


def _matmul_flops(jaxpr) -> int:
    """2*M*N*K over every dot_general of a jaxpr, nested ones (custom_vjp, remat) too."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[d] for d in contract)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _matmul_flops(sub)
    return total


CASES = [("swiglu", "fmt"), ("swiglu", "prompt"), ("swiglu", "lora"), ("swiglu", "bitfit"),
         ("neox", "prompt"), ("neox", "lora"), ("neox", "lora_attention"), ("olmo2", "lora"),
         ("olmo2", "bitfit")]  # fmt: skip


@pytest.mark.parametrize("config_name, method_name", CASES)
def test_sizes_and_flops_match_the_trainers_own_trees(config_name, method_name):
    config, method = TINY[config_name], METHODS[method_name]
    model = method.wrap(decoder.Decoder(config))
    tokens = jnp.ones((1, LENGTH), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens))["params"]
    params = nn.meta.unbox(params)
    trainable, frozen = base.split(params, method.trainable_mask(params))
    count, checkpoint_bytes = param_sizes.trainable_and_checkpoint_bytes(
        config, method, "adafactor"
    )
    assert count == base.trainable_param_count(method, params)
    opt_state = jax.eval_shape(optimizers.OptimizerSettings("adafactor").build().init, trainable)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state))
    assert checkpoint_bytes == 4 * count + state_bytes
    # The train step's FLOPs: the matmuls of the gradient the trainer takes (trainable only).
    positions = jnp.arange(LENGTH)[None]
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
             "decoder_loss_weights": jnp.ones((1, LENGTH)), "decoder_segment_ids": tokens,
             "decoder_positions": positions}  # fmt: skip
    loss = functools.partial(trainer._loss_sums, loss=losses.LMLoss(model))
    grad = jax.value_and_grad(loss, has_aux=True)
    measured = _matmul_flops(jax.make_jaxpr(grad)(trainable, frozen, batch, jax.random.key(0)))
    planned = run_cost.flops_per_example(config, method, LENGTH, count)
    if (config_name, method_name) in UPPER_BOUND:
        assert measured < planned
    else:
        assert planned == measured


def test_cli_prints_the_tables_and_writes_the_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    gin = "gin/studies/pythia_wmt14_ende.gin"
    flag = "--gin.SEEDS=(0,)"
    assert study_main.main(["plan", f"--gin_file={gin}", flag, f"--out={out}", "--num_pods=2"]) == 0
    text = capsys.readouterr().out
    for heading in ("Runs per axis", "per model size", "Checkpoint storage", "Launch",
                    "Assumptions", "TPU v4 h", "H100 SXM h", "finetune 12b"):  # fmt: skip
        assert heading in text
    written = json.loads(out.read_text())
    assert written["runs"]["total"] == 1356 // 3  # one seed
    launch = shlex.split(written["launch"]["command"])
    assert launch == plan.launch_argv(gin, "pythia_wmt14_ende", [flag], "v4-64", "us-central2-b", 2)
    assert f"    {written['launch']['command']}" in text.splitlines()
    chip_hours = written["total"]["chip_hours"]["TPU v4"]
    assert f"{chip_hours / 64 / 24:,.1f} days on 2 x v4-64" in written["launch"]["days"]
    markdown = tmp_path / "plan.md"
    assert study_main.main(["plan", f"--gin_file={gin}", flag, f"--out={markdown}"]) == 0
    assert "| axis | fmt | lora | prompt | runs |" in markdown.read_text()
    with pytest.raises(SystemExit, match="must end in .json or .md"):
        study_main.main(["plan", f"--gin_file={gin}", f"--out={tmp_path / 'plan.txt'}"])
    np.testing.assert_equal(plan.slice_chips("v5litepod-16"), ("TPU v5e", 16))


def test_suite_shapes_come_from_a_local_config_or_the_published_table(tmp_path):
    tiny = {"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": 512}  # fmt: skip
    (tmp_path / "step143000").mkdir()
    (tmp_path / "step143000" / "config.json").write_text(json.dumps(tiny))
    local = run_cost.hf_model_config(str(tmp_path / "step143000"), dtype="bfloat16")
    assert (local.embed_dim, local.num_layers, local.mlp, local.dtype) == (
        64,
        2,
        "gelu",
        "bfloat16",
    )
    hub = run_cost.hf_model_config("EleutherAI/pythia-410m@step143000")
    assert configs.param_count(hub) == 405_334_016
    with pytest.raises(ValueError, match="no .*/nowhere/config.json"):
        run_cost.hf_model_config(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="'someone/unknown'.*not in the local Hugging Face cache"):
        run_cost.hf_model_config("someone/unknown@step1")
