"""The study runner: kills lose nothing, failures are recorded, workers split the runs."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ft_scaling.config import flags
from ft_scaling.scaling import fit, laws
from ft_scaling.study import runner, store, sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICRO = "tests/study/micro_study.gin"
RUNS_IN_MICRO = 7  # 1 pretraining + 2 methods x 3 D_f


def _cmd(out, *extra):
    return [
        sys.executable,
        "-m",
        "ft_scaling.cli",
        "study",
        f"--gin_file={MICRO}",
        f"--out={out}",
        "--no_report",
        *extra,
    ]


def _env():
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")


def _rows(out_dir) -> dict[str, dict]:
    rows = {}
    for s in store.open_all(str(out_dir)):
        for row in s.rows(status="finished"):
            assert row["run_id"] not in rows, "a run was recorded twice"
            rows[row["run_id"]] = row
        s.close()
    return rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    done = subprocess.run(_cmd(out), env=_env(), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, _rows(out)


def _single_law_fits(rows: dict) -> dict:
    """L = A D_f^-beta + E per method, fitted on the finished finetuning rows."""
    law = laws.get_law("single")
    out = {}
    for method in ("fmt", "lora"):
        mine = sorted(
            (r["finetune_examples"], r["test_loss"])
            for r in rows.values()
            if r.get("method") == method
        )
        d_f, loss = (np.array(v, float) for v in zip(*mine, strict=True))
        out[method] = fit.fit_law(law, np.ones_like(d_f), d_f, loss).params
    return out


@pytest.mark.slow
def test_killed_twice_then_rerun_equals_uninterrupted(reference, tmp_path):
    ref_dir, ref_rows = reference
    assert len(ref_rows) == RUNS_IN_MICRO
    db = tmp_path / "results.sqlite"
    for finished_before_kill in (2, 4):
        proc = subprocess.Popen(
            _cmd(tmp_path),
            env=_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if db.exists() and len(_rows(tmp_path)) >= finished_before_kill:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(_rows(tmp_path)) < RUNS_IN_MICRO, "the study finished before the kill"
    done = subprocess.run(_cmd(tmp_path), env=_env(), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path)
    assert sorted(rows) == sorted(ref_rows)
    for run_id, row in rows.items():
        assert row["test_loss"] == ref_rows[run_id]["test_loss"], row["method"]
    ours, theirs = _single_law_fits(rows), _single_law_fits(ref_rows)
    for method in ours:
        assert ours[method] == theirs[method]


@pytest.mark.slow
def test_two_workers_union_equals_one_worker(reference, tmp_path):
    _, ref_rows = reference
    procs = [
        subprocess.Popen(
            _cmd(tmp_path, f"--worker_index={i}", "--num_workers=2"),
            env=_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    stores = sorted(f for f in os.listdir(tmp_path) if f.endswith(".sqlite"))
    assert stores == ["results_w0of2.sqlite", "results_w1of2.sqlite"]
    rows = _rows(tmp_path)
    assert sorted(rows) == sorted(ref_rows)
    for run_id, row in rows.items():
        assert row["test_loss"] == ref_rows[run_id]["test_loss"]


def test_a_failing_run_is_recorded_and_the_study_goes_on(tmp_path):
    bad_targets = "lora/MethodGrid.bindings = [\"LORA_TARGETS = ['attention/nomatch$']\"]"
    flags.parse_gin([MICRO], [bad_targets, "fmt/MethodGrid.finetune_examples = (32,)"])
    study = sweep.Study()
    counts = runner.run_study(study, str(tmp_path))
    assert counts == {"finished": 2, "failed": 3, "skipped": 0, "total": 5}
    results = store.ResultsStore(str(tmp_path / "results.sqlite"))
    failed = results.rows(status="failed")
    assert len(failed) == 3 and all("nomatch" in r["error"] for r in failed)
    finished = results.rows(kind="finetune", status="finished")
    assert [r["method"] for r in finished] == ["fmt"]
    assert math.isfinite(finished[0]["test_loss"]) and finished[0]["steps"] == 4
    results.close()
    counts = runner.run_study(study, str(tmp_path))  # a rerun skips what finished
    assert counts["skipped"] == 2 and counts["failed"] == 3
