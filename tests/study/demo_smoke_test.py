"""The main job end to end: the demo study's smoke preset, from pretraining to report.md."""

import json
import math
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_smoke_study_writes_a_report_with_fitted_laws(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "-m",
        "ft_scaling.cli",
        "study",
        "--gin_file=gin/studies/demo.gin",
        f"--out={tmp_path}",
        "--preset=smoke",
    ]
    start = time.time()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    elapsed = time.time() - start
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"smoke study: {elapsed:.0f}s")
    with open(tmp_path / "plan.json") as f:
        plan = json.load(f)
    with open(tmp_path / "results.csv") as f:
        rows = f.read().splitlines()
    assert len(rows) - 1 == sum(r["kind"] == "finetune" for r in plan) == 27
    report = (tmp_path / "report.md").read_text()
    assert "27 finetuning runs finished; 0 failed." in report
    for method in ("fmt", "prompt", "lora"):
        assert f"method={method} | model_params |" in report
    with open(tmp_path / "fit_multiplicative" / "fit.json") as f:
        fits = json.load(f)
    # Too few points for readable fits (the preset checks the pipeline), but the paper's two
    # stages must hold: one beta and E per method, shared by its factors, and finite laws.
    assert len(fits["settings"]) == 3
    for setting in fits["settings"]:
        factors = list(setting["factors"].values())
        assert {f["factor"] for f in factors} == {"model_params", "pretrain_tokens"}
        for name in ("beta", "E"):
            assert factors[0]["params"][name] == factors[1]["params"][name]
        for factor in factors:
            assert all(math.isfinite(v) for v in factor["params"].values())
            assert factor["params"]["E"] > 0
    assert any(p.endswith(".png") for p in os.listdir(tmp_path / "fit_multiplicative"))
