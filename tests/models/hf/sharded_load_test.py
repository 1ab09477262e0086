"""The import on an 8-device CPU mesh (2, 2, 2): same logits as transformers, each device holds
only its shard, and the loader reads from the files only the blocks the devices hold."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.models.hf.hf_checkpoints import checkpoint, hf_logits, hf_model, padded_batch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = """
import sys
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from flax import traverse_util
from ft_scaling.models import decoder
from ft_scaling.models.hf import checkpoint_files, load_pretrained
from ft_scaling.train import partitioning

directory, data, fused = sys.argv[1], np.load(sys.argv[2]), sys.argv[3] == "1"
assert jax.device_count() == 8
reads = []
original_read = checkpoint_files.CheckpointFiles.read
def counting_read(self, name, ranges):
    block = original_read(self, name, ranges)
    reads.append((name, block.size, self.shape(name)))
    return block
checkpoint_files.CheckpointFiles.read = counting_read

mesh = partitioning.make_mesh((2, 2, 2))
rules = partitioning.DEFAULT_RULES
config, params = load_pretrained(directory, mesh=mesh)
sharded_reads = list(reads)
_, whole = load_pretrained(directory)  # one device, for the values of every shard
split = 0
for path, leaf in traverse_util.flatten_dict(params).items():
    full = np.asarray(traverse_util.flatten_dict(whole)[path])
    shard_shape = leaf.sharding.shard_shape(leaf.shape)
    split += shard_shape != leaf.shape
    assert len(leaf.addressable_shards) == 8
    for shard in leaf.addressable_shards:
        assert shard.data.shape == shard_shape, (path, shard.data.shape, shard_shape)
        np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
assert traverse_util.flatten_dict(params)[("embedding",)].sharding.shard_shape(
    (config.vocab_size, config.embed_dim)) == (config.vocab_size // 2, config.embed_dim // 2)
assert split >= 10, split
# Reads of the sharded load: none bigger than a device's block (x3: GPT-NeoX's fused q/k/v).
# A 2-D tensor is split over 'fsdp' and/or 'model' by the default rules: no read takes it all.
limit = 3 if fused else 1
for name, size, shape in sharded_reads:
    if len(shape) == 2:
        assert size * 2 <= int(np.prod(shape)) * limit, (name, size, shape)

@jax.jit
def logits(params, tokens, segments, positions):
    with nn.logical_axis_rules(rules):
        return decoder.Decoder(config).apply({"params": params}, tokens, segments, positions)

with jax.set_mesh(mesh):
    ours = logits(params, *(jnp.asarray(data[k]) for k in ("tokens", "segments", "positions")))
real = data["segments"].astype(bool)
diff = np.abs(np.asarray(ours)[real] - data["want"][real]).max()
assert diff <= 1e-4, diff
print("OK", diff)
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama2", "gpt_neox"])
def test_eight_device_import(family, tmp_path):
    directory = checkpoint(family)
    tokens, _, segments, positions = padded_batch()
    want = hf_logits(hf_model(family), tokens, segments, positions)
    data = tmp_path / "batch.npz"
    np.savez(data, tokens=tokens, segments=segments, positions=positions, want=want)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, directory, str(data), str(int(family == "gpt_neox"))],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
