"""The study report's generation-metrics table (BLEU / chrF / ROUGE-L of decoded examples)."""

from ft_scaling.study import report
from ft_scaling.study import store as store_lib


def _row(method, model, d_f, seed, **metrics):
    size = {"tiny_1": 1e5, "tiny_2": 4e5}[model]
    return {"task": "t", "method": method, "model_name": model, "model_params": size,
            "pretrain_tokens": 1e6, "trainable_params": size, "finetune_examples": d_f,
            "seed": seed, "test_loss": 3.0, "bleu": None, "chrf": None, "rouge_l": None,
            **metrics}  # fmt: skip


ROWS = [
    _row("lora", "tiny_2", 100, 0, bleu=10.0, chrf=40.0),
    _row("lora", "tiny_2", 100, 1, bleu=12.5, chrf=41.0),
    _row("lora", "tiny_1", 100, 0, bleu=5.0, chrf=30.0),
    _row("fmt", "tiny_1", 1000, 0, bleu=20.0, chrf=50.0),
    _row("fmt", "tiny_1", 100, 0, bleu=15.0, chrf=float("nan")),
    _row("fmt", "tiny_1", 100, 1),  # this run decoded nothing: not a seed of its cell
]


def test_means_over_seeds_per_method_model_and_examples():
    lines = report.generation_section(ROWS)
    assert lines[0] == "## Generation metrics"
    table = lines[lines.index("| method | model | D_f | BLEU | chrF | seeds |") :]
    assert table[2:-1] == [
        "| fmt | tiny_1 | 100 | 15.00 | – | 1 |",
        "| fmt | tiny_1 | 1000 | 20.00 | 50.00 | 1 |",
        "| lora | tiny_1 | 100 | 5.00 | 30.00 | 1 |",
        "| lora | tiny_2 | 100 | 11.25 | 40.50 | 2 |",
    ]
    assert table[-1] == ""


def test_only_the_metrics_some_run_has_are_columns():
    rows = [_row("prompt", "tiny_1", 100, 0, rouge_l=31.0), _row("prompt", "tiny_1", 100, 1)]
    lines = report.generation_section(rows)
    assert "| method | model | D_f | ROUGE-L | seeds |" in lines
    assert "| prompt | tiny_1 | 100 | 31.00 | 1 |" in lines


def test_no_generation_metrics_means_no_section():
    assert report.generation_section([_row("fmt", "tiny_1", 100, 0)]) == []
    assert report.generation_section([]) == []


def test_the_report_tables_them_after_the_runs(tmp_path):
    store = store_lib.ResultsStore(str(tmp_path / "worker0.sqlite"))
    for i, row in enumerate(ROWS[:4]):
        store.record(f"run{i}", "finetune", "finished", row)
    store.close()
    with open(report.write_report(str(tmp_path))) as handle:
        text = handle.read()
    # Four runs are too few to fit a law: the report says so, after the metrics.
    assert text.index("## Runs") < text.index("## Generation metrics") < text.index("## Fits")
    assert "| lora | tiny_2 | 100 | 11.25 | 40.50 | 2 |" in text
