"""N trainer steps per method: frozen leaves stay bit-identical, optimizer state covers only the
trainable leaves, and the finetuning loss falls."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.methods import base

# Trainable leaves of the tiny 2-block model (conftest.TINY) for each method of conftest.TRAINED:
# prompt 1; LoRA 2 factors x 7 projections x 2 blocks; BitFit 2 norms x 2 blocks + final norm;
# freeze top-1: 7 kernels + 2 norms of layers_1 + final norm; full: embedding + final norm + 2 x 9.
TRAINABLE_LEAVES = {"prompt": 1, "lora": 28, "bitfit": 5, "freeze": 10, "full": 20}


@pytest.mark.parametrize("name", ["prompt", "lora", "bitfit", "freeze"])
def test_frozen_leaves_are_bit_identical_after_training(name, trained):
    run = trained(name)
    mask = traverse_util.flatten_dict(run["mask"])
    initial = traverse_util.flatten_dict(run["initial"])
    final = traverse_util.flatten_dict(run["final"])
    assert set(final) == set(initial) == set(mask)
    frozen = [p for p, keep in mask.items() if not keep]
    assert len(frozen) == len(mask) - TRAINABLE_LEAVES[name] > 0
    for path in frozen:
        np.testing.assert_array_equal(np.asarray(final[path]), initial[path], err_msg=str(path))
    moved = [p for p, keep in mask.items() if keep and not np.array_equal(final[p], initial[p])]
    assert len(moved) == TRAINABLE_LEAVES[name]


@pytest.mark.parametrize("name", sorted(TRAINABLE_LEAVES))
def test_optimizer_state_covers_only_trainable_leaves(name, trained):
    run = trained(name)
    state = run["state"]
    params = jax.tree.leaves(state.params)
    assert len(params) == TRAINABLE_LEAVES[name]
    trainable_scalars = base.trainable_param_count(run["method"], run["final"])
    assert sum(int(p.size) for p in params) == trainable_scalars
    # AdamW keeps two moments per trainable leaf; its step count is the only scalar.
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert len(moments) == 2 * TRAINABLE_LEAVES[name]
    assert sum(int(x.size) for x in moments) == 2 * trainable_scalars


@pytest.mark.parametrize("name", sorted(TRAINABLE_LEAVES))
def test_each_method_reduces_the_finetuning_loss(name, trained):
    losses = trained(name)["losses"]
    assert np.isfinite(losses).all()
    # 20 AdamW steps on the counting task; prompt tuning moves least (5 vectors, random base).
    assert losses[-1] < 0.95 * losses[0], losses
