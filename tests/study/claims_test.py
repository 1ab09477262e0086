"""Workers claiming runs from one PostgreSQL store: three processes, one SIGKILLed mid-run.

The micro study (1 pretraining run, then 6 finetuning runs that need it) on three local worker
processes sharing a store on a real PostgreSQL server (tests/study/conftest.py). The worker
that claims the pretraining run is killed once its step-10 checkpoint is written; after its
lease (4 s) expires another worker reclaims the run and resumes it from that checkpoint. Every
run is then recorded exactly once, and the union of the rows equals a single-worker study row
for row (wall time and run directory aside).
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ft_scaling.study import store as store_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICRO = "tests/study/micro_study.gin"
RUNS_IN_MICRO = 7
LEASE_S = 4
IGNORED = ("wall_time", "run_dir", *store_lib.TIMING_COLUMNS)


def _cmd(out, *extra):
    return [sys.executable, "-m", "ft_scaling.cli", "study", f"--gin_file={MICRO}"] + [
        f"--out={out}",
        "--no_report",
        *extra,
    ]


def _env():
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")


def _comparable(rows: list[dict]) -> dict[str, dict]:
    return {r["run_id"]: {k: v for k, v in r.items() if k not in IGNORED} for r in rows}


def _wait_for_checkpoint(store, out, procs, timeout_s=600) -> tuple[str, subprocess.Popen]:
    """(pretraining run id, the worker process training it) once its step 10 is saved."""
    by_worker = {f"{socket.gethostname()}-{p.pid}": p for p in procs}
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for run_id, claim in store.claims().items():
            done = out / "runs" / f"pretrain_{run_id}" / "checkpoints" / "10" / "commit_success.txt"
            if claim["worker"] in by_worker and done.exists():
                return run_id, by_worker[claim["worker"]]
        assert all(p.poll() is None for p in procs), "a worker exited early"
        time.sleep(0.02)
    raise TimeoutError("no pretraining checkpoint appeared")


@pytest.mark.slow
def test_three_workers_one_killed_union_equals_one_worker(postgres_url, tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(_cmd(reference), env=_env(), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    single = store_lib.ResultsStore(str(reference / "results.sqlite"))
    expected = _comparable(single.rows())
    single.close()
    assert len(expected) == RUNS_IN_MICRO

    out = tmp_path / "shared"
    extra = (f"--store={postgres_url}", f"--lease_seconds={LEASE_S}")
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(3)]
    procs = [
        subprocess.Popen(_cmd(out, *extra), env=_env(), cwd=REPO, stdout=log, stderr=log)
        for log in logs
    ]
    watcher = store_lib.ResultsStore(postgres_url)
    try:
        while not (out / "store.json").exists():  # the plan is in the store once it exists
            time.sleep(0.1)
        pretrain_id, victim = _wait_for_checkpoint(watcher, out, procs)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert watcher.status(pretrain_id) is None, "the run finished before the kill"
        survivors = [p for p in procs if p is not victim]
        for proc in survivors:
            assert proc.wait(timeout=900) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    rows, claims = watcher.rows(), watcher.claims()
    watcher.close()
    assert len(rows) == RUNS_IN_MICRO  # one row per run: run_id is the key
    assert _comparable(rows) == expected
    assert claims[pretrain_id]["attempts"] == 2  # killed once, reclaimed once
    assert all(c["attempts"] == 1 for r, c in claims.items() if r != pretrain_id)
    # The reclaiming worker resumed at step 10: it logs only step 20 of the 20 steps.
    rescuer = [
        log for log, proc in zip(logs, procs, strict=True)
        if proc is not victim and f"claimed pretrain {pretrain_id}" in _read(log)
    ]  # fmt: skip
    assert len(rescuer) == 1
    text = _read(rescuer[0]).split(f"claimed pretrain {pretrain_id}", 1)[1]
    assert "step 20/20" in text and "step 10/20" not in text.split("claimed", 1)[0]


def _read(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()
