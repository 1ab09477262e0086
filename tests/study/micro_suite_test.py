"""A micro study over a tiny suite of our own, end to end (issue 16 item 4).

tests/study/tiny_suite.py pretrains three GPT-NeoX sizes with our trainer and exports their
revisions step8/16/24 in Hugging Face layout (SUITE/<size>/<revision>/); tests/study/
micro_suite.gin studies them through `ft-scaling study`: all three axes expand, every run is
finetuned from its revision (through hf.gin), the rows carry the revision's tokens, and the
report fits each of its laws (study/report.py LAWS) along all three factors. Built once per
module. (A study over a suite with a missing revision failing before any run:
tests/study/suites_test.py.)
"""

import collections
import json
import math
import os

import jax
import pytest

from ft_scaling import files
from ft_scaling.scaling import laws
from ft_scaling.study import main as study_main
from ft_scaling.study import report, store
from tests.study import tiny_suite

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")
pytestmark = pytest.mark.slow  # 3 pretraining runs, 12 finetuning runs: ~80 s CPU
GIN = "tests/study/micro_suite.gin"
TOKENS = {f"step{s}": s * tiny_suite.TOKENS_PER_STEP for s in tiny_suite.STEPS}


@pytest.fixture(scope="module")
def quick_compiles():
    """XLA with most optimizations off while this module trains, then every compile cache
    cleared: compiling is most of each tiny run's time (7 distinct programs here: 3
    pretraining sizes, 3 finetuning sizes, 1 more LoRA rank) and unoptimized code halves it;
    the flag is no part of JAX's cache key, so executables built under it must not outlive
    the module."""
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
        jax.clear_caches()


@pytest.fixture(scope="module")
def suite(quick_compiles, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tiny_suite")
    tiny_suite.build(str(root))
    return str(root)


@pytest.fixture(scope="module")
def study(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("micro_suite_out")
    argv = [f"--gin_file={GIN}", f"--out={out}"]
    argv += [f"--gin.{size.upper()}='{suite}/{size}'" for size in tiny_suite.SIZES]
    assert study_main.main(argv) == 0
    return suite, str(out)


def test_the_suite_is_in_hf_layout(suite):
    for size in tiny_suite.SIZES:
        for step in tiny_suite.STEPS:
            names = set(os.listdir(os.path.join(suite, size, f"step{step}")))
            assert {"config.json", "model.safetensors", "tokenizer.json"} <= names


def test_micro_suite_study_end_to_end(study):
    suite, out = study
    with open(os.path.join(out, "plan.json")) as f:
        plan = json.load(f)
    assert {r["kind"] for r in plan} == {"finetune"}  # nothing pretrained by the study
    axes = collections.Counter()
    for run in plan:
        record = run["record"]
        revision_dir = f"{suite}/{record['model_name']}/{record['revision']}"
        assert f"HF_CHECKPOINT={revision_dir!r}" in run["bindings"]
        assert record["pretrain_tokens"] == TOKENS[record["revision"]]
        # The run trained from its revision: hf.gin made it INITIAL_CHECKPOINT_PATH.
        model_dir = os.path.join(out, "runs", f"finetune_{run['run_id']}")
        fingerprint = files.read_fingerprint(model_dir)
        assert fingerprint["initial_checkpoint_path"] == revision_dir
        if record["revision"] != "step24":
            axes["pretrain_data"] += 1
        elif record["pet_size"] != 4:
            axes["pet_size"] += 1
        else:
            axes["model_size"] += 1
    # 3 sizes x 2 D_f; 2 intermediate revisions of s1 x 2; LoRA rank 8 on s1 x 2.
    assert dict(axes) == {"model_size": 6, "pretrain_data": 4, "pet_size": 2}

    rows = store.finished_finetune_rows(out)
    assert len(rows) == 12 and all(math.isfinite(r["test_loss"]) for r in rows)
    params = {r["model_name"]: r["model_params"] for r in rows}
    assert params["s1"] < params["s2"] < params["s3"]
    assert {(r["revision"], r["pretrain_tokens"]) for r in rows} == set(TOKENS.items())
    # Each run started from its revision's weights: from one init they would all score alike.
    # More pretraining and a larger model give a lower test loss at every D_f.
    for examples in (32, 64):
        default = {
            (r["model_name"], r["revision"]): r["test_loss"]
            for r in rows
            if r["finetune_examples"] == examples and r["pet_size"] == 4
        }
        by_tokens = [default["s1", f"step{s}"] for s in tiny_suite.STEPS]
        assert by_tokens == sorted(by_tokens, reverse=True) and len(set(by_tokens)) == 3
        by_size = [default[size, "step24"] for size in tiny_suite.SIZES]
        assert by_size == sorted(by_size, reverse=True) and len(set(by_size)) == 3

    assert set(report.LAWS) >= {"multiplicative", "additive"}
    for law in report.LAWS:
        with open(os.path.join(out, f"fit_{law}", "fit.json")) as f:
            (setting,) = json.load(f)["settings"]
        factors = list(setting["factors"].values())
        names = {f["factor"] for f in factors}
        assert names == {"model_params", "pretrain_tokens", "trainable_params"}, law
        for factor in factors:
            assert factor["fit"]["converged"], (law, factor)
            assert all(math.isfinite(v) for v in factor["params"].values()), (law, factor)
            # The paper's two stages: the D_f part (and E), fitted once, shared by the factors.
            for name in laws.LAWS[law].shared_params:
                assert factor["params"][name] == factors[0]["params"][name], (law, name)
