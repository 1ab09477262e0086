"""`load_pretrained`: a Hugging Face checkpoint -> (ModelConfig, params on their mesh shardings).

    path_or_id --resolve--> local directory (hub ids via snapshot_download, only when online)
    config.json --config_conversion--> ModelConfig
    jax.eval_shape(Decoder(config).init) --> our param paths, shapes, logical axes
      --partitioning rules + mesh--> a NamedSharding per param
    per param: jax.make_array_from_callback(shape, sharding, read_slice)
      read_slice(index) reads from the safetensors shard exactly the HF rows/columns that hold
      that device's slice (param_names.Source maps our dims onto the HF tensor's)

So no host ever holds a whole tensor it does not keep: each device's block is read from the
memory-mapped file, converted to float32 and placed. (GPT-NeoX's fused q/k/v are read as the
bounding block of the device's heads, at most 3x its slice, then the q, k or v rows are taken.)
Every checkpoint tensor must be used: a tensor we would not read is an error, except the
non-parameter buffers some checkpoints carry (param_names.IGNORED_SUFFIXES) and a tied model's
copy of the output layer.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from ft_scaling.models import configs, decoder
from ft_scaling.models.hf import config_conversion, param_names
from ft_scaling.models.hf.checkpoint_files import CheckpointError, CheckpointFiles
from ft_scaling.train import partitioning


def load_pretrained(
    path_or_id: str, mesh: Mesh | None = None, rules=None, **config_overrides
) -> tuple[configs.ModelConfig, dict]:
    """Loads a Hugging Face causal LM into our decoder's config and params.

    Args:
      path_or_id: a local HF directory, or a hub id 'org/name' or 'org/name@revision' (resolved
        with huggingface_hub.snapshot_download; needs a network).
      mesh: the ('data', 'fsdp', 'model') mesh to place params on; None = one device.
      rules: logical axis rules (partitioning.DEFAULT_RULES when None).
      **config_overrides: ModelConfig fields to set besides the checkpoint's (e.g. dtype).

    Returns:
      (config, params): `Decoder(config).apply({'params': params}, tokens)` gives the logits;
      params are float32 jax.Arrays sharded by the rules over the mesh.

    Raises:
      config_conversion.UnsupportedConfigError: architecture or config key not supported.
      CheckpointError: missing/unexpected tensors, wrong shapes, missing shard files.
    """
    directory = resolve(path_or_id)
    hf_config = read_config(directory)
    config = config_conversion.to_model_config(hf_config, **config_overrides)
    neox = config_conversion.architecture(hf_config) == "GPTNeoXForCausalLM"
    shardings, shapes = _param_layout(config, mesh, rules)
    with CheckpointFiles(directory) as files:
        sources = {
            path: param_names.source(path, len(shape), neox) for path, shape in shapes.items()
        }
        _check_tensors(files, sources, shapes, config)
        params = {
            path: jax.make_array_from_callback(
                shapes[path], shardings[path], _reader(files, sources[path], shapes[path])
            )
            for path in shapes
        }
    return config, traverse_util.unflatten_dict(params)


def read_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{directory} has no config.json (not a Hugging Face model dir)")
    with open(path) as f:
        return json.load(f)


def resolve(path_or_id: str, config_only: bool = False) -> str:
    """A local directory for a path or a hub id ('org/name[@revision]').

    `config_only` fetches only the JSON files of a hub id (config and tokenizer settings).
    """
    if os.path.isdir(path_or_id):
        return path_or_id
    repo, _, revision = path_or_id.partition("@")
    if os.path.exists(path_or_id) or repo.count("/") != 1 or repo.startswith(("/", ".")):
        raise CheckpointError(f"{path_or_id!r} is neither a directory nor a hub id 'org/name'")
    offline_hint = (
        f"cannot fetch the hub model {path_or_id!r}: no network here ({{why}}); only local "
        "directories in Hugging Face layout work offline. Download it where a network is "
        "(huggingface-cli download) and pass the directory."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise CheckpointError(offline_hint.format(why="HF_HUB_OFFLINE is set"))
    import huggingface_hub  # noqa: PLC0415  (only hub ids need it)

    try:
        return huggingface_hub.snapshot_download(
            repo,
            revision=revision or None,
            allow_patterns=_hub_patterns(repo, revision, config_only),
        )
    except (OSError, huggingface_hub.errors.HfHubHTTPError) as error:
        raise CheckpointError(
            offline_hint.format(why=f"{type(error).__name__}: {error}")
        ) from error


def _hub_patterns(repo: str, revision: str, config_only: bool) -> list[str]:
    """What to fetch: the JSON files, plus the safetensors weights, or the torch pickles of an
    older revision that has none (repos with both would otherwise be fetched twice)."""
    if config_only:
        return ["*.json"]
    import huggingface_hub  # noqa: PLC0415

    names = huggingface_hub.list_repo_files(repo, revision=revision or None)
    safetensors = any(name.endswith(".safetensors") for name in names)
    return ["*.json", "*.model", "*.txt", "*.safetensors" if safetensors else "pytorch_model*.bin"]


def _param_layout(config, mesh, rules):
    """({path: NamedSharding}, {path: shape}) of the decoder's params."""
    if mesh is None:
        mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
    rules = partitioning.DEFAULT_RULES if rules is None else rules
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    boxed = jax.eval_shape(
        lambda t: decoder.Decoder(config).init(jax.random.PRNGKey(0), t), tokens
    )["params"]
    shardings = traverse_util.flatten_dict(partitioning.param_shardings(boxed, mesh, rules))
    shapes = {
        path: tuple(leaf.shape)
        for path, leaf in traverse_util.flatten_dict(nn.meta.unbox(boxed)).items()
    }
    return shardings, shapes


