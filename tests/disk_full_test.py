"""A full disk (issue 19 item 4): a run, a study and a search stop naming the place, keep their
last good checkpoint and results rows, and resume once space is freed; so does a study whose
results.sqlite cannot be written.

The disk is a small tmpfs mounted for the test (root only: skipped otherwise, and unmounted
whatever happens), filled with a ballast file at a chosen moment and freed by deleting it.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ft_scaling import files
from ft_scaling.config import flags
from ft_scaling.study import execute, runner, sweep
from ft_scaling.study import store as store_lib
from ft_scaling.study.search import config as search_config
from ft_scaling.study.search import run as search
from ft_scaling.train import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISK_SIZE = "64m"
TRAIN = [
    "train",
    "--gin_file=t5x_configs/models/tiny_0.gin",
    "--gin_file=t5x_configs/runs/pretrain.gin",
    "--gin.MIXTURE_OR_TASK_NAME='debian_l10n_pretrain_en_de'",
    "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
    "--gin.BATCH_SIZE=8",
    "--gin.TRAIN_STEPS=8",
    "--gin.MAX_EPOCHS=None",
    "--gin.EVAL_EVERY=0",
    "--gin.SAVE_EVERY=2",
    "--gin.LOG_EVERY=1",
    "--gin.train.keep_checkpoints=10",  # every step's checkpoint stays, to compare
    "--gin.train.eval_examples=16",
]
TIMINGS = ("tokens_per_s", "steps_per_s")


class SmallDisk:
    """A mounted tmpfs and its ballast file."""

    def __init__(self, root):
        self.root = root
        self._ballast = os.path.join(root, ".ballast")

    def fill(self, leave: int = 0) -> None:
        """Writes ballast until about `leave` bytes are free (0: until the disk refuses)."""
        left = shutil.disk_usage(self.root).free - leave
        chunk = b"\0" * (1 << 20)
        try:
            with open(self._ballast, "ab") as f:
                while left > 0:
                    f.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
        except OSError:  # full already
            pass

    def free(self) -> None:
        os.remove(self._ballast)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = tmp_path / "disk"
    root.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(root)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield SmallDisk(str(root))
    finally:
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


def _cli(*argv) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "ft_scaling.cli", *argv]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)


def _train(model_dir) -> subprocess.CompletedProcess:
    return _cli(*TRAIN, f"--gin.MODEL_DIR='{model_dir}'")


def _error_line(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"ft-scaling {command}: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _log(model_dir) -> list[dict]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def _assert_same_params(path_a, path_b) -> None:
    a, _ = checkpoints.load_params(str(path_a), prefer_best=False)
    b, _ = checkpoints.load_params(str(path_b), prefer_best=False)
    flat_a, flat_b = _flat(a), _flat(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]))


def _flat(tree, prefix=()) -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _du(path) -> int:
    return sum(
        os.path.getsize(os.path.join(d, name)) for d, _, names in os.walk(path) for name in names
    )


def test_train_stops_naming_the_disk_keeps_its_checkpoint_and_resumes(small_disk, tmp_path):
    straight = tmp_path / "straight"
    assert _train(straight).returncode == 0
    step_bytes = _du(straight / "checkpoints" / "2")
    model_dir = os.path.join(small_disk.root, "run")
    small_disk.fill(leave=int(1.5 * step_bytes))  # room for checkpoint 2, not for 4
    failed = _train(model_dir)
    assert failed.returncode == 1
    line = _error_line(failed.stderr, "train")
    assert "DiskFullError" in line and f"device of {model_dir}" in line
    assert "last good checkpoint (step 2)" in line and "intact" in line
    assert "Traceback" not in failed.stderr
    assert checkpoints.CheckpointStore(model_dir).steps() == [2]
    _assert_same_params(straight / "checkpoints" / "2", os.path.join(model_dir, "checkpoints", "2"))
    assert not os.path.exists(os.path.join(model_dir, "summary.json"))

    small_disk.free()
    resumed = _train(model_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _log(model_dir) == _log(straight)
    _assert_same_params(straight, model_dir)


def _micro_study() -> sweep.Study:
    # One pretraining and one LoRA run (4 steps: D_f 32, batch 16, 2 epochs; saves at 2 and 4).
    bindings = [
        "Study.methods = [@lora/MethodGrid()]",
        "lora/MethodGrid.finetune_examples = (32,)",
        "tiny_1/BaseModel.pretrain_steps = 10",
    ]
    flags.parse_gin(["tests/study/micro_study.gin"], bindings)
    return sweep.Study()


class _Filler:
    """Fills the disk once, at the first call of a patched function that `when` accepts."""

    def __init__(self, disk: SmallDisk, patch: pytest.MonkeyPatch, owner, name: str, when):
        self.done = False
        real = getattr(owner, name)

        def patched(*args, **kwargs):
            if not self.done and when(*args, **kwargs) == "before":
                self.done = True
                disk.fill()
            out = real(*args, **kwargs)
            if not self.done and when(*args, **kwargs) == "after":
                self.done = True
                disk.fill()
            return out

        patch.setattr(owner, name, patched)


def _rows(out_dir) -> dict[str, dict]:
    results = store_lib.ResultsStore(os.path.join(out_dir, "results.sqlite"))
    try:
        return {row["run_id"]: row for row in results.rows()}
    finally:
        results.close()


def test_study_stops_on_a_full_disk_and_a_full_results_store_then_resumes(small_disk, tmp_path):
    study, out = _micro_study(), os.path.join(small_disk.root, "study")
    pretrain, finetune = sorted(sweep.expand(study, out), key=lambda r: r.kind != "pretrain")
    finetune_dir = finetune.model_dir(out)

    # 1. The disk fills once the finetuning run has saved its first checkpoint (step 2).
    with pytest.MonkeyPatch.context() as patch:
        after_first_save = lambda store, step, *a, **k: (  # noqa: E731
            "after" if store.directory.startswith(finetune_dir) else None
        )
        _Filler(small_disk, patch, checkpoints.CheckpointStore, "save", after_first_save)
        with pytest.raises(files.DiskFullError) as caught:
            runner.run_study(study, out)
    message = str(caught.value)
    assert finetune_dir in message and "last good checkpoint (step 2)" in message
    rows = _rows(out)
    assert set(rows) == {pretrain.run_id} and rows[pretrain.run_id]["status"] == "finished"
    assert checkpoints.CheckpointStore(finetune_dir).steps() == [2]
    small_disk.free()

    # 2. Space freed, the run finishes; the disk fills before its row is recorded.
    with pytest.MonkeyPatch.context() as patch:
        before_record = lambda store, run_id, *a, **k: (  # noqa: E731
            "before" if run_id == finetune.run_id else None
        )
        _Filler(small_disk, patch, store_lib.ResultsStore, "record", before_record)
        with pytest.raises(files.DiskFullError) as caught:
            runner.run_study(study, out)
    assert os.path.join(out, "results.sqlite") in str(caught.value)
    assert _rows(out) == rows  # the rows before are intact; the new one is not half there
    small_disk.free()

    # 3. Space freed again: the run is recorded from its directory; nothing is trained twice.
    counts = runner.run_study(study, out)
    assert counts == {"finished": 1, "failed": 0, "skipped": 1, "total": 2}
    final = _rows(out)
    assert final[pretrain.run_id] == rows[pretrain.run_id]
    reference = execute.train_run(finetune, str(tmp_path / "reference"))
    assert final[finetune.run_id]["test_loss"] == reference.test_loss
    assert final[finetune.run_id]["dev_loss"] == reference.best_dev_loss


def test_search_stops_on_a_full_disk_then_resumes(small_disk, tmp_path):
    flags.parse_gin(["tests/study/micro_search.gin"], ["Search.trials = 2"])
    config, out = search_config.Search(), os.path.join(small_disk.root, "search")
    calls = []
    real_train_run = execute.train_run

    def train_run(run, model_dir, budget_fraction=1.0):
        calls.append((run.kind, budget_fraction))
        if len(calls) == 4:  # the first continuation to the full budget: the disk is full
            small_disk.fill()
        return real_train_run(run, model_dir, budget_fraction)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(execute, "train_run", train_run)
        with pytest.raises(files.DiskFullError) as caught:
            search.run_search(config, out)
    assert out in str(caught.value) and "intact" in str(caught.value)
    assert [c[1] for c in calls] == [1.0, 0.5, 0.5, 1.0]  # pretraining, 2 early, 1 full
    early = search.trial_rows(store_lib.ResultsStore(os.path.join(out, "results.sqlite")))
    assert sorted(r["status"] for r in early.values()) == ["early", "early"]
    for row in early.values():  # the early phase's checkpoint is there to continue from
        assert checkpoints.CheckpointStore(row["run_dir"]).latest_step() == row["early_step"]
    small_disk.free()

    counts = search.run_search(config, out)
    assert counts["trials"] == 2 and counts["full_budget"] == 2 and counts["failed"] == 0
    rows = search.trial_rows(store_lib.ResultsStore(os.path.join(out, "results.sqlite")))
    for run_id, row in rows.items():
        assert row["early_dev_loss"] == early[run_id]["early_dev_loss"]
    best = min(rows.values(), key=lambda r: r["early_dev_loss"])
    straight = execute.train_run(
        search_config.trial_run(config, best["params"], out), str(tmp_path / "straight")
    )
    assert best["final_dev_loss"] == straight.best_dev_loss
    assert best["test_loss"] == straight.test_loss
