"""A pod as one worker: two JAX processes, only process 0 talks to the store and broadcasts.

Two CPU processes joined by jax.distributed (gloo collectives, loopback) run
`claims.run_claimed` on a plan of pretraining and finetuning runs. Process 1 is given no store
at all: it learns each claim from process 0's broadcast, so both execute the same runs in the
same order, and the store records each run once.
"""

import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import json, sys
from ft_scaling.study import claims, execute, sweep
from ft_scaling.study import store as store_lib
from ft_scaling.train import partitioning
import jax

partitioning.initialize_distributed()
leader = jax.process_index() == 0
store = store_lib.ResultsStore(sys.argv[1]) if leader else None
runs = [sweep.Run("pre", "pretrain", (), (), {})] + [
    sweep.Run(f"ft{i}", "finetune", (), (), {}, depends_on="pre") for i in range(4)
]
done = []

def execute_run(run, dependency_failed):
    done.append(run.run_id)
    record = execute.Record("finished", {"by": jax.process_index()})
    if leader:
        store.record(run.run_id, run.kind, record.status, dict(record.row))
    return record

settings = claims.ClaimSettings(lease_s=30, poll_s=0.1, worker="pod0")
counts = claims.run_claimed("micro", runs, store, execute_run, settings, leader)
print("RESULT " + json.dumps({"process": jax.process_index(), "done": done, "counts": counts}))
"""


def test_process_zero_claims_and_the_other_host_follows(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = str(tmp_path / "results.sqlite")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, db],
            env={**env, "JAX_PROCESS_ID": str(i)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT ") :]))
    assert [r["process"] for r in results] == [0, 1]
    assert results[0]["done"] == results[1]["done"] == ["pre", "ft0", "ft1", "ft2", "ft3"]
    assert results[0]["counts"] == results[1]["counts"] == {"finished": 5, "failed": 0, "total": 5}
    from ft_scaling.study import store as store_lib

    store = store_lib.ResultsStore(db)
    assert [(r["run_id"], r["by"]) for r in store.rows()] == [
        ("ft0", 0), ("ft1", 0), ("ft2", 0), ("ft3", 0), ("pre", 0),
    ]  # fmt: skip
    assert {c["worker"] for c in store.claims().values()} == {"pod0"}
    store.close()