def _check_tensors(files: CheckpointFiles, sources, shapes, config) -> None:
    """Every param has its tensor with the right shape; every tensor is used."""
    for path, src in sources.items():
        want = src.hf_shape(shapes[path])
        got = files.shape(src.name)
        if got != want:
            raise CheckpointError(
                f"tensor {src.name!r} has shape {got} in the checkpoint, but our parameter "
                f"{'/'.join(path)} {shapes[path]} needs {want} (config.json disagrees with "
                "the weights?)"
            )
    used = {src.name for src in sources.values()}
    allowed = {"lm_head.weight", "embed_out.weight"} if config.tie_embeddings else set()
    unused = sorted(
        name
        for name in files.names() - used - allowed
        if not name.endswith(param_names.IGNORED_SUFFIXES)
    )
    if unused:
        raise CheckpointError(
            f"checkpoint tensors this config would not load: {unused[:8]}"
            f"{' ...' if len(unused) > 8 else ''} ({len(unused)}); config.json and the weights "
            "disagree, or the architecture has parts the decoder lacks"
        )


def _reader(files: CheckpointFiles, src: param_names.Source, shape):
    def read(index):
        return read_block(files, src, shape, index)

    return read


def read_block(files: CheckpointFiles, src: param_names.Source, shape, index) -> np.ndarray:
    """Our array's block `index` (a tuple of slices), read from the HF tensor's matching part."""
    ranges = [np.arange(*s.indices(n)) for s, n in zip(index, shape, strict=True)]
    flat = [hf_indices(src, group, ranges, shape, j) for j, group in enumerate(src.groups)]
    bounds = tuple((int(f.min()), int(f.max()) + 1) for f in flat)
    block = files.read(src.name, bounds)
    block = block[np.ix_(*[f - lo for f, (lo, _) in zip(flat, bounds, strict=True)])]
    order = [d for group in src.groups for d in group]
    block = block.reshape([len(ranges[d]) for d in order])
    return np.ascontiguousarray(block.transpose(np.argsort(order)))


def hf_indices(src, group, ranges, shape, hf_dim: int) -> np.ndarray:
    """Flat HF indices along `hf_dim` of our index ranges of `group`, row-major over group."""
    grids = np.meshgrid(*[ranges[d] for d in group], indexing="ij")
    sizes = [shape[d] for d in group]
    if src.chunk and hf_dim == 0:  # fused [lead, count, rest...]: insert the chunk index
        chunk, count = src.chunk
        rest = int(np.prod(sizes[1:]))
        inner = np.ravel_multi_index(grids[1:], sizes[1:]) if len(group) > 1 else 0
        return (grids[0] * count * rest + chunk * rest + inner).reshape(-1)
    return np.ravel_multi_index(grids, sizes).reshape(-1)
