"""`ft-scaling`: a failing command prints one line naming the problem and exits 1 (traceback
only with --verbose); a bound macro that no gin file reads is named, with its close matches."""

import os
import subprocess
import sys

from ft_scaling.config import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "ft_scaling.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_missing_gin_file_is_one_line_naming_it():
    out = _cli("info", "--gin_file=t5x_configs/models/no_such_model.gin")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "no_such_model.gin" in lines[0] and "FileNotFoundError" in lines[0]
    assert "Traceback" not in out.stderr


def test_verbose_prints_the_traceback():
    out = _cli("info", "--gin_file=t5x_configs/models/no_such_model.gin", "--verbose")
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("ft-scaling info: error:")


def test_misspelled_macro_is_named_with_its_close_match():
    out = _cli("info", "--gin_file=t5x_configs/models/tiny_0.gin", "--gin.VOCAB_SIZ=512")
    assert out.returncode == 0, out.stderr
    assert "--gin.VOCAB_SIZ is bound but no gin file refers to %VOCAB_SIZ" in out.stderr
    assert "did you mean VOCAB_SIZE?" in out.stderr
    assert "vocab=4096" in out.stdout  # the misspelled binding changed nothing, as warned


def test_referenced_macros_follow_includes(tmp_path):
    (tmp_path / "base.gin").write_text("train.train_steps = %TRAIN_STEPS\n")
    (tmp_path / "run.gin").write_text("include 'base.gin'\nTRAIN_STEPS = 10\n")
    files = [str(tmp_path / "run.gin")]
    paths = [str(tmp_path)]
    assert flags.unreferenced_macros(files, ["TRAIN_STEPS = 3"], paths) == []
    (warning,) = flags.unreferenced_macros(files, ["TRAIN_STEP = 3"], paths)
    assert "did you mean TRAIN_STEPS?" in warning
    # Configurable bindings are gin's to check (it fails on unknown names), not macros.
    assert flags.unreferenced_macros(files, ["train.seed = 1"], paths) == []
