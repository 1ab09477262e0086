"""Two search workers on one PostgreSQL database (trial rows and Optuna's RDB storage).

Both run the same `ft-scaling search --store=URL` command at once; together they finish with
exactly the asked number of trials (a trial lost in a race for the last slot is closed
untrained, marked surplus), and every run reaches its full budget.
"""

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from ft_scaling.study import store as store_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRIALS = 4


@pytest.mark.slow
def test_two_workers_finish_exactly_the_asked_trials(postgres_url, tmp_path):
    out = tmp_path / "search"
    cmd = [
        sys.executable,
        "-m",
        "ft_scaling.cli",
        "search",
        "--gin_file=tests/study/micro_search.gin",
    ]
    cmd += [f"--out={out}", f"--store={postgres_url}", "--lease_seconds=6", "--no_report"]
    cmd += [f"--gin.Search.trials={TRIALS}"]
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()[-3000:]
    study = optuna.load_study(study_name="micro", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == TRIALS
    assert all(t.user_attrs.get("surplus") for t in trials if t not in counted)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    store = store_lib.ResultsStore(postgres_url)
    rows, claims = store.rows(kind="trial"), store.claims()
    store.close()
    # A config drawn twice is one run; every run went to its full budget (full_budget_for=all).
    assert {r["run_id"] for r in rows} == {t.user_attrs["run_id"] for t in counted}
    assert all(r["status"] == "finished" for r in rows)
    # Every lease was given back: no run or trial is left held.
    assert all(c["lease_until"] is None for c in claims.values())
