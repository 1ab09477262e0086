"""Prompt tuning and LoRA give the same losses on 1 device and on a 2x2x2 CPU mesh, with their
own parameters sharded by their logical axes (STYLE.md rule 5)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = """
import dataclasses, sys
import jax, numpy as np
from jax.sharding import Mesh
sys.path.insert(0, "tests/methods")
import conftest
from ft_scaling.methods import lora, prompt
from ft_scaling.train import partitioning

assert jax.device_count() == 8
config = dataclasses.replace(conftest.TINY, vocab_size=96)  # divisible by the 'model' axis
one = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
eight = partitioning.make_mesh((2, 2, 2))
for method, rate in ((prompt.PromptTuning(prompt_length=4), 1e-1), (lora.LoRA(rank=4), 3e-2)):
    runs = [conftest.finetune(method, config, 4, rate, mesh=mesh) for mesh in (one, eight)]
    np.testing.assert_allclose(runs[0]["losses"], runs[1]["losses"], rtol=2e-5)
    trained = jax.tree.leaves(runs[1]["state"].params)
    # Distinct shard index sets per leaf: > 1 means the leaf is partitioned (LoRA's key/value B
    # stays whole: (lora_rank, kv_heads, kv) all map to None in the default rules).
    pieces = [len({str(s.index) for s in x.addressable_shards}) for x in trained]
    assert max(pieces) >= 2, (method.name, pieces)
    print(method.name, runs[1]["losses"], "shards per trainable leaf:", sorted(set(pieces)))
print("OK")
"""


@pytest.mark.slow
def test_prompt_and_lora_losses_equal_on_one_device_and_eight():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]
