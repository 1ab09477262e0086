"""The paper's three study gins expand to exactly the grids of ../shared/PAPER.md.

Every number below is the paper's (PAPER.md §1-§3, T1b = Table 1(b), App = appendix), so a typo
in a study gin fails here. Expanding is pure Python; one test also parses the operative gin of
a few runs (imports the trainer, no training).
"""

import collections

import numpy as np
import pytest

from ft_scaling.config import flags
from ft_scaling.scaling import procedure
from ft_scaling.study import generation, sweep

B = 10**9
OUT = "/study"
SIZES = ("1b", "2b", "4b", "8b", "16b")  # App Table 3; 16B held out (T1b)
PET_GRID = (8_000, 10_000, *range(20_000, 100_001, 10_000))  # T1b, 100K held out
PROMPT_LENGTHS = (50, 100, 150, 200, 300, 400, 600)  # PAPER.md §3, 600 held out
LORA_RANKS = (4, 8, 16, 32, 48, 64, 128)  # PAPER.md §3, 128 held out
ENDE_TOKENS_B = (84, 126, 167, 209, 283)  # T1b, 209B held out
ENZH_TOKENS_B = (84, 105, 126, 147, 167, 206)  # T1b, 167B held out

PAPER = {
    "paper_wmt14_ende": {
        "task": "wmt14_ende",
        "pretrain_steps": 135_000,  # App "Optimization"
        "corpus_tokens": 280 * B,  # §2
        "checkpoint_tokens_b": ENDE_TOKENS_B,
        "held_out_tokens_b": 209,
        "fmt_grid": (100_000, *range(500_000, 4_500_001, 500_000)),
        "fmt_steps": 200_000,
        "axes": {"model_size": 480, "pretrain_data": 384, "pet_size": 396},
    },
    "paper_wmt19_enzh": {
        "task": "wmt19_enzh",
        "pretrain_steps": 98_000,
        "corpus_tokens": 206 * B,
        "checkpoint_tokens_b": ENZH_TOKENS_B,
        "held_out_tokens_b": 167,
        "fmt_grid": (
            *range(1_000_000, 5_000_001, 1_000_000),
            *range(10**7, 25 * 10**6 + 1, 5 * 10**6),
        ),
        "fmt_steps": 300_000,  # App: 300K for WMT En-Zh FMT
        "axes": {"model_size": 465, "pretrain_data": 465, "pet_size": 396},
    },
    "paper_mlsum": {  # base LLM not recovered (PAPER.md §2): the study uses the En-De family
        "task": "mlsum",
        "pretrain_steps": 135_000,
        "corpus_tokens": 280 * B,
        "checkpoint_tokens_b": ENDE_TOKENS_B,
        "held_out_tokens_b": 209,
        "fmt_grid": tuple(range(100_000, 900_001, 100_000)),
        "fmt_steps": 200_000,
        "axes": {"model_size": 465, "pretrain_data": 372, "pet_size": 396},
    },
}
RECIPE = {  # PAPER.md §3 (App): learning rate, batch size
    "fmt": (1e-3, 128),
    "prompt": (3e-1, 16),
    "lora": (1e-2, 16),
}


def _study(name: str, *bindings: str) -> sweep.Study:
    flags.parse_gin([f"gin/studies/{name}.gin"], list(bindings))
    return sweep.Study()


def _finetune(runs):
    return [r for r in runs if r.kind == "finetune"]


