"""A MODEL_DIR is never silently lost or corrupted by a rerun (issue 19, items 0 and 3).

Each test here failed before the fix it guards: a corrupt final checkpoint kept after the
fallback, another TRAIN_STEPS continuing a finished run on a new schedule, a deleted _METADATA
read as another model, a failed setup leaving a fingerprint that refused the corrected command,
a cut-off metrics line swallowing the next row, and replayed steps logged twice.
"""

import json
import os
import shutil

import numpy as np
import pytest

from ft_scaling import files
from ft_scaling.config import flags
from ft_scaling.train import checkpoints
from tests.train import byte_tasks, run_dirs, run_script

# Logged per row but not part of what a run computes (they differ between any two runs).
TIMING_KEYS = ("tokens_per_s", "steps_per_s")


def _train(model_dir, steps, *extra):
    byte_tasks.register()
    gin_files = ["t5x_configs/models/tiny_1.gin", "t5x_configs/runs/pretrain.gin"]
    flags.parse_gin(gin_files, run_script.bindings(str(model_dir), steps, None, list(extra)))
    from ft_scaling.train import loop

    return loop.train()


def _metrics_lines(model_dir) -> list[dict]:
    """Every line of metrics.jsonl, parsed, without the timing keys."""
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _assert_same_params(dir_a, dir_b, prefer_best=True):
    a, _ = checkpoints.load_params(str(dir_a), prefer_best=prefer_best)
    b, _ = checkpoints.load_params(str(dir_b), prefer_best=prefer_best)
    flat_a = dict(_flatten(a))
    flat_b = dict(_flatten(b))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]))


def _flatten(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _finished_run(tmp_path, name="straight"):
    """A finished 6-step run with checkpoints 4 and 6 (the last, the best)."""
    model_dir = tmp_path / name
    _train(model_dir, 6, "SAVE_EVERY=2", "EVAL_EVERY=2")
    return model_dir


def test_corrupt_final_checkpoint_is_replaced_when_the_run_falls_back(tmp_path):
    straight = _finished_run(tmp_path)
    rerun = tmp_path / "rerun"
    shutil.copytree(straight, rerun)
    data = rerun / "checkpoints" / "6" / "state" / "ocdbt.process_0" / "d"
    for name in os.listdir(data):  # truncated array data: unreadable, so step 4 is restored
        (data / name).write_bytes(b"")
    summary = _train(rerun, 6, "SAVE_EVERY=2", "EVAL_EVERY=2")
    assert summary.finished and summary.best_step == 6
    # The best checkpoint the summary names holds the retrained params, not the corrupt data.
    _assert_same_params(straight, rerun)
    _assert_same_params(straight, rerun / "checkpoints" / "6")


def test_deleted_metadata_falls_back_to_the_previous_checkpoint(tmp_path):
    straight = _finished_run(tmp_path)
    rerun = tmp_path / "rerun"
    shutil.copytree(straight, rerun)
    os.remove(rerun / "checkpoints" / "6" / "state" / "_METADATA")
    summary = _train(rerun, 6, "SAVE_EVERY=2", "EVAL_EVERY=2")
    assert summary.finished and summary.step == 6
    _assert_same_params(straight, rerun)


def test_rerun_with_another_train_steps_is_refused_and_changes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    _train(model_dir, 4, "SAVE_EVERY=2")
    before = run_dirs.tree_digest(model_dir)
    for steps in (8, 3):
        with pytest.raises(files.FingerprintError, match="TRAIN_STEPS"):
            _train(model_dir, steps, "SAVE_EVERY=2")
    assert run_dirs.changed(before, run_dirs.tree_digest(model_dir)) == []
    # A directory written before the fingerprint recorded the step count: summary.json tells.
    fingerprint = files.read_json(model_dir / files.FINGERPRINT_FILE)
    del fingerprint["total_steps"]
    files.atomic_write_json(model_dir / files.FINGERPRINT_FILE, fingerprint)
    before = run_dirs.tree_digest(model_dir)
    with pytest.raises(files.FingerprintError, match="TRAIN_STEPS"):
        _train(model_dir, 8, "SAVE_EVERY=2")
    assert run_dirs.changed(before, run_dirs.tree_digest(model_dir)) == []


def test_a_larger_budget_fraction_still_resumes_the_same_schedule(tmp_path):
    # What the search does: the early phase, then the same run to its full budget.
    paused = _train(tmp_path / "run", 6, "SAVE_EVERY=0", "train.budget_fraction=0.5")
    assert paused.status == "paused" and paused.step == 3 and paused.total_steps == 6
    finished = _train(tmp_path / "run", 6, "SAVE_EVERY=0")
    assert finished.finished and finished.step == 6


def test_failed_setup_leaves_the_model_dir_open_to_the_corrected_command(tmp_path):
    base = tmp_path / "base"
    _train(base, 2, "ModelConfig.mlp_dim=128")
    run = tmp_path / "run"
    with pytest.raises(checkpoints.CheckpointError, match="mlp"):
        _train(run, 2, f"train.initial_checkpoint_path='{base}'")
    with pytest.raises(ValueError, match="LEARNING_RATE"):
        _train(run, 2, "LEARNING_RATE=1e999")
    with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
        _train(run, 2, "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 32}")
    assert not run.exists() or run_dirs.tree_digest(run) == {}
    assert _train(run, 2).finished


def test_cut_off_metrics_line_does_not_swallow_the_next_row(tmp_path):
    model_dir = tmp_path / "run"
    _train(model_dir, 6, "SAVE_EVERY=0", "train.budget_fraction=0.5")  # checkpoint at step 3
    with open(model_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "split": "tra')  # a kill in the middle of a write
    _train(model_dir, 6, "SAVE_EVERY=0")
    rows = _metrics_lines(model_dir)
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_replayed_steps_are_logged_once(tmp_path):
    straight = _finished_run(tmp_path)
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    # As if killed after logging steps 5 and 6 and evaluating, before checkpoint 6 was saved.
    shutil.rmtree(killed / "checkpoints" / "6")
    os.remove(killed / "summary.json")
    _train(killed, 6, "SAVE_EVERY=2", "EVAL_EVERY=2")
    assert _metrics_lines(killed) == _metrics_lines(straight)
