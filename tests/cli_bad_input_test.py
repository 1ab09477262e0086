"""Bad input through the CLI: one line naming the key or file, a non-zero exit, no file touched.

Every case runs `ft_scaling.cli.main(argv)` -- what `ft-scaling ...` runs -- in a subprocess,
and asserts its exit code, exactly one `ft-scaling <cmd>: error: ...` line on stderr naming
the key (or file) at fault, no traceback, and that every file of the run directory it names
is unchanged (hashed before and after; a fresh MODEL_DIR must not even be created). Importing
TensorFlow costs seconds per process, so the cases share one driver process (this file run as
a script); a few also run alone as `python -m ft_scaling.cli`, to check the process's own exit
code. The run directories the cases reuse are made first by real `ft-scaling train` runs: a
finished pretraining run and a finished LoRA run (each a few seconds on tiny_0).
"""

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.train import run_dirs  # noqa: E402

PRETRAIN = [
    "train",
    "--gin_file=t5x_configs/models/tiny_0.gin",
    "--gin_file=t5x_configs/runs/pretrain.gin",
    "--gin.MIXTURE_OR_TASK_NAME='debian_l10n_pretrain_en_de'",
    "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
    "--gin.BATCH_SIZE=8",
    "--gin.TRAIN_STEPS=2",
    "--gin.MAX_EPOCHS=None",  # an epoch's length is counted by reading the packed split
    "--gin.EVAL_EVERY=0",
    "--gin.SAVE_EVERY=2",
    "--gin.train.eval_examples=16",
]
LORA = [
    "train",
    "--gin_file=t5x_configs/models/tiny_0.gin",
    "--gin_file=t5x_configs/runs/finetune.gin",
    "--gin_file=gin/methods/lora.gin",
    "--gin.MIXTURE_OR_TASK_NAME='debian_l10n_translate_en_de'",
    "--gin.INITIAL_CHECKPOINT_PATH=None",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
    "--gin.BATCH_SIZE=8",
    "--gin.TRAIN_STEPS=2",
    "--gin.EVAL_EVERY=0",
    "--gin.SAVE_EVERY=2",
    "--gin.TEST_SPLIT=None",
    "--gin.train.eval_examples=16",
]
# A run directory a case reuses: made by `ft-scaling train` with these flags, then `edit`ed.
FIXTURES = {"finished": PRETRAIN, "lora": LORA}


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: argv (MODEL_DIR added for train), expected code and message parts."""

    name: str
    argv: tuple[str, ...]
    names: tuple[str, ...]  # all of these appear in the error line
    run_dir: str = "fresh"  # 'fresh' (a new MODEL_DIR), or a directory made by `_directories`
    code: int = 1
    command: str = "train"

    def full_argv(self, root: str) -> list[str]:
        argv = [a.replace("{root}", root) for a in self.argv]
        if self.command == "train":
            argv.append(f"--gin.MODEL_DIR='{self.model_dir(root)}'")
        return argv

    def model_dir(self, root: str) -> str:
        if self.run_dir == "fresh":
            return os.path.join(root, "fresh", self.name)
        return os.path.join(root, self.run_dir)


def _pre(*flags):
    return (*PRETRAIN, *flags)


def _lora(*flags):
    return (*LORA, *flags)


CASES = [
    # Types and ranges of the run macros, in a fresh MODEL_DIR (which must stay absent).
    Case("train_steps_float", _pre("--gin.TRAIN_STEPS=2.5"), ("TRAIN_STEPS", "2.5", "integer")),
    Case("train_steps_text", _pre("--gin.TRAIN_STEPS='abc'"), ("TRAIN_STEPS", "'abc'")),
    Case("train_steps_zero", _pre("--gin.TRAIN_STEPS=0"), ("TRAIN_STEPS", ">= 1")),
    Case("train_steps_negative", _pre("--gin.TRAIN_STEPS=-3"), ("TRAIN_STEPS", "-3")),
    Case("lr_negative", _pre("--gin.LEARNING_RATE=-0.1"), ("LEARNING_RATE", "-0.1", "> 0")),
    Case("lr_infinite", _pre("--gin.LEARNING_RATE=1e999"), ("LEARNING_RATE", "inf", "finite")),
    Case("lr_text", _pre("--gin.LEARNING_RATE='fast'"), ("LEARNING_RATE", "'fast'")),
    Case("batch_zero", _pre("--gin.BATCH_SIZE=0"), ("BATCH_SIZE", ">= 1")),
    Case("batch_float", _pre("--gin.BATCH_SIZE=4.5"), ("BATCH_SIZE", "4.5", "integer")),
    Case("log_every_zero", _pre("--gin.LOG_EVERY=0"), ("LOG_EVERY", ">= 1")),
    Case("save_every_negative", _pre("--gin.SAVE_EVERY=-1"), ("SAVE_EVERY", ">= 0")),
    Case("eval_every_negative", _pre("--gin.EVAL_EVERY=-5"), ("EVAL_EVERY", ">= 0")),
    Case("max_epochs_zero", _pre("--gin.MAX_EPOCHS=0"), ("MAX_EPOCHS", "> 0")),
    Case("max_epochs_negative", _pre("--gin.MAX_EPOCHS=-1"), ("MAX_EPOCHS", "-1")),
    Case("max_epochs_text", _pre("--gin.MAX_EPOCHS='all'"), ("MAX_EPOCHS", "'all'")),
    Case("warmup_negative", _pre("--gin.WARMUP_STEPS=-1"), ("WARMUP_STEPS", ">= 0")),
    Case("seed_float", _pre("--gin.SEED=1.5"), ("SEED", "1.5")),
    Case("pack_int", _pre("--gin.PACK=1"), ("PACK", "True or False")),
    Case(
        "lengths_zero", _pre("--gin.TASK_FEATURE_LENGTHS={'targets': 0}"), ("TASK_FEATURE_LENGTHS",)
    ),
    Case("lengths_int", _pre("--gin.TASK_FEATURE_LENGTHS=32"), ("TASK_FEATURE_LENGTHS", "32")),
    Case(
        "lengths_keys",
        _pre("--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 32}"),
        ("TASK_FEATURE_LENGTHS", "'targets'", "debian_l10n_pretrain_en_de"),
    ),
    Case("unknown_task", _pre("--gin.MIXTURE_OR_TASK_NAME='nope'"), ("'nope'", "registered")),
    Case("model_field_typo", _pre("--gin.ModelConfig.num_layerz=3"), ("num_layerz",)),
    Case("model_layers_float", _pre("--gin.ModelConfig.num_layers=2.5"), ("num_layers", "2.5")),
    Case("optimizer_kind", _pre("--gin.train.optimizer_kind='adam'"), ("optimizer_kind", "'adam'")),
    Case("schedule_kind", _pre("--gin.train.schedule_kind='linear'"), ("schedule_kind",)),
    Case("budget_fraction", _pre("--gin.train.budget_fraction=1.5"), ("budget_fraction", "1.5")),
    Case("keep_zero", _pre("--gin.train.keep_checkpoints=0"), ("keep_checkpoints",)),
    Case("clip_negative", _pre("--gin.train.clip_norm=-1.0"), ("clip_norm", "-1.0")),
    Case(
        "microbatches",
        _pre("--gin.train.num_microbatches=3"),
        ("BATCH_SIZE=8", "num_microbatches=3"),
    ),
    Case("mesh_divides", _pre("--gin.mesh_shape.shape=(3, 1, 1)"), ("divide",)),
    Case("gin_file_missing", ("train", "--gin_file=nope.gin"), ("nope.gin",)),
    Case("model_dir_unset", PRETRAIN, ("MODEL_DIR", "required"), command="train_no_model_dir"),
    Case("malformed_flag", _pre("--gin.TRAIN_STEPS"), ("--gin.TRAIN_STEPS", "KEY=VALUE")),
    Case(
        "initial_checkpoint_missing",
        _lora("--gin.INITIAL_CHECKPOINT_PATH='/nonexistent/base'"),
        ("INITIAL_CHECKPOINT_PATH", "/nonexistent/base"),
    ),
    Case("finetune_examples_zero", _lora("--gin.FINETUNE_EXAMPLES=0"), ("FINETUNE_EXAMPLES",)),
    Case("lora_rank_too_large", _lora("--gin.LORA_RANK=1000"), ("LORA_RANK", "1000")),
    Case("lora_rank_float", _lora("--gin.LORA_RANK=2.5"), ("LORA_RANK", "2.5")),
    Case("lora_targets", _lora("--gin.LORA_TARGETS=['nomatch']"), ("nomatch", "match no module")),
    # A finished run rerun with another configuration: refused by name, nothing changed.
    Case(
        "rerun_train_steps", _pre("--gin.TRAIN_STEPS=4"), ("TRAIN_STEPS=4", "2 steps"), "finished"
    ),
    Case("rerun_batch", _pre("--gin.BATCH_SIZE=4"), ("batch_size", "saved 8, now 4"), "finished"),
    Case("rerun_lr", _pre("--gin.LEARNING_RATE=0.02"), ("learning_rate", "0.02"), "finished"),
    Case("rerun_lr_negative", _pre("--gin.LEARNING_RATE=-1.0"), ("LEARNING_RATE",), "finished"),
    Case(
        "fingerprint_truncated",
        PRETRAIN,
        ("run_fingerprint.json", "not valid JSON"),
        "finished_truncated_fingerprint",
    ),
    Case(
        "lora_rank_without_fingerprint",
        _lora("--gin.LORA_RANK=8"),
        ("lora_a", "(32, 4)", "(32, 8)", "does not match this model"),
        "lora_deleted_fingerprint",
    ),
    # Other commands.
    Case(
        "fit_duplicated_rows",
        ("fit", "{root}/results/dup.csv", "--out={root}/results/fit"),
        ("dup.csv", "duplicated rows", "data rows 1 and 3"),
        "results",
        code=2,  # fit's code for bad input (fit_cli)
        command="fit",
    ),
    Case(
        "fit_missing_csv",
        ("fit", "{root}/results/none.csv", "--out={root}/results/fit"),
        ("none.csv",),
        "results",
        code=2,
        command="fit",
    ),
    Case(
        "study_unknown_parameter",
        (
            "study",
            "--gin_file=tests/study/micro_study.gin",
            "--out={root}/study",
            "--gin.Study.seedz=1",
        ),
        ("seedz",),
        "study",
        command="study",
    ),
]
# Also run alone (issue 19 saw the LoRA case end in 'ImportError: sys.meta_path is None').
DIRECT = (
    "train_steps_float",
    "rerun_train_steps",
    "lora_rank_without_fingerprint",
    "fit_duplicated_rows",
)


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def _directories(root: str) -> None:
    """The run directories the cases reuse (real `ft-scaling train` runs, then edited)."""
    runs = [
        [name, [*argv, f"--gin.MODEL_DIR='{os.path.join(root, name)}'"]]
        for name, argv in FIXTURES.items()
    ]
    for name, (code, stderr) in _run_driver(root, "fixtures", runs).items():
        assert code == 0, (name, stderr[-3000:])
    truncated = os.path.join(root, "finished_truncated_fingerprint")
    shutil.copytree(os.path.join(root, "finished"), truncated)
    with open(os.path.join(truncated, "run_fingerprint.json"), "r+") as f:
        f.truncate(40)
    deleted = os.path.join(root, "lora_deleted_fingerprint")
    shutil.copytree(os.path.join(root, "lora"), deleted)
    os.remove(os.path.join(deleted, "run_fingerprint.json"))
    os.makedirs(os.path.join(root, "results"))
    row = (
        "task,method,model_params,pretrain_tokens,trainable_params,finetune_examples,seed,test_loss"
    )
    lines = [row, "t,lora,10,5,2,32,0,2.5", "t,lora,10,5,2,64,0,2.2", "t,lora,10,5,2,32,0,2.5"]
    with open(os.path.join(root, "results", "dup.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.makedirs(os.path.join(root, "study"))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{case name: (exit code, stderr, digest before, digest after)} of every case."""
    root = str(tmp_path_factory.mktemp("cli_bad_input"))
    _directories(root)
    before = {c.name: run_dirs.tree_digest(c.model_dir(root)) for c in CASES}
    results = _run_driver(root, "cases", [[c.name, c.full_argv(root)] for c in CASES])
    after = {c.name: run_dirs.tree_digest(c.model_dir(root)) for c in CASES}
    return root, {n: (*results[n], before[n], after[n]) for n in results}