def _axis(run, study: sweep.Study, final_tokens: int) -> str:
    """Which paper axis a (deduplicated) finetuning run belongs to."""
    method = {m.name: m for m in study.methods}[run.record["method"]]
    if run.record["pretrain_tokens"] != final_tokens:
        return "pretrain_data"
    if run.record["pet_size"] != method.default_size:
        return "pet_size"
    return "model_size"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_base_models_and_pretraining_tokens(name):
    paper, study = PAPER[name], _study(name)
    assert study.task == paper["task"] and study.default_model == "1b"
    assert [m.name for m in study.base_models] == list(SIZES)
    assert [m.model_gin for m in study.base_models] == [
        f"t5x_configs/models/{s}.gin" for s in SIZES
    ]
    assert {m.pretrain_steps for m in study.base_models} == {paper["pretrain_steps"]}
    assert all(m.checkpoint is None for m in study.base_models)
    # PAPER.md §1 [derived]: ~2.1M tokens per step; the full run is the paper's corpus.
    assert study.tokens_per_pretrain_step == 1024 * 2048
    total = paper["pretrain_steps"] * study.tokens_per_pretrain_step
    assert abs(total - paper["corpus_tokens"]) / paper["corpus_tokens"] < 0.02
    assert "BATCH_SIZE = 1024" in study.pretrain_bindings
    assert "TASK_FEATURE_LENGTHS = {'targets': 2048}" in study.pretrain_bindings
    assert list(study.gin_files) == ["t5x_configs/partitioning/fsdp_tensor.gin"]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_pretraining_checkpoints_are_the_t1b_token_counts(name):
    paper, study = PAPER[name], _study(name)
    runs = sweep.expand(study, OUT)
    tokens = sorted(
        {r.record["pretrain_tokens"] for r in _finetune(runs) if r.record["model_name"] == "1b"}
    )
    # T1b rounds to whole billions (inconsistently: 167.8B is "167B"), hence 1B of slack.
    assert len(tokens) == len(paper["checkpoint_tokens_b"])
    for ours, theirs in zip(tokens, paper["checkpoint_tokens_b"], strict=True):
        assert abs(ours - theirs * B) < B, (ours, theirs)
    one_b = study.base_models[0]
    steps = (*one_b.pretrain_checkpoints, one_b.pretrain_steps)
    assert [s * study.tokens_per_pretrain_step for s in steps] == tokens
    others = {r.record["pretrain_tokens"] for r in _finetune(runs)} - set(tokens)
    assert not others  # the other sizes are finetuned from their final checkpoint only


@pytest.mark.parametrize("name", sorted(PAPER))
def test_methods_grids_and_pet_sizes(name):
    paper, study = PAPER[name], _study(name)
    methods = {m.name: m for m in study.methods}
    assert list(methods) == ["fmt", "prompt", "lora"]
    assert methods["fmt"].finetune_examples == paper["fmt_grid"]
    assert methods["prompt"].finetune_examples == PET_GRID
    assert methods["lora"].finetune_examples == PET_GRID
    assert (methods["prompt"].size_macro, methods["prompt"].default_size) == ("PROMPT_LENGTH", 100)
    assert (methods["lora"].size_macro, methods["lora"].default_size) == ("LORA_RANK", 4)
    assert methods["prompt"].pet_sizes == PROMPT_LENGTHS
    assert methods["lora"].pet_sizes == LORA_RANKS
    assert methods["fmt"].size_macro is None and not methods["fmt"].pet_sizes
    assert study.seeds == (0, 1, 2)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_run_counts_per_axis_and_three_seeds_per_point(name):
    paper, study = PAPER[name], _study(name)
    runs = sweep.expand(study, OUT)
    assert [r.kind for r in runs[:5]] == ["pretrain"] * 5
    final = paper["pretrain_steps"] * study.tokens_per_pretrain_step
    finetune = _finetune(runs)
    axes = collections.Counter(_axis(r, study, final) for r in finetune)
    assert dict(axes) == paper["axes"]
    assert len(runs) == 5 + sum(paper["axes"].values())
    points = collections.defaultdict(list)
    for run in finetune:
        record = {k: v for k, v in run.record.items() if k != "seed"}
        points[tuple(sorted(record.items()))].append(run.record["seed"])
    assert {tuple(sorted(seeds)) for seeds in points.values()} == {(0, 1, 2)}
    # PET sizes are swept on the 1B model only (PAPER.md §2).
    sizes = {(r.record["model_name"], r.record["pet_size"]) for r in finetune}
    assert {m for m, s in sizes if s not in (None, 100, 4)} == {"1b"}


