"""What a run no longer pays per run keeps its meaning: in-memory train batches (an epoch is a
permutation, a resumed stream is the same stream), the host table of learning rates (the
schedule's values), and the init of only the leaves a base lacks (the full init's values)."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from ft_scaling.methods import lora, prompt
from ft_scaling.models import configs, decoder
from ft_scaling.train import input_pipeline, optimizers, partitioning, trainer

ROWS, BATCH = 10, 4


def _columns():
    ids = np.arange(ROWS, dtype=np.int32)
    return {"id": ids, "tokens": np.stack([ids * 100 + j for j in range(3)], axis=1)}


def _stream(batches, count):
    return np.concatenate([next(batches)["id"] for _ in range(count)])


def test_each_epoch_is_a_permutation_and_batches_run_across_epoch_ends():
    ids = _stream(input_pipeline.ShuffledBatches(_columns(), BATCH, seed=3), 5)  # 20 rows
    assert sorted(ids[:ROWS]) == list(range(ROWS))
    assert sorted(ids[ROWS:]) == list(range(ROWS))
    assert not np.array_equal(ids[:ROWS], ids[ROWS:])  # reshuffled each epoch
    rows = next(input_pipeline.ShuffledBatches(_columns(), BATCH, seed=3))
    np.testing.assert_array_equal(rows["tokens"][:, 1], rows["id"] * 100 + 1)  # rows kept whole


def test_a_resumed_stream_is_the_uninterrupted_stream():
    whole = _stream(input_pipeline.ShuffledBatches(_columns(), BATCH, seed=1), 9)
    for position in (1, 2, 3, 7):
        resumed = input_pipeline.ShuffledBatches(_columns(), BATCH, seed=1, position=position)
        np.testing.assert_array_equal(_stream(resumed, 9 - position), whole[position * BATCH :])


def test_seeds_give_other_orders_and_empty_columns_are_refused():
    first = _stream(input_pipeline.ShuffledBatches(_columns(), BATCH, seed=0), 5)
    other = _stream(input_pipeline.ShuffledBatches(_columns(), BATCH, seed=1), 5)
    assert not np.array_equal(first, other)
    with pytest.raises(ValueError, match="cannot batch 0 examples"):
        input_pipeline.ShuffledBatches({"id": np.zeros(0, np.int32)}, BATCH, seed=0)


@pytest.mark.parametrize("kind", optimizers.SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 3])
def test_rate_table_holds_the_schedule(kind, warmup):
    schedule = optimizers.schedule(0.3, 37, kind, warmup, 0.1)
    table = optimizers.RateTable(schedule, 37)
    assert table(0).dtype == np.float32
    # rsqrt after a warmup divides by zero at step 0 evaluated alone (the join's unused branch)
    start = 1 if kind == "rsqrt" and warmup else 0
    expected = [float(schedule(step)) for step in range(start, 38)]
    np.testing.assert_allclose([table(s) for s in range(start, 38)], expected, rtol=1e-6)
    np.testing.assert_allclose(table(50), float(schedule(50)), rtol=1e-6)  # past the end


@pytest.mark.parametrize(
    "method", [lora.LoRA(rank=4, alpha=4.0), prompt.PromptTuning(prompt_length=4)], ids=str
)
def test_init_of_the_method_leaves_alone_equals_the_full_init(method):
    config = configs.ModelConfig(vocab_size=128, num_layers=2, embed_dim=32, mlp_dim=64)
    model = method.wrap(decoder.Decoder(config))
    mesh, rng = partitioning.make_mesh(), jax.random.PRNGKey(7)
    full = traverse_util.flatten_dict(trainer.init_params(model, rng, 8, mesh, ()))
    paths = [p for p in full if method.is_method_param(p)]
    only = traverse_util.flatten_dict(trainer.init_params(model, rng, 8, mesh, (), paths))
    assert sorted(only) == sorted(paths) and paths
    for path in paths:
        np.testing.assert_array_equal(np.asarray(only[path]), np.asarray(full[path]))
        assert only[path].sharding == full[path].sharding
    assert trainer.init_params(model, rng, 8, mesh, (), []) == {}
    with pytest.raises(KeyError, match="no params"):
        trainer.init_params(model, rng, 8, mesh, (), [("nope",)])
