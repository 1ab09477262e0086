"""Run settings: the one stop rule, the checks made before any step, the resume fingerprint."""

import pytest

from ft_scaling.methods import base
from ft_scaling.models import configs
from ft_scaling.train import input_pipeline, optimizers, settings

SPEC = input_pipeline.InputSpec("test_bytes_lm", {"targets": 32}, batch_size=8)


def _settings(**changes) -> settings.RunSettings:
    fields = dict(
        model_dir="/tmp/unused",
        model_config=configs.ModelConfig(),
        method=base.Method(),
        spec=SPEC,
        stop=settings.StopRule(10),
        schedule=settings.Schedule(1e-3),
        optimizer=optimizers.OptimizerSettings(),
        loop=settings.LoopSettings(),
    )
    return settings.RunSettings(**{**fields, **changes})


def test_stop_rule_stops_at_the_budget_fraction_of_the_schedule():
    assert settings.StopRule(10).steps(SPEC) == (10, 10)
    assert settings.StopRule(10, budget_fraction=0.5).steps(SPEC) == (10, 5)
    assert settings.StopRule(10, budget_fraction=0.34).steps(SPEC) == (10, 4)  # ceil
    assert settings.StopRule(10, budget_fraction=0.01).steps(SPEC) == (10, 1)  # at least one


def test_stop_rule_refuses_bad_values_by_name():
    with pytest.raises(ValueError, match="TRAIN_STEPS=0"):
        settings.StopRule(0)
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError, match="budget_fraction"):
            settings.StopRule(10, budget_fraction=fraction)


def test_batch_must_split_into_microbatches():
    with pytest.raises(ValueError, match="BATCH_SIZE=8 is not a multiple of num_microbatches=3"):
        _settings(loop=settings.LoopSettings(num_microbatches=3))


def test_fingerprint_keeps_the_keys_of_existing_run_directories():
    fingerprint = _settings(finetune_examples=25).fingerprint()
    assert sorted(fingerprint) == sorted(
        [
            "model",
            "method",
            "task",
            "feature_lengths",
            "batch_size",
            "pack",
            "seed",
            "finetune_examples",
            "learning_rate",
            "optimizer",
            "schedule",
            "warmup_steps",
            "initial_checkpoint_path",
        ]
    )
    assert fingerprint["finetune_examples"] == 25 and fingerprint["optimizer"] == "adafactor"
    # Cadence and retention may change between a run and its resume; the schedule may not.
    assert (
        _settings(loop=settings.LoopSettings(eval_every=7)).fingerprint()
        == _settings().fingerprint()
    )
    assert _settings(schedule=settings.Schedule(2e-3)).fingerprint() != _settings().fingerprint()