def _run_driver(root: str, label: str, cases: list) -> dict[str, tuple[int, str]]:
    """{name: (exit code, stderr)} of `cases` ([name, argv]) run by one driver process."""
    cases_file = os.path.join(root, f"{label}.json")
    results_file = os.path.join(root, f"{label}_results.json")
    with open(cases_file, "w") as f:
        json.dump(cases, f)
    cmd = [sys.executable, os.path.abspath(__file__), cases_file, results_file]
    out = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(results_file) as f:
        return json.load(f)


def _error_lines(stderr: str, command: str) -> list[str]:
    prefix = f"ft-scaling {command}: error: "
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


def _without_addresses(lines: list[str]) -> list[str]:
    """Gin names the configurable with its object address, which differs between processes."""
    return [re.sub(r" at 0x[0-9a-f]+", "", line) for line in lines]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_one_named_error_and_changes_nothing(case, outcomes):
    _, results = outcomes
    code, stderr, before, after = results[case.name]
    command = case.command.split("_")[0]
    assert code == case.code, stderr[-2000:]
    lines = _error_lines(stderr, command)
    assert len(lines) == 1, stderr[-2000:]
    for name in case.names:
        assert name in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert run_dirs.changed(before, after) == []


@pytest.mark.parametrize("name", DIRECT)
def test_the_process_exits_non_zero_with_the_same_line(name, outcomes):
    root, results = outcomes
    case = next(c for c in CASES if c.name == name)
    before = run_dirs.tree_digest(case.model_dir(root))
    cmd = [sys.executable, "-m", "ft_scaling.cli", *case.full_argv(root)]
    out = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == case.code
    alone, driven = (_error_lines(err, case.command) for err in (out.stderr, results[name][1]))
    assert _without_addresses(alone) == _without_addresses(driven)
    assert "Traceback" not in out.stderr and "sys.meta_path" not in out.stderr
    assert run_dirs.changed(before, run_dirs.tree_digest(case.model_dir(root))) == []


def _drive(cases_file: str, results_file: str) -> None:
    """Runs each case's argv through ft_scaling.cli.main in this process; records the exit
    code and what the case wrote to stderr (Python's; TensorFlow's C++ logs are off)."""
    from ft_scaling import cli

    with open(cases_file) as f:
        cases = json.load(f)
    results = {}
    for name, argv in cases:
        captured = io.StringIO()
        with contextlib.redirect_stderr(captured):
            try:
                code = cli.main(argv)
            except SystemExit as exit_:  # argparse and the study's usage errors
                code = exit_.code if isinstance(exit_.code, int) else 1
                if not isinstance(exit_.code, int):
                    captured.write(f"{exit_.code}\n")
        results[name] = (code, captured.getvalue())
    with open(results_file, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    _drive(*sys.argv[1:])
