"""gs:// paths against a real GCS server on loopback: gcp-storage-emulator (in memory), with the
generation headers of object reads that real GCS sends and tensorstore needs (gcs_emulator.py).

Python clients (gcsfs, behind etils.epath) find it through STORAGE_EMULATOR_HOST, tensorstore
(orbax's checkpoint writer) through TENSORSTORE_GCS_HTTP_URL. Files written as single objects,
a training run on MODEL_DIR=gs://... SIGKILLed and resumed equal to an uninterrupted local run
bit for bit, and a study with --out=gs://... writing its report in the bucket.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ft_scaling import files
from ft_scaling.train import checkpoints, metrics_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "train", "run_script.py")
EMULATOR = os.path.join(REPO, "tests", "gcs_emulator.py")
BUCKET = "ft-bucket"


@pytest.fixture(scope="module")
def gcs_env():
    """The environment that points every GCS client at a fresh emulator (and this process)."""
    pytest.importorskip("gcp_storage_emulator", reason="pip install -e '.[test]' installs it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, EMULATOR, "start", "--host=127.0.0.1", f"--port={port}"]
    argv.append(f"--default-bucket={BUCKET}")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # a closed client's
    server = subprocess.Popen([*argv, "--in-memory", "--quiet"], **quiet)  # broken pipes
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        # gcsfs asks the Storage Control API for the bucket's layout, which no emulator serves.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "EPATH_USE_TF": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "emulator did not start"
                time.sleep(0.1)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _env(gcs_env) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    return {**env, **gcs_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def test_files_are_single_objects_and_a_missing_bucket_fails_naming_it(gcs_env):
    base = f"gs://{BUCKET}/files"
    files.atomic_write_json(f"{base}/a.json", {"x": 1})
    files.atomic_write_json(f"{base}/a.json", {"x": 2})
    for step in (1, 2):
        files.append_jsonl(f"{base}/log.jsonl", {"step": step})
    assert files.read_json(f"{base}/a.json") == {"x": 2}
    assert files.read_jsonl(f"{base}/log.jsonl") == [{"step": 1}, {"step": 2}]
    assert sorted(p.name for p in files.path(base).iterdir()) == ["a.json", "log.jsonl"]
    files.check_writable(base)
    with pytest.raises(OSError, match="cannot write to gs://no-such-bucket/study"):
        files.check_writable("gs://no-such-bucket/study")


def _losses(model_dir) -> dict[int, float]:
    rows = metrics_io.read_jsonl(str(files.path(model_dir) / "metrics.jsonl"))
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def _flat(params, prefix=()):
    for key, value in params.items():
        if isinstance(value, dict):
            yield from _flat(value, (*prefix, key))
        else:
            yield "/".join((*prefix, key)), np.asarray(value)


@pytest.mark.slow
def test_run_on_gcs_killed_and_resumed_equals_an_uninterrupted_local_run(gcs_env, tmp_path):
    steps, extra = 30, ["SAVE_EVERY=5"]
    local, remote = str(tmp_path / "local"), f"gs://{BUCKET}/run"
    run = [sys.executable, SCRIPT]
    env, tail = _env(gcs_env), [str(steps), "-", *extra]
    done = subprocess.run([*run, local, *tail], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    proc = subprocess.Popen([*run, remote, *tail], env=env, cwd=REPO, stderr=subprocess.DEVNULL)
    saved, deadline = files.path(remote) / "checkpoints", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.isdigit() and int(p.name) >= 10 for p in _listing(saved)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(_losses(remote)) < steps, "the run finished before it was killed"
    done = subprocess.run([*run, remote, *tail], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    straight, resumed = _losses(local), _losses(remote)
    assert sorted(resumed) == sorted(straight) == list(range(1, steps + 1))
    assert [resumed[s] for s in straight] == [straight[s] for s in straight]
    (a, _), (b, meta) = (checkpoints.load_params(d, prefer_best=False) for d in (local, remote))
    assert meta["step"] == steps
    flat_a, flat_b = dict(_flat(a)), dict(_flat(b))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key])
    assert any(p.name.startswith("events.") for p in _listing(files.path(remote) / "tensorboard"))


def _listing(directory) -> list:
    return list(directory.iterdir()) if directory.exists() else []


@pytest.mark.slow
def test_study_with_out_in_a_bucket_writes_its_report_there(gcs_env, tmp_path):
    out = f"gs://{BUCKET}/study"
    store = f"sqlite:///{tmp_path}/results.sqlite"  # SQLite cannot live in a bucket
    cmd = [
        sys.executable,
        "-m",
        "ft_scaling.cli",
        "study",
        "--gin_file=tests/study/micro_study.gin",
    ]
    cmd += [f"--out={out}", f"--store={store}"]
    # One D_f per method (3 runs: the pretraining run, FMT and LoRA from its gs:// checkpoint).
    cmd += [f"--gin.{m}/MethodGrid.finetune_examples=(32,)" for m in ("fmt", "lora")]
    done = subprocess.run(cmd, env=_env(gcs_env), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = files.read_text(f"{out}/report.md")
    assert report.startswith("# Study report: study")
    table = files.read_text(f"{out}/results.csv").splitlines()
    assert len(table) == 1 + 2  # header + the finetuning runs
    assert files.read_json(f"{out}/store.json")["url"] == store


def test_eval_and_infer_read_and_write_a_bucket_as_a_local_dir(gcs_env, tmp_path):
    from ft_scaling.eval import infer_main
    from ft_scaling.eval import main as eval_main
    from ft_scaling.models.decoder import Decoder
    from tests.eval import cli_test

    params = cli_test._params(Decoder(cli_test.CONFIG))
    outputs = {}
    for where, run in (("local", str(tmp_path / "run")), ("gcs", f"gs://{BUCKET}/eval_run")):
        cli_test._save(run, params)
        extra = ["--gin.EVAL_SPLIT='validation'", "--gin.MAX_EXAMPLES=2"]
        extra += ["--gin.MAX_DECODE_LENGTH=4", "--gin.EVAL_BATCH_SIZE=64"]
        assert eval_main.main(cli_test._flags("t5x_configs/runs/eval.gin", run, *extra)) == 0
        predictions = f"{run}/predictions.jsonl"
        extra = ["--gin.INFER_SPLIT='validation'", "--gin.MAX_EXAMPLES=2"]
        extra += ["--gin.MAX_DECODE_LENGTH=4", f"--gin.INFER_OUTPUT='{predictions}'"]
        assert infer_main.main(cli_test._flags("t5x_configs/runs/infer.gin", run, *extra)) == 0
        saved = files.read_json(f"{run}/eval/validation_step3.json")
        outputs[where] = (saved["metrics"], saved["checkpoint"], files.read_jsonl(predictions))
    assert outputs["gcs"][0] == outputs["local"][0]
    assert outputs["gcs"][1] == f"gs://{BUCKET}/eval_run"
    assert outputs["gcs"][2] == outputs["local"][2] and len(outputs["gcs"][2]) == 2
