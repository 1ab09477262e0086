"""Each method runs end to end on GLUE under tfds.testing.mock_data (MNLI: 3 classes, multi-token
verbalizers; CoLA: Matthews correlation and the local out-of-domain set)."""

import math

import pytest
import tensorflow_datasets as tfds

from ft_scaling.classify import local_sets, run, tasks

SETTINGS = dict(
    field_tokens=8,
    sequence_length=48,
    icl_sequence_length=160,
    batch_size=4,
    eval_batch_size=8,
    eval_examples=8,
    unlabeled_examples=8,
)
# Full and LoRA both appear; shapes match head_test's, so the suite compiles each step once.
METHODS = {
    "vanilla_full": run.MethodSpec("vanilla_full", "vanilla", "fmt", 1e-3, steps=3),
    "pbft_lora": run.MethodSpec("pbft_lora", "pbft", "lora", 1e-2, steps=3),
    "icl": run.MethodSpec("icl", "icl", shots=2),
    "distill_full": run.MethodSpec("distill_full", "distill", "fmt", 1e-3, steps=3, shots=2),
}


@pytest.fixture(autouse=True)
def _fresh_reads():
    tasks._read.cache_clear()
    yield
    tasks._read.cache_clear()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_runs_on_mock_mnli(kit, name):
    spec = METHODS[name]
    settings = run.RunSettings(
        task="mnli", pattern="mnli_question", model_config=kit.TINY, **SETTINGS
    )
    with tfds.testing.mock_data(num_examples=40):
        row = run.run(spec, settings, per_class=2, seed=0, bases={"pretrained": None})
    assert row["method"] == name and row["train_examples"] == 6
    assert row["in_domain_examples"] == row["ood_examples"] == 8
    for key in ("in_domain_accuracy", "ood_accuracy"):
        assert 0.0 <= row[key] <= 1.0
    assert row["in_domain_metric"] == row["in_domain_accuracy"]
    if spec.kind == "icl":
        assert row["first_train_loss"] is None and row["trainable_params"] == 0
    else:
        assert math.isfinite(row["last_train_loss"]) and row["trainable_params"] > 0


def test_cola_reports_matthews_in_domain_and_on_the_local_ood_set(kit, tmp_path, monkeypatch):
    path = tmp_path / "out_of_domain_dev.tsv"
    lines = [f"src\t{i % 2}\t\tsentence number {i}." for i in range(6)]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(local_sets.COLA_OOD_ENV, str(path))
    settings = run.RunSettings(
        task="cola", pattern="cola_question", model_config=kit.TINY, **SETTINGS
    )
    with tfds.testing.mock_data(num_examples=40):
        row = run.run(METHODS["icl"], settings, per_class=2, seed=1, bases={"pretrained": None})
    assert row["metric"] == "matthews" and row["ood_examples"] == 6
    assert row["in_domain_metric"] == row["in_domain_matthews"]
    assert -1.0 <= row["ood_matthews"] <= 1.0
