"""Reading slices of tensors from a Hugging Face checkpoint directory, never whole files.

    model.safetensors                       one file
    model.safetensors.index.json            {"weight_map": {tensor name: shard file}}
    model-0000K-of-0000N.safetensors        the shards
    pytorch_model.bin[.index.json]          older revisions: torch pickles (needs torch)

safetensors files are memory-mapped (`safe_open(...).get_slice`): reading rows [a, b) of a
tensor touches only those bytes. numpy cannot hold bfloat16, so BF16 tensors are sliced through
the 'flax' framework on the host CPU device. Every slice is returned as float32 numpy.
"""

import contextlib
import json
import os

import jax
import numpy as np

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete or does not match its config."""


class CheckpointFiles(contextlib.AbstractContextManager):
    """The tensors of one checkpoint directory: names, shapes and slices.

    Use as a context manager; files are opened lazily and closed on exit.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.weight_map, self.torch_format = _weight_map(directory)
        self._open: dict[str, object] = {}
        self._stack = contextlib.ExitStack()

    def __exit__(self, *exc):
        self._stack.close()
        self._open.clear()

    def names(self) -> set[str]:
        return set(self.weight_map)

    def _handle(self, name: str):
        if name not in self.weight_map:
            raise CheckpointError(
                f"tensor {name!r} is missing from the checkpoint in {self.directory} "
                f"(files: {sorted(set(self.weight_map.values()))})"
            )
        file = self.weight_map[name]
        if file not in self._open:
            path = os.path.join(self.directory, file)
            if not os.path.exists(path):
                raise CheckpointError(f"shard file {file} (listed in the index) is missing: {path}")
            self._open[file] = self._stack.enter_context(_open(path, self.torch_format))
        return self._open[file]

    def shape(self, name: str) -> tuple[int, ...]:
        handle = self._handle(name)
        if self.torch_format:
            return tuple(handle[name].shape)
        return tuple(handle.get_slice(name).get_shape())

    def read(self, name: str, ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
        """float32 block [lo:hi, ...] of tensor `name`, one (lo, hi) per dim."""
        index = tuple(slice(lo, hi) for lo, hi in ranges)
        handle = self._handle(name)
        if self.torch_format:
            return handle[name][index].float().numpy()
        bf16 = handle.get_slice(name).get_dtype() == "BF16"
        # A mapping of its own, closed at once: pages read through a mapping that stays open
        # count as resident until it closes, so the cached handle (shapes, dtypes) would
        # come to hold every byte of the file besides the params made from them.
        path = os.path.join(self.directory, self.weight_map[name])
        if not bf16:
            with _safe_open(path, "numpy") as fresh:
                return np.array(fresh.get_slice(name)[index], np.float32)
        # The host CPU, not an accelerator: slices only pass through on their way to their
        # devices.
        with jax.default_device(jax.devices("cpu")[0]), _safe_open(path, "flax") as fresh:
            return np.array(fresh.get_slice(name)[index], np.float32)


def _safe_open(path: str, framework: str):
    import safetensors  # noqa: PLC0415  (only this module needs it)

    return safetensors.safe_open(path, framework=framework)


@contextlib.contextmanager
def _open(path: str, torch_format: bool):
    if not torch_format:
        with _safe_open(path, "numpy") as handle:
            yield handle
        return
    try:
        import torch  # noqa: PLC0415  (optional: only old pickled checkpoints need it)
    except ImportError as error:
        raise CheckpointError(
            f"{path} is a torch pickle (pytorch_model.bin) and torch is not installed; "
            "install torch, or use a revision with safetensors"
        ) from error
    # weights_only: a pickle can run code; this refuses anything but tensors. mmap: slices
    # are read from disk on demand.
    yield torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _weight_map(directory: str) -> tuple[dict[str, str], bool]:
    """{tensor name: file} and whether the files are torch pickles."""
    for index_name, torch_format in ((SAFETENSORS_INDEX, False), (TORCH_BIN_INDEX, True)):
        index_path = os.path.join(directory, index_name)
        if os.path.exists(index_path):
            with open(index_path) as f:
                return dict(json.load(f)["weight_map"]), torch_format
    single = os.path.join(directory, SAFETENSORS)
    if os.path.exists(single):
        with _safe_open(single, "numpy") as handle:
            return {name: SAFETENSORS for name in handle.keys()}, False  # noqa: SIM118
    if os.path.exists(os.path.join(directory, TORCH_BIN)):
        with _open(os.path.join(directory, TORCH_BIN), True) as state:
            return {name: TORCH_BIN for name in state}, True
    raise CheckpointError(
        f"no weights in {directory}: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {TORCH_BIN} "
        f"or {TORCH_BIN_INDEX}"
    )
