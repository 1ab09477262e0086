"""Packs of claimed runs (study/claimed_packs.py): two workers share a PostgreSQL store with
Study.pack_runs = 4, one is SIGKILLed while its pack trains, the other takes the killed
pack's runs over once their leases expire and resumes each from its checkpoint.

The runs: micro_pack.gin's LoRA grids (one pack group of 6: ranks 4/8/16, two D_f, two
learning rates), BitFit and FMT (2 each), from one pretrained base (tests/study/micro_pack.py).
Every run is recorded once, and the union of the rows equals the same runs trained one by
one in this process (micro_pack.compare: steps and best step exactly; dev/test loss and
every metrics row at rtol 1e-5, as a packed study equals a solo one).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from ft_scaling.study import store as store_lib
from tests.study import micro_pack

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = [*micro_pack.LORA, "bitfit", "fmt"]
RUNS = 10  # lora 4 + lora_lr 2 + bitfit 2 + fmt 2
LEASE_S = 4
RTOL = 1e-5


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    return micro_pack.pretrain(str(tmp_path_factory.mktemp("base")))


@pytest.fixture(scope="module")
def solo(base, tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("solo"))
    counts, err = micro_pack.run(base, out, 1, [micro_pack.methods_binding(METHODS)])
    assert counts["failed"] == 0 and counts["finished"] == RUNS, err[-3000:]
    return micro_pack.rows(out)


def _worker(base: str, out, url: str, log, cache: str, extra=(), env=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ft_scaling.cli", "study", f"--gin_file={micro_pack.GIN}"]
    cmd += [f"--out={out}", "--no_report", f"--store={url}", f"--lease_seconds={LEASE_S}"]
    bindings = micro_pack.study_bindings(base, micro_pack.PACK_RUNS)
    methods = list(extra) or [micro_pack.methods_binding(METHODS)]
    cmd += [f"--gin.{b}" for b in [*bindings, *methods]]
    env = dict(os.environ, **(env or {}), PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    env["JAX_PLATFORMS"] = "cpu"
    env.update(  # the workers share compiled programs, as the pods of a study would not
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=log)


def _read(path) -> str:
    with open(path) as f:
        return f.read()


def _mid_pack(text: str) -> bool:
    """The worker has claimed a second run into a pack and a run of 8 steps is at step 3-7:
    past its first dev evaluation (a new best: checkpointed), not ended."""
    if not re.search(r"^\[pack\] \S+ claimed finetune", text, re.M):
        return False
    return re.search(r"^step [3-7]/8 ", text.split("[pack] pack of", 1)[-1], re.M) is not None


def test_two_workers_one_killed_mid_pack_union_equals_solo(base, solo, postgres_url, tmp_path):
    out, cache = tmp_path / "shared", str(tmp_path / "compiled")
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    handles = [open(path, "w") for path in logs]
    procs = [_worker(base, out, postgres_url, h, cache) for h in handles]
    victim, survivor = procs
    watcher = None
    try:
        deadline = time.time() + 600
        while not _mid_pack(_read(logs[0])):
            assert victim.poll() is None, f"worker 0 ended first:\n{_read(logs[0])[-3000:]}"
            assert time.time() < deadline, "worker 0 never trained a pack"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        watcher = store_lib.ResultsStore(postgres_url)
        name = f"{os.uname().nodename}-{victim.pid}"
        held = [r for r, c in watcher.claims().items() if c["worker"] == name]
        in_flight = [r for r in held if watcher.status(r) is None]
        assert in_flight, "every run of the killed worker had ended: nothing was taken over"
        saved = {r: _latest_checkpoint(out, r) for r in in_flight}
        saved = {r: step for r, step in saved.items() if step is not None}
        assert survivor.wait(timeout=900) == 0, _read(logs[1])[-3000:]
        found = watcher.rows(kind="finetune", status="finished")
        rows, claims = {r["config_hash"]: r for r in found}, watcher.claims()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for handle in handles:
            handle.close()
        if watcher is not None:
            watcher.close()
    assert len(found) == len(rows) == RUNS  # one row per run
    differences = micro_pack.compare(solo, rows, RTOL)
    assert not differences, "\n".join(differences[:30])
    survivor_log = _read(logs[1])
    assert "[pack] pack of" in survivor_log
    for run_id in in_flight:  # reclaimed once its lease expired, and finished by the survivor
        assert claims[run_id]["attempts"] == 2, claims[run_id]
        assert re.search(rf"claimed finetune {run_id}\b", survivor_log), run_id
        assert f"finetune {run_id} finished" in survivor_log
    # A taken-over run with a checkpoint at the kill resumed from it, not from step 0.
    assert saved, f"no run in flight at the kill had a checkpoint: {in_flight}"
    for run_id, step in saved.items():
        assert f"finetune_{run_id} resumes at step {step}/" in survivor_log, (run_id, step)


def _latest_checkpoint(out, run_id: str) -> int | None:
    directory = out / "runs" / f"finetune_{run_id}" / "checkpoints"
    steps = (
        [int(p.name) for p in directory.glob("*") if p.name.isdigit()] if directory.is_dir() else []
    )
    return max(steps, default=None)


def test_a_pod_of_two_processes_trains_claimed_packs_as_one_program(
    base, solo, postgres_url, tmp_path
):
    """Two JAX processes (jax.distributed, gloo) as one worker: process 0 claims the pack's
    runs and broadcasts each claim and candidate list; both train the same pack on a mesh of
    their 2 devices, and the rows equal the 1-device solo runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, cache = tmp_path / "pod", str(tmp_path / "compiled")
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2"}
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    handles = [open(path, "w") for path in logs]
    lora = micro_pack.methods_binding(micro_pack.LORA)
    procs = [
        _worker(base, out, postgres_url, h, cache, [lora], {**env, "JAX_PROCESS_ID": str(i)})
        for i, h in enumerate(handles)
    ]
    try:
        codes = [proc.wait(timeout=900) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for handle in handles:
            handle.close()
    assert codes == [0, 0], "\n".join(_read(path)[-3000:] for path in logs)
    watcher = store_lib.ResultsStore(postgres_url)
    found = watcher.rows(kind="finetune", status="finished")
    workers = {c["worker"] for c in watcher.claims().values()}
    watcher.close()
    rows = {r["config_hash"]: r for r in found}
    expected = {k: v for k, v in solo.items() if v["method"] in micro_pack.LORA}
    assert len(found) == len(expected) == 6
    differences = micro_pack.compare(expected, rows, RTOL)
    assert not differences, "\n".join(differences[:30])
    first, second = (_read(path) for path in logs)
    assert "[pack] pack of 4 runs" in first and "sharded over 2 device(s)" in first
    assert len(workers) == 1  # one worker: process 1 never talked to the store
    assert "[pack]" not in second  # it follows: process 0 alone writes the pack's lines
