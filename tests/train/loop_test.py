"""End-to-end training: learning, layout independence, exact resume after SIGKILL, guards."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ft_scaling import files
from ft_scaling.config import flags
from ft_scaling.train import checkpoints, metrics_io
from ft_scaling.train import summary as summary_lib
from tests.train import byte_tasks, run_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tests", "train", "run_script.py")


def _env(devices: int = 1, **extra) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra)
    return env


def _run(model_dir, steps, mesh="-", *extra, devices=1, env=None):
    cmd = [sys.executable, SCRIPT, str(model_dir), str(steps), mesh, *extra]
    out = subprocess.run(cmd, env=env or _env(devices), capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _train_losses(model_dir) -> dict[int, float]:
    rows = metrics_io.read_jsonl(os.path.join(model_dir, "metrics.jsonl"))
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}  # last write wins


def _train_in_process(model_dir, steps, *extra):
    byte_tasks.register()
    gin_files = ["t5x_configs/models/tiny_1.gin", "t5x_configs/runs/pretrain.gin"]
    flags.parse_gin(gin_files, run_script.bindings(str(model_dir), steps, None, list(extra)))
    from ft_scaling.train import loop

    return loop.train()


def test_tiny_model_overfits_a_small_batch(tmp_path):
    # One fixed batch of 8 sentences (FINETUNE_EXAMPLES=8 = BATCH_SIZE), seen again every step.
    summary = _train_in_process(tmp_path, 60, "train.finetune_examples=8", "LEARNING_RATE=0.01")
    losses = _train_losses(tmp_path)
    assert summary.status == "finished" and summary.step == 60
    assert losses[60] < 0.1 * losses[1], (losses[1], losses[60])


def test_run_summary_says_where_the_wall_time_went(tmp_path):
    """Every phase is counted, exclusively: the phases sum to at most the wall time, and a
    second run of the same shapes in this process compiles (almost) nothing."""
    # Shapes no other test trains, so the first run compiles them (JAX's caches live per process).
    extra = ("EVAL_EVERY=3", "SAVE_EVERY=3", "train.test_split='validation'", "BATCH_SIZE=6")
    extra += ("TASK_FEATURE_LENGTHS={'targets': 40}",)
    first = _train_in_process(tmp_path / "first", 6, *extra)
    second = _train_in_process(tmp_path / "second", 6, *extra)
    for summary in (first, second):
        timings = summary.timings
        assert set(timings) == set(summary_lib.TIMING_PHASES)
        assert all(seconds >= 0 for seconds in timings.values()), timings
        assert sum(timings.values()) <= summary.wall_time_s + 1e-6, (timings, summary.wall_time_s)
        for phase in ("setup", "input", "train", "eval", "checkpoint", "test"):
            assert timings[phase] > 0, (phase, timings)
    # The first run traced and compiled the step and the eval; the second found them compiled.
    assert first.timings["compile"] > 0.2, first.timings
    assert second.timings["compile"] < 0.5 * first.timings["compile"], (first, second)
    row = dict(zip(summary_lib.TIMING_PHASES, (None,) * 7, strict=True))
    row.update(second.timings)
    assert second.timing_columns() == {f"{k}_time": v for k, v in row.items()}


@pytest.mark.slow
def test_same_losses_on_1_device_8_device_mesh_and_two_processes(tmp_path):
    _run(tmp_path / "one", 20)
    _run(tmp_path / "mesh", 20, "(2,2,2)", devices=8)
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(
            2,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
        )
        cmd = [sys.executable, SCRIPT, str(tmp_path / "multi"), "20", "(2,1,2)"]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    one, mesh, multi = (_train_losses(tmp_path / n) for n in ("one", "mesh", "multi"))
    assert sorted(one) == list(range(1, 21))
    steps = sorted(one)
    np.testing.assert_allclose([mesh[s] for s in steps], [one[s] for s in steps], rtol=1e-5)
    np.testing.assert_allclose([multi[s] for s in steps], [one[s] for s in steps], rtol=1e-5)
    assert one[20] < one[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(model_dir):
    params, meta = checkpoints.load_params(str(model_dir), prefer_best=False)
    return params, meta


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    steps, extra = 40, ("SAVE_EVERY=5",)
    _run(tmp_path / "straight", steps, "-", *extra)
    killed = tmp_path / "killed"
    cmd = [sys.executable, SCRIPT, str(killed), str(steps), "-", *extra]
    proc = subprocess.Popen(
        cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt_dir = killed / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if ckpt_dir.exists() else []
        if any(d >= 15 for d in done):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = max(_train_losses(killed))
    assert interrupted_at < steps, "the run finished before it was killed"
    _run(killed, steps, "-", *extra)
    straight, resumed = _train_losses(tmp_path / "straight"), _train_losses(killed)
    assert sorted(resumed) == sorted(straight) == list(range(1, steps + 1))
    assert [resumed[s] for s in range(1, steps + 1)] == [straight[s] for s in range(1, steps + 1)]
    # The log itself: the replayed steps are not logged twice (#19 item 3).
    assert _log_lines(killed) == _log_lines(tmp_path / "straight")
    a, _ = _params(tmp_path / "straight")
    b, meta = _params(killed)
    assert meta["step"] == steps
    flat_a, flat_b = (dict(_flatten(p)) for p in (a, b))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]))


def _log_lines(model_dir) -> list[dict]:
    """metrics.jsonl line by line, without the timings (they differ between any two runs)."""
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    timings = ("tokens_per_s", "steps_per_s")
    return [{k: v for k, v in row.items() if k not in timings} for row in rows]


def _flatten(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def test_checkpoint_retention_keeps_last_two_and_best(tmp_path):
    summary = _train_in_process(tmp_path, 12, "EVAL_EVERY=3", "SAVE_EVERY=100")
    store = checkpoints.CheckpointStore(str(tmp_path))
    dev = {
        r["step"]: r["loss"]
        for r in metrics_io.read_jsonl(tmp_path / "metrics.jsonl")
        if r["split"] == "validation"
    }
    best = min(dev, key=dev.get)
    # Saved: every new best by dev loss, and the last step; kept: the last two and the best.
    improved = [s for s in sorted(dev) if dev[s] < min([dev[t] for t in dev if t < s] or [1e9])]
    saved = sorted(set(improved) | {12})
    assert store.steps() == sorted(set(saved[-2:]) | {best})
    assert summary.best_step == best
    store.close()


def test_best_step_is_the_lowest_dev_loss_not_the_latest(tmp_path):
    """Steps saved with dev losses 3, 1, 2 (and one without, as a periodic save): the best
    is step 2, kept beyond keep_last=1, and restored as the best params."""
    store = checkpoints.CheckpointStore(str(tmp_path), checkpoints.RetentionPolicy(keep_last=1))
    for step, dev_loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, None)]:
        store.save(step, {"w": np.full(2, step, np.float32)}, {"step": step}, dev_loss)
    assert store.best_step() == 2
    assert store.steps() == [2, 4]
    store.close()
    reopened = checkpoints.CheckpointStore(str(tmp_path))
    assert reopened.best_step() == 2  # the metrics are on disk, not only in the manager
    reopened.close()


def test_other_config_in_model_dir_is_refused(tmp_path):
    _train_in_process(tmp_path, 2)
    with pytest.raises(files.FingerprintError, match="BATCH_SIZE|batch_size"):
        _train_in_process(tmp_path, 2, "BATCH_SIZE=4")


def test_bad_inputs_fail_before_training_with_names(tmp_path):
    with pytest.raises(ValueError, match="unknown task or mixture 'nope'"):
        _train_in_process(tmp_path / "a", 2, "MIXTURE_OR_TASK_NAME='nope'")
    with pytest.raises(ValueError, match="does not divide"):
        _train_in_process(tmp_path / "b", 2, "mesh_shape.shape=(3, 1, 1)")
    with pytest.raises(FileNotFoundError, match="INITIAL_CHECKPOINT_PATH"):
        _train_in_process(tmp_path / "c", 2, "train.initial_checkpoint_path='/nonexistent'")
    with pytest.raises(ValueError, match="num_layerz"):
        _train_in_process(tmp_path / "d", 2, "ModelConfig.num_layerz=3")
    assert not os.path.exists(tmp_path / "a" / "checkpoints")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from ft_scaling.train.loop import NonFiniteLossError

    _train_in_process(tmp_path / "good", 3, "SAVE_EVERY=3")
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        _train_in_process(
            tmp_path / "bad",
            6,
            "SAVE_EVERY=2",
            "LEARNING_RATE=1e30",
            "train.optimizer_kind='sgd'",
            "train.clip_norm=None",
        )
    store = checkpoints.CheckpointStore(str(tmp_path / "bad"))
    for step in store.steps():
        state, _ = store.restore(step)
        leaves = [np.asarray(x) for x in _flatten_values(state["params"])]
        assert all(np.isfinite(x).all() for x in leaves)
    store.close()


def _flatten_values(tree):
    return [v for _, v in _flatten(tree)]


def test_summary_is_written_atomically_with_operative_config(tmp_path):
    _train_in_process(tmp_path, 2)
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["step"] == 2
    config = (tmp_path / "config.gin").read_text()
    assert "BATCH_SIZE = 8" in config and "train.batch_size = %BATCH_SIZE" in config


def test_second_run_reuses_compiled_steps(tmp_path):
    from ft_scaling.train import trainer

    _train_in_process(tmp_path / "a", 3)
    before = trainer._compiled.cache_info().hits
    summary = _train_in_process(tmp_path / "b", 5, "LEARNING_RATE=0.001")
    assert trainer._compiled.cache_info().hits == before + 1
    assert summary.step == 5
