"""Study expansion: the paper's three axes, stable run ids, worker splits, bad studies."""

import pytest

from ft_scaling.config import flags
from ft_scaling.study import sweep


def _demo(*bindings) -> sweep.Study:
    flags.parse_gin(["gin/studies/demo.gin"], list(bindings))
    return sweep.Study()


def test_demo_expands_to_the_three_axes():
    runs = sweep.expand(_demo(), "/out")
    pretrain = [r for r in runs if r.kind == "pretrain"]
    finetune = [r for r in runs if r.kind == "finetune"]
    assert [r.record["model_name"] for r in pretrain] == ["tiny_0", "tiny_1", "tiny_2", "tiny_3"]
    assert runs[: len(pretrain)] == pretrain  # pretraining first
    # model axis: 4 models x 3 methods x 5 D_f; pretraining axis: 2 intermediate checkpoints of
    # tiny_0 x 3 methods x 5; PET axis: two extra sizes for prompt and for LoRA x 5.
    assert len(finetune) == 4 * 3 * 5 + 2 * 3 * 5 + 2 * 2 * 5
    tokens = {r.record["pretrain_tokens"] for r in finetune if r.record["model_name"] == "tiny_0"}
    assert tokens == {50 * 1024, 100 * 1024, 200 * 1024}
    pet = {(r.record["method"], r.record["pet_size"]) for r in finetune}
    assert pet == {
        ("fmt", None),
        ("prompt", 4),
        ("prompt", 8),
        ("prompt", 16),
        ("lora", 4),
        ("lora", 8),
        ("lora", 16),
    }
    for run in finetune:
        assert (
            run.depends_on
            == pretrain[
                [p.record["model_name"] for p in pretrain].index(run.record["model_name"])
            ].run_id
        )


def test_run_ids_are_stable_and_unique():
    first = [r.run_id for r in sweep.expand(_demo(), "/out")]
    second = [r.run_id for r in sweep.expand(_demo(), "/elsewhere")]
    assert first == second and len(set(first)) == len(first)
    changed = [r.run_id for r in sweep.expand(_demo("SEEDS = (1,)"), "/out")]
    assert set(changed) & set(first) == {r for r in first[:4]}  # only pretraining runs shared


def test_workers_partition_the_runs():
    runs = sweep.expand(_demo(), "/out")
    parts = [sweep.assigned(runs, i, 3) for i in range(3)]
    ids = [r.run_id for part in parts for r in part]
    assert sorted(ids) == sorted(r.run_id for r in runs)
    with pytest.raises(ValueError, match="worker_index=3"):
        sweep.assigned(runs, 3, 3)


def test_bad_studies_fail_by_name():
    with pytest.raises(ValueError, match="no finetuning runs"):
        sweep.expand(_demo("SEEDS = ()"), "/out")
    with pytest.raises(ValueError, match="default_model 'nope'"):
        sweep.expand(_demo("Study.default_model = 'nope'"), "/out")
    with pytest.raises(ValueError, match="pretrain_checkpoints"):
        sweep.expand(_demo("tiny_0/BaseModel.pretrain_checkpoints = (100, 400)"), "/out")
