"""Reading the results CSV: validation messages and the sweeps cut from a paper-like table."""

import csv

import numpy as np
import pytest

from ft_scaling.scaling import paper_reference as paper
from ft_scaling.scaling import results_table as tables
from ft_scaling.scaling.errors import ScalingInputError


def write_table(path, rows, columns=tables.COLUMNS):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def prompt_rows():
    return paper.synthetic_rows("en_de", "prompt", 0.005, 3, np.random.default_rng(0))


def test_sweeps_of_a_paper_like_table(tmp_path, prompt_rows):
    table = tables.read_table(write_table(tmp_path / "r.csv", prompt_rows))
    [(group, rows)] = tables.groups(table, ["task", "method"])
    assert group == {"task": "en_de", "method": "prompt"}
    sweeps = tables.sweeps_for_rows(table, rows, None, "test_loss")
    assert set(sweeps) == {"model_params", "pretrain_tokens", "trainable_params"}
    runs_per_sweep = {f: len(s.x) for f, s in sweeps.items()}
    # 5 sizes / 5 checkpoints / 7 prompt lengths, x 11 D_f x 3 seeds.
    assert runs_per_sweep == {"model_params": 165, "pretrain_tokens": 165, "trainable_params": 231}
    assert np.unique(sweeps["model_params"].x) == pytest.approx(paper.MODEL_PARAMS)
    assert np.unique(sweeps["pretrain_tokens"].x) == pytest.approx(paper.PRETRAIN_TOKENS["en_de"])
    assert np.unique(sweeps["trainable_params"].x) == pytest.approx(
        paper.TRAINABLE_PARAMS["prompt"]
    )
    # The base run (1B, 283B, |P| = 100) is one run shared by all three sweeps.
    shared = set(sweeps["model_params"].run_id) & set(sweeps["pretrain_tokens"].run_id)
    assert len(shared) == 33 and shared <= set(sweeps["trainable_params"].run_id)


def test_missing_column_is_named_with_the_present_ones(tmp_path, prompt_rows):
    columns = [c for c in tables.COLUMNS if c != "finetune_examples"]
    table = tables.read_table(write_table(tmp_path / "r.csv", prompt_rows, columns))
    with pytest.raises(ScalingInputError, match="missing column 'finetune_examples'; present"):
        tables.sweeps_for_rows(table, np.arange(3), None, "test_loss")


@pytest.mark.parametrize(
    "value, message",
    [("nan", "value is 'nan'"), ("", "'' is not a number"), ("-1.0", "-1.0 is not positive"),
     ("abc", "'abc' is not a number")],
)  # fmt: skip
def test_bad_metric_values_name_the_row(tmp_path, prompt_rows, value, message):
    prompt_rows[4]["test_loss"] = value
    table = tables.read_table(write_table(tmp_path / "r.csv", prompt_rows))
    with pytest.raises(ScalingInputError, match=f"column 'test_loss', data row 5: {message}"):
        tables.sweeps_for_rows(table, np.arange(len(prompt_rows)), None, "test_loss")


def test_requested_factor_with_a_single_value_is_an_error(tmp_path):
    rows = paper.synthetic_rows("en_de", "fmt", 0.005, 1, np.random.default_rng(0))
    table = tables.read_table(write_table(tmp_path / "r.csv", rows))
    every = np.arange(len(rows))
    assert set(tables.sweeps_for_rows(table, every, None, "test_loss")) == {
        "model_params", "pretrain_tokens"}  # fmt: skip
    with pytest.raises(ScalingInputError, match="trainable_params takes a single value"):
        tables.sweeps_for_rows(table, every, ["trainable_params"], "test_loss")


def test_empty_table_is_an_error(tmp_path):
    with pytest.raises(ScalingInputError, match="no rows"):
        tables.read_table(write_table(tmp_path / "r.csv", []))
