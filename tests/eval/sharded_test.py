"""Decoding and perplexity give the same results on 1 device and on a 2 x 2 CPU mesh."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tests", "eval", "sharded_script.py")


def _run(devices: int, shape: tuple[int, int, int]) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [sys.executable, SCRIPT, *map(str, shape)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sharded_mesh_matches_one_device():
    one = _run(1, (1, 1, 1))
    mesh = _run(4, (2, 1, 2))  # batch over 'data', heads/mlp/vocab over 'model'
    assert mesh["devices"] == 4 and mesh["embedding_sharded"]
    assert mesh["greedy"] == one["greedy"]
    assert mesh["beam"] == one["beam"]
    np.testing.assert_allclose(mesh["loss"], one["loss"], rtol=1e-6)
