"""Study.generation_metrics: the BLEU/chrF a study stores are what `ft-scaling eval` computes on
the same best checkpoint and the same first test examples."""

import pytest

from ft_scaling import cli, files
from ft_scaling.config import flags
from ft_scaling.methods import registry
from ft_scaling.study import generation, runner, store, sweep

MICRO = "tests/study/micro_study.gin"
EXAMPLES = 6
DECODE_BATCH = 4  # two decoder calls, the last one padded


def _eval_cli(row: dict) -> dict:
    """`ft-scaling eval` of a finished run's best checkpoint on its first EXAMPLES test examples."""
    eval_dir = files.path(row["run_dir"]) / "eval"
    if eval_dir.exists():
        eval_dir.rmtree()  # what is read below is the CLI's own result, not the study's
    argv = [
        "eval",
        "--gin_file=t5x_configs/runs/eval.gin",
        "--gin_file=t5x_configs/models/tiny_1.gin",
        f"--gin_file={registry.gin_file(row['method'])}",
        f"--gin.CHECKPOINT_PATH={row['run_dir']!r}",
        f"--gin.MIXTURE_OR_TASK_NAME={row['task']!r}",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
        f"--gin.MAX_EXAMPLES={EXAMPLES}",
        f"--gin.EVAL_BATCH_SIZE={DECODE_BATCH}",
        "--gin.EVAL_METRICS=['bleu', 'chrf']",
        "--gin.evaluate.compute_perplexity=False",
    ]
    if row["method"] == "lora":
        argv.append(f"--gin.LORA_RANK={row['pet_size']}")
    assert cli.main(argv) == 0
    (result,) = list(eval_dir.glob("test_step*.json"))
    return files.read_json(result)


# Enough training that greedy decoding emits text (after the micro study's 4 steps the model
# answers EOS at once, and 0.0 == 0.0 would check nothing): 100 pretraining steps, 64 FMT and
# LoRA steps on 64 examples (LoRA's BLEU 1.4, FMT's 0.0; with 60 and 40, both BLEUs were 0.0).
TRAINED_ENOUGH = [
    "tiny_1/BaseModel.pretrain_steps = 100",
    "fmt/MethodGrid.finetune_examples = (64,)",
    "lora/MethodGrid.finetune_examples = (64,)",
    "fmt/MethodGrid.bindings = ['LEARNING_RATE = 1e-2', 'MAX_EPOCHS = 16', 'EVAL_EVERY = 8']",
    "lora/MethodGrid.bindings = ['LEARNING_RATE = 3e-2', 'MAX_EPOCHS = 16', 'EVAL_EVERY = 8']",
]


@pytest.mark.slow
def test_generation_metrics_equal_ft_scaling_eval(tmp_path):
    bindings = [
        "Study.generation_metrics = @GenerationMetrics()",
        f"GenerationMetrics.examples = {EXAMPLES}",
        f"GenerationMetrics.batch_size = {DECODE_BATCH}",
        *TRAINED_ENOUGH,
    ]
    flags.parse_gin([MICRO], bindings)
    study = sweep.Study()
    assert study.generation_metrics == generation.GenerationMetrics(
        examples=EXAMPLES, batch_size=DECODE_BATCH
    )
    counts = runner.run_study(study, str(tmp_path))
    assert counts == {"finished": 3, "failed": 0, "skipped": 0, "total": 3}
    results = store.ResultsStore(str(tmp_path / "results.sqlite"))
    rows = results.rows(kind="finetune", status="finished")
    results.close()
    assert sorted(r["method"] for r in rows) == ["fmt", "lora"]
    for row in rows:
        theirs = _eval_cli(row)
        assert theirs["generated_examples"] == EXAMPLES
        assert theirs["decode"]["beam_size"] == 1
        assert row["bleu"] == theirs["metrics"]["bleu"], row["method"]
        assert row["chrf"] == theirs["metrics"]["chrf"], row["method"]
        assert "rouge_l" not in row  # a translation task
    assert all(r["chrf"] > 0.0 for r in rows) and any(r["bleu"] > 0.0 for r in rows)
    store_rows = store.finished_finetune_rows(str(tmp_path))
    csv_path = tmp_path / "results.csv"
    store.export_csv(store_rows, str(csv_path))
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header[header.index("test_ppl") + 1 : header.index("run_dir")] == [
        "bleu",
        "chrf",
        "rouge_l",
    ]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="choose from bleu, chrf, rouge"):
        generation.GenerationMetrics(metrics=("bleurt",))
    with pytest.raises(ValueError, match="must be positive"):
        generation.GenerationMetrics(examples=0)
