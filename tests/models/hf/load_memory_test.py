"""Peak host memory of importing a ~100M-parameter checkpoint: at most 1.3x the model's bytes.

The checkpoint (Llama-shaped, float32, two shards) is written here from numpy in the HF names
and layout; a fresh process imports it and reports its peak RSS growth (VmHWM after the load,
reset before it through /proc/self/clear_refs, minus VmRSS before it).
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.models import decoder
from ft_scaling.models.hf import config_conversion, param_names

safetensors_numpy = pytest.importorskip("safetensors.numpy")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# 12 x (4 x 768^2 + 3 x 768 x 2048) + 16384 x 768 (tied) = 97.5M parameters, 390 MB in float32.
HF_CONFIG = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    vocab_size=16384,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
    torch_dtype="float32",
)
SCRIPT = """
import json, sys
import jax
from ft_scaling.models.hf import load_pretrained

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

jax.numpy.ones(4).block_until_ready()  # the CPU backend up before measuring
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = status("VmRSS:")
config, params = load_pretrained(sys.argv[1])
jax.block_until_ready(params)
model_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
print(json.dumps({"growth": status("VmHWM:") - before, "model_bytes": model_bytes}))
"""


def write_checkpoint(directory: str, hf_config: dict, shards: int = 2) -> int:
    """Random float32 weights of `hf_config` in HF layout; returns the parameter count."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f)
    config = config_conversion.to_model_config(hf_config)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    abstract = jax.eval_shape(
        lambda t: decoder.Decoder(config).init(jax.random.PRNGKey(0), t), tokens
    )
    shapes = traverse_util.flatten_dict(nn.meta.unbox(abstract["params"]))
    hf_shapes = {}
    for path, shape in shapes.items():
        src = param_names.source(path, len(shape.shape), False)
        hf_shapes[src.name] = src.hf_shape(shape.shape)
    names, rng, weight_map = sorted(hf_shapes), np.random.default_rng(0), {}
    for shard, part in enumerate(np.array_split(names, shards)):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {n: rng.standard_normal(hf_shapes[n], dtype=np.float32) * 0.02 for n in part}
        safetensors_numpy.save_file(tensors, os.path.join(directory, file), {"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return sum(int(np.prod(s.shape)) for s in shapes.values())


@pytest.mark.slow
def test_peak_rss_growth_of_a_100m_import_is_at_most_1_3x_the_model(tmp_path):
    directory = str(tmp_path / "llama_100m")
    params = write_checkpoint(directory, HF_CONFIG)
    assert 95e6 < params < 105e6
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, directory],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["model_bytes"] == 4 * params
    ratio = result["growth"] / result["model_bytes"]
    assert ratio <= 1.3, (ratio, result)
