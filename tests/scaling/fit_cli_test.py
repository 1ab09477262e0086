"""`ft-scaling fit` end to end on a small paper-like table: outputs, values and bad input."""

import csv
import json
import os

import numpy as np
import pytest

from ft_scaling.scaling import fit_cli
from ft_scaling.scaling import paper_reference as paper
from ft_scaling.scaling import results_table as tables


@pytest.fixture(scope="module")
def results_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = []
    for method in ("fmt", "prompt"):
        rows += paper.synthetic_rows("en_de", method, 0.002, 1, rng)
    path = tmp_path_factory.mktemp("results") / "results.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=tables.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def fitted(results_csv, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fit"))
    argv = [results_csv, "--law", "multiplicative", "--factor", "model_params",
            "--metric", "test_loss", "--group", "task,method", "--starts", "64",
            "--bootstrap", "20", "--out", out]  # fmt: skip
    assert fit_cli.main(argv) == 0
    with open(os.path.join(out, "fit.json")) as handle:
        return out, json.load(handle)


def test_fit_json_holds_unrounded_parameters_errors_and_intervals(fitted):
    _, document = fitted
    settings = {s["group"]["method"]: s for s in document["settings"]}
    assert set(settings) == {"fmt", "prompt"}
    model = settings["fmt"]["factors"]["model_params"]
    truth = paper.factor_law("en_de", "fmt", "model_params")
    assert model["params"]["alpha"] == pytest.approx(truth["alpha"], rel=0.05)
    assert model["params"]["E"] == pytest.approx(truth["E"], rel=0.02)
    assert len(repr(model["params"]["alpha"])) > 8  # never rounded
    low, high = model["intervals"]["alpha"]
    assert low <= model["params"]["alpha"] <= high
    assert 0 < model["delta_e"] < 0.01 and 0 < model["delta_h"] < 0.01
    assert model["fit"]["converged"] and model["fit"]["status"].startswith("converged")
    assert settings["fmt"]["stage1"]["n_starts"] == 64
    assert "beta" in settings["fmt"]["stage1"]["free"]
    assert "alpha[pretrain_tokens]" in settings["fmt"]["stage1"]["free"]
    assert set(settings["fmt"]["factors"]) == {"model_params"}
    assert model["bootstrap_replicates"] == 20
    [comparison] = document["comparisons"]
    assert comparison["pair"] == ["fmt", "prompt"] and len(comparison["crossings"]) == 5
    assert comparison["closed_form"]["gamma"] < 0  # as Table 5 (-1.2)


def test_summary_starts_and_plots_are_written(fitted):
    out, _ = fitted
    with open(os.path.join(out, "summary.md")) as handle:
        summary = handle.read()
    assert "| task=en_de, method=fmt | model_params |" in summary
    assert "Critical finetuning data size" in summary
    with open(os.path.join(out, "starts.csv")) as handle:
        starts = list(csv.DictReader(handle))
    # Per setting: stage 1 pools the model-size and pretraining sweeps even though only
    # model_params is reported (2^6 grid x 6 params), stage 2 (8 x 8 grid x 2); two settings.
    assert len(starts) == 2 * (64 * 6 + 64 * 2)
    for stem in ("en_de_fmt_model_params", "compare_en_de_model_params_fmt_vs_prompt"):
        for extension in (".png", ".pdf"):
            assert os.path.getsize(os.path.join(out, stem + extension)) > 1000


def test_missing_column_exits_2_with_a_message(tmp_path, results_csv, capsys):
    with open(results_csv) as handle:
        rows = list(csv.DictReader(handle))
    path = tmp_path / "bad.csv"
    columns = [c for c in tables.COLUMNS if c != "test_loss"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert fit_cli.main([str(path), "--out", str(tmp_path / "o"), "--bootstrap", "0"]) == 2
    assert "missing column 'test_loss'; present columns: task, method" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path, capsys):
    assert fit_cli.main([str(tmp_path / "none.csv"), "--out", str(tmp_path)]) == 2
    assert "No such file" in capsys.readouterr().err