def _held_out_x(records, factor, x_of) -> set:
    """The x values the fitter's 'paper' rule holds out (besides the largest D_f)."""
    x = np.array([x_of(r) for r in records], float)
    d_f = np.array([r["finetune_examples"] for r in records], float)
    held = procedure.held_out_points(factor, x, d_f, "paper")
    assert set(d_f[held]) >= {d_f.max()}  # the largest D_f is held out (T1b)
    return set(x[held & (d_f != d_f.max())])


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_held_out_rule_picks_the_bold_t1b_points(name):
    paper, study = PAPER[name], _study(name)
    final = paper["pretrain_steps"] * study.tokens_per_pretrain_step
    axes = collections.defaultdict(list)
    for run in _finetune(sweep.expand(study, OUT)):
        axes[_axis(run, study, final), run.record["method"]].append(run.record)
    size_rank = {s: i for i, s in enumerate(SIZES)}  # only the order of x matters to the rule
    for method in RECIPE:
        one_b = [r for r in axes["model_size", method] if r["model_name"] == "1b"]
        models = _held_out_x(
            axes["model_size", method], "model_params", lambda r: size_rank[r["model_name"]]
        )
        assert models == {size_rank["16b"]}
        # The pretraining-data axis ends with the 1B's final checkpoint (a model-size run).
        tokens = _held_out_x(
            axes["pretrain_data", method] + one_b, "pretrain_tokens", lambda r: r["pretrain_tokens"]
        )
        assert len(tokens) == 1 and abs(tokens.pop() - paper["held_out_tokens_b"] * B) < B
        if method != "fmt":
            sizes = _held_out_x(
                axes["pet_size", method] + one_b, "trainable_params", lambda r: r["pet_size"]
            )
            assert sizes == {max(PROMPT_LENGTHS if method == "prompt" else LORA_RANKS)}
    assert study.held_out == "paper"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_finetuning_runs_decode_test_examples_greedily(name):
    # PAPER.md §4: greedy decoding; ROUGE-L for summarization, BLEURT (we: BLEU/chrF) otherwise.
    metrics = ("rouge",) if PAPER[name]["task"] == "mlsum" else ("bleu", "chrf")
    expected = generation.GenerationMetrics(examples=1000, metrics=metrics, beam_size=1)
    assert _study(name).generation_metrics == expected


def test_the_demo_study_does_not_decode():
    assert _study("demo").generation_metrics is None


def test_mlsum_shares_the_ende_pretraining_runs():
    ende = [r.run_id for r in sweep.expand(_study("paper_wmt14_ende"), OUT) if r.kind == "pretrain"]
    mlsum = [r.run_id for r in sweep.expand(_study("paper_mlsum"), OUT) if r.kind == "pretrain"]
    assert ende == mlsum


def test_checkpoint_option_skips_pretraining():
    study = _study("paper_wmt14_ende", "CHECKPOINT_16B = '/ckpt/ende_16b'")
    runs = sweep.expand(study, OUT)
    assert [r.record["model_name"] for r in runs if r.kind == "pretrain"] == list(SIZES[:4])
    paths = {r.bindings[1] for r in _finetune(runs) if r.record["model_name"] == "16b"}
    assert paths == {"INITIAL_CHECKPOINT_PATH='/ckpt/ende_16b'"}


def _resolve(value):
    """Evaluates gin macro references (e.g. `%MODEL_PARALLEL` inside a tuple)."""
    import gin

    if isinstance(value, gin.config.ConfigurableReference):
        return _resolve(gin.query_parameter(f"{value.scoped_selector}.value"))
    if isinstance(value, tuple | list):
        return type(value)(_resolve(v) for v in value)
    return value


def _operative(parameter: str):
    import gin

    return _resolve(gin.query_parameter(parameter))


@pytest.mark.parametrize("name", sorted(PAPER))
def test_operative_run_configs_follow_the_paper_recipe(name):
    paper, study = PAPER[name], _study(name)
    runs = sweep.expand(study, OUT)
    picks = [runs[0], runs[4]]  # 1B and 16B pretraining
    for method in RECIPE:  # the first run of each method, and the held-out PET sizes
        picks.append(next(r for r in _finetune(runs) if r.record["method"] == method))
    picks += [r for r in _finetune(runs) if r.record["pet_size"] in (600, 128)][:1]
    for run in picks:
        flags.parse_gin(run.gin_files, [*run.bindings, f"MODEL_DIR={OUT + '/m'!r}"])
        assert _operative("mesh_shape.shape") == (1, -1, 2)
        assert _operative("train.optimizer_kind") == "adafactor"
        assert _operative("train.schedule_kind") == "cosine"
        if run.kind == "pretrain":
            assert _operative("train.train_steps") == paper["pretrain_steps"]
            assert _operative("train.batch_size") == 1024
            assert _operative("train.learning_rate") == 0.01
            continue
        method = run.record["method"]
        steps = paper["fmt_steps"] if method == "fmt" else 200_000
        assert _operative("train.train_steps") == steps
        assert _operative("train.max_epochs") == 100
        assert (_operative("train.learning_rate"), _operative("train.batch_size")) == (
            RECIPE[method]
        )
        lengths = _operative("train.feature_lengths")
        assert lengths == {"inputs": 256, "targets": 256}
