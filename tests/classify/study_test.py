"""The translation_match study gin end to end at toy scale: the adaptive LM stage, ICL and
adaptive PBFT runs, the report table, a rerun that skips everything, and a changed method
refused. The pretraining stage is the same `adaptive.run_stage` on another LM task; it is left
out here (the runs start from scratch) because each LM stage costs tens of seconds of XLA
compilation on a shared CPU."""

import os

import pytest

from ft_scaling import files
from ft_scaling.classify import main as classify_main
from ft_scaling.classify import study
from ft_scaling.config import flags
from ft_scaling.train import checkpoints

STUDY_GIN = "gin/classify/studies/translation_match.gin"
# The toy scale: the shared TINY model (tests/classify/conftest.py), 2 examples per class, a
# few LM steps, short rows and evaluation sets.
BINDINGS = [
    "ModelConfig.num_layers = 1",
    "ModelConfig.num_heads = 2",
    "ModelConfig.head_dim = 8",
    "ModelConfig.embed_dim = 16",
    "ModelConfig.mlp_dim = 32",
    "ClassifyStudy.pretrain = None",
    "ADAPTIVE_STEPS = 2",
    "adaptive/LMStage.batch_size = 4",
    "adaptive/LMStage.length = 32",
    "adaptive/LMStage.eval_examples = 8",
    "PER_CLASS = (2,)",
    "SEEDS = (0,)",
    "FT_STEPS = 2",
    "SHOTS = 1",
    "EVAL_EXAMPLES = 8",
    "METHODS = [@icl/MethodSpec(), @adaptive_pbft_fmt/MethodSpec()]",
    "RunSettings.field_tokens = 8",
    "RunSettings.sequence_length = 48",
    "RunSettings.icl_sequence_length = 160",
    "RunSettings.batch_size = 4",
    "RunSettings.eval_batch_size = 8",
]


def _study(extra=()):
    flags.parse_gin([STUDY_GIN], [*BINDINGS, *extra])
    return study.ClassifyStudy()


def test_study_runs_resumes_and_reports(tmp_path):
    out = str(tmp_path / "study")
    flags_ = [
        f"--gin.{key.strip()}={value.strip()}"
        for key, value in (binding.split("=", 1) for binding in BINDINGS)
    ]
    assert classify_main.main(["study", f"--gin_file={STUDY_GIN}", f"--out={out}", *flags_]) == 0
    assert "ClassifyStudy.pretrain = None" in open(os.path.join(out, "config.gin")).read()
    assert os.path.exists(os.path.join(out, "adaptive", "summary.json"))
    report = open(os.path.join(out, "report.md")).read()
    assert "| method | kind | tuning | base | 2/class |" in report
    assert "| adaptive_pbft_fmt | pbft | fmt | adaptive | " in report
    assert "stage `adaptive`: 2 LM steps" in report

    again = study.run_study(_study(), out)
    assert (again["skipped"], again["finished"]) == (2, 0)
    with pytest.raises(checkpoints.CheckpointError, match="adaptive_pbft_fmt_k2_seed0"):
        study.run_study(_study(["FT_STEPS = 3"]), out)
    with pytest.raises(files.FingerprintError, match="another configuration"):
        study.run_study(_study(["EVAL_EXAMPLES = 16"]), out)

    assert classify_main.main(["report", out]) == 0
    assert open(os.path.join(out, "results.csv")).read().count("translation_match") == 2


def test_cli_usage_errors():
    assert classify_main.main([]) == 2
    assert classify_main.main(["study", "--out=/tmp/x"]) == 2


@pytest.mark.parametrize("task, ood", [("mnli", "mnli_mismatched"), ("cola", "cola_ood")])
def test_glue_task_gins_override_the_study_settings(task, ood):
    flags.parse_gin([STUDY_GIN, f"gin/classify/tasks/{task}.gin"], [])
    spec = study.ClassifyStudy()
    assert (spec.settings.task, spec.settings.ood_set) == (task, ood)
    assert spec.settings.pattern.startswith(task) and len(spec.methods) == 7
