"""A checkpoint step's health, for `checkpoints.CheckpointStore`: is it readable, does it hold
this model, and where an unreadable one is put.

    tree_metadata(directory, step)     the saved state's array metadata, or None: a deleted or
                                       truncated _METADATA (or no state) is unreadable, which
                                       is a corrupt step, not another model
    param_differences(saved, expected) 'param a/b has shape (32, 4) in the checkpoint, the
                                       model expects (32, 8); ...' ('' when they match)
    set_aside(directory, steps)        MODEL_DIR/unreadable_checkpoints/<step>: out of orbax's
                                       sight, so the resumed run saves those steps anew (kept,
                                       not deleted: a read that failed once may not be corrupt)
    check_room(directory, step, state) a step that cannot fit fails before it is written
    kept_message(store)                what a stopped run leaves to resume from
"""

import logging

import jax
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils

from ft_scaling import files

log = logging.getLogger(__name__)

UNREADABLE_DIR = "unreadable_checkpoints"
SAVE_OVERHEAD_BYTES = 1 << 16  # a step's metadata files beside its arrays


def tree_metadata(directory: str, step: int) -> dict | None:
    """The tree of array metadata of `directory`/<step>/state, or None when unreadable."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        metadata = handler.metadata(files.path(directory) / str(step) / "state")
    except Exception:  # noqa: BLE001 - a deleted or truncated _METADATA reads as None
        return None
    finally:
        handler.close()
    tree = getattr(metadata, "tree", None)
    return tree if isinstance(tree, dict) and tree else None


def param_differences(saved: dict, expected: dict, limit: int = 5) -> str:
    """The params whose presence or shape differs, named with both shapes ('' if none)."""
    # A method's trainable split holds None for the frozen leaves: those are not stored.
    saved_flat = {k: v for k, v in traverse_util.flatten_dict(saved).items() if v is not None}
    expected_flat = {k: v for k, v in traverse_util.flatten_dict(expected).items() if v is not None}
    out = []
    for path in sorted(set(saved_flat) | set(expected_flat)):
        name, old, new = "/".join(path), saved_flat.get(path), expected_flat.get(path)
        if old is None:
            out.append(f"param {name} is not in the checkpoint (the model's: {tuple(new.shape)})")
        elif new is None:
            out.append(f"param {name} {tuple(old.shape)} of the checkpoint is not in the model")
        elif tuple(old.shape) != tuple(new.shape):
            out.append(
                f"param {name} has shape {tuple(old.shape)} in the checkpoint, the model "
                f"expects {tuple(new.shape)}"
            )
    more = f"; and {len(out) - limit} more" if len(out) > limit else ""
    return "; ".join(out[:limit]) + more


def set_aside(directory: str, steps: list[int]) -> None:
    """Moves `directory`/<step> of each step to MODEL_DIR/unreadable_checkpoints/ (process 0;
    the others wait for it). The caller reloads its orbax manager afterwards."""
    if jax.process_index() == 0:
        aside = files.path(directory).parent / UNREADABLE_DIR
        aside.mkdir(parents=True, exist_ok=True)
        for step in steps:
            source, target = files.path(directory) / str(step), aside / str(step)
            suffix = 0
            while target.exists():
                suffix += 1
                target = aside / f"{step}.{suffix}"
            log.warning("moving unreadable checkpoint %s to %s", source, target)
            source.rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ft_scaling.checkpoint_steps.set_aside")


def check_room(directory: str, step: int, state) -> None:
    """Raises files.DiskFullError, naming the step, when the local disk cannot hold it.

    Checked before orbax writes: an orbax save that runs out of space fails half way, and its
    aborted writes print tracebacks from their threads. The state's raw bytes bound the step.
    """
    needed = sum(x.nbytes for x in jax.tree.leaves(state)) + SAVE_OVERHEAD_BYTES
    files.check_free_space(directory, needed, f"checkpoint step {step}")


def kept_message(store) -> str:
    """The last good checkpoint of a `CheckpointStore`, for the error that stopped its run."""
    last = store.latest_step()
    if last is None:
        return f"There is no last good checkpoint: none was saved in {store.directory}."
    return f"The last good checkpoint (step {last}) in {store.directory} is intact."
