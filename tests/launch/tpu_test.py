"""`ft-scaling launch`: the printed gcloud commands, quoting against injection, the pod split.

gcloud is not installed here: --dry_run only builds argv, and the execution test replaces
subprocess.run. Each printed line is parsed back with shlex.split, as a shell would.
"""

import shlex
import subprocess
import sys

import pytest

from ft_scaling import cli
from ft_scaling.config import flags
from ft_scaling.study import sweep
from launch import remote, tpu

STUDIES = ("paper_wmt14_ende", "paper_wmt19_enzh", "paper_mlsum")
SUITE_STUDIES = ("pythia_wmt14_ende", "pythia_wmt19_enzh", "pythia_mlsum", "olmo2_wmt14_ende")
DANGER = "; rm -rf /"
BASE = ["--tpu=v4-64", "--zone=us-central2-b", "--out=/mnt/shared/study"]


def _dry_run(capsys, *argv) -> list[list[str]]:
    """`ft-scaling launch ... --dry_run` through the CLI dispatcher; its lines, split."""
    assert cli.main(["launch", *argv, "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    return [shlex.split(line) for line in lines]


def _option(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def _remote(argv: list[str]) -> list[str]:
    """The tokens the remote shell sees in an ssh --command=."""
    return shlex.split(_option(argv, "command"))


def _study_tokens(commands) -> list[list[str]]:
    """The remote `ft-scaling study` argv of every pod, in order."""
    runs = [_remote(c) for c in commands if c[4] == "ssh" and "study" in _remote(c)]
    return [tokens[tokens.index("-m") + 1 :] for tokens in runs]


@pytest.mark.parametrize("study", STUDIES + SUITE_STUDIES)
def test_dry_run_prints_the_gcloud_commands_of_a_study(study, capsys):
    gin_file = f"gin/studies/{study}.gin"
    commands = _dry_run(capsys, f"--gin_file={gin_file}", *BASE)
    verbs = [tuple(c[:5]) if c[0] == "gcloud" else tuple(c[:2]) for c in commands]
    tpu_vm = ("gcloud", "compute", "tpus", "tpu-vm")
    assert verbs == [
        ("git", "archive"),
        (*tpu_vm, "create"),
        (*tpu_vm, "scp"),
        (*tpu_vm, "ssh"),  # unpack
        (*tpu_vm, "ssh"),  # install
        (*tpu_vm, "ssh"),  # run the study
    ]
    name = "ft-scaling-" + study.replace("_", "-")
    assert _option(commands[1], "accelerator-type") == "v4-64"
    assert commands[1][5] == name and _option(commands[1], "zone") == "us-central2-b"
    for command in commands[2:]:
        assert _option(command, "worker") == "all"
    assert "pip install -q -e ./ft-scaling" in _option(commands[4], "command")
    run = _remote(commands[5])
    assert run[:4] == ["cd", "ft-scaling", "&&", "env"]
    assert "JAX_COORDINATOR_ADDRESS=auto" in run  # TPU multi-host (launch/tpu.py docstring)
    (study_argv,) = _study_tokens(commands)
    assert study_argv == [
        "ft_scaling.cli",
        "study",
        f"--gin_file={gin_file}",
        "--out=/mnt/shared/study",
        "--worker_index=0",
        "--num_workers=1",
    ]


def test_queued_resource_reuse_clone_and_delete(capsys):
    gin = "--gin_file=gin/studies/paper_wmt14_ende.gin"
    queued = _dry_run(capsys, gin, *BASE, "--queued", "--delete_after", "--project=my-proj")
    assert [c[4] for c in queued[1:3]] == ["create", "describe"]
    assert queued[1][3] == "queued-resources" and _option(queued[1], "project") == "my-proj"
    assert _option(queued[1], "runtime-version") == "tpu-ubuntu2204-base"
    assert queued[-1][3:5] == ["queued-resources", "delete"] and "--force" in queued[-1]
    reused = _dry_run(capsys, gin, *BASE, "--reuse", "--git_url=https://example.com/r.git")
    assert not any("create" in c for c in reused)
    clone = _remote(reused[0])
    assert clone[3:7] == ["&&", "git", "clone", "--quiet"]
    assert clone[clone.index("--") + 1] == "https://example.com/r.git"


def test_injected_gin_value_and_out_dir_stay_single_quoted_arguments(capsys):
    binding = f"--gin.PRETRAIN_TASK='x{DANGER}'"
    out = f"/mnt/out{DANGER}"
    commands = _dry_run(
        capsys, "--gin_file=gin/studies/paper_wmt14_ende.gin", *BASE[:2], f"--out={out}", binding
    )
    command = _option(commands[-1], "command")
    assert DANGER in command  # present, but only inside quotes:
    tokens = shlex.split(command)
    assert binding in tokens and f"--out={out}" in tokens
    assert ";" not in tokens and "rm" not in tokens
    assert shlex.quote(binding) in command
    # The separators the remote shell sees are only the launcher's own `&&`.
    assert [t for t in tokens if t in ("&&", ";", "|", "&", "||")] == ["&&"]


def test_suite_values_reach_the_study_as_given(capsys):
    """A local suite directory with spaces and a command substitution, and a tuple of
    revisions: one argument each on the remote shell (foreground and detached), and the study
    they configure finetunes from exactly that directory."""
    gin_file = "gin/studies/pythia_wmt14_ende.gin"
    suite = "/mnt/suites/pythia 1b $(touch /tmp/pwned)"
    given = [f"--gin.PYTHIA_1B='{suite}'", "--gin.PYTHIA_REVISIONS=('step48000', 'step96000')"]
    out = ["--out=gs://my-bucket/pythia", f"--store={STORE}", "--num_pods=2"]
    data = "gs://my-bucket/tensorflow datasets;$(id)"
    env = f"--env=TFDS_DATA_DIR={data}"
    foreground = _dry_run(
        capsys, f"--gin_file={gin_file}", *BASE[:2], *out, "--pod_index=1", env, *given
    )
    (study_argv,) = _study_tokens(foreground)
    assert study_argv[-2:] == given and "$(touch" not in _remote(foreground[-1])
    run = _remote(foreground[-1])
    assert run[4:6] == ["JAX_COORDINATOR_ADDRESS=auto", f"TFDS_DATA_DIR={data}"]
    detached = _dry_run(capsys, f"--gin_file={gin_file}", *BASE[:2], *out, "--detach", *given)
    studies = [_detached_study(c) for c in detached if c[4] == "ssh" and "nohup" in _remote(c)]
    assert len(studies) == 2 and all(s[-2:] == given for s in studies)
    bindings, _ = flags.split_gin_bindings(given)
    flags.parse_gin([gin_file], bindings)
    runs = sweep.expand(sweep.Study(), "gs://my-bucket/pythia")
    starts = {b for r in runs if r.record["model_name"] == "1b" for b in r.bindings
              if b.startswith("HF_CHECKPOINT=")}  # fmt: skip
    # suites.location: DIR/<revision> (the final one too: DIR holds no config.json of its own)
    revisions = [f"{suite}/{rev}" for rev in ("step48000", "step96000", "step143000")]
    assert starts == {f"HF_CHECKPOINT={location!r}" for location in revisions}


def test_detached_run_quotes_the_whole_study_command():
    argv = remote.study_argv("gin/studies/x.gin", "/o", 0, 1, [f"--gin.A='{DANGER}'"])
    command = remote.run_study(argv, {"JAX_COORDINATOR_ADDRESS": "auto"}, "study.log")
    tokens = shlex.split(command)
    assert tokens[:3] == ["nohup", "sh", "-c"]
    assert tokens[4:] == [">", "study.log", "2>&1", "<", "/dev/null", "&"]
    inner = shlex.split(tokens[3])
    assert f"--gin.A='{DANGER}'" in inner and "rm" not in inner


@pytest.mark.parametrize("name", [f"pod{DANGER}", "Upper", "-x", "a" * 64])
def test_bad_tpu_names_are_refused_before_anything_runs(name, capsys):
    with pytest.raises(SystemExit, match="TPU name"):
        tpu.main(["--gin_file=gin/studies/paper_mlsum.gin", *BASE, f"--name={name}", "--dry_run"])
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--out=gs://bucket/study", "is a bucket: give the results store with --store"),
        ("--out=relative/study", "absolute path"),
        ("--store=sqlite:////mnt/x.sqlite", "must be a postgresql:// URL"),
        ("--gin_file=gin/studies/nope.gin", "no study gin"),
        ("--pod_index=3", "pod_index"),
        ("--git_ref=--output=/etc/passwd", "git_ref"),
        ("--git_url=--upload-pack=touch /tmp/x", "git_url"),
        ("--env=1BAD=x", "must be NAME=VALUE"),
        ("--env=NO_VALUE", "must be NAME=VALUE"),
    ],
)
def test_bad_flags_fail_with_a_clear_message(flag, message):
    argv = ["--gin_file=gin/studies/paper_mlsum.gin", *BASE, "--num_pods=2", flag, "--dry_run"]
    with pytest.raises(SystemExit, match=message):
        tpu.main(argv)


def test_pods_split_the_runs_by_index(capsys):
    gin_file = "gin/studies/paper_wmt19_enzh.gin"
    commands = _dry_run(capsys, f"--gin_file={gin_file}", *BASE, "--num_pods=3")
    names = [c[5] for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]]
    assert names == [f"ft-scaling-paper-wmt19-enzh-{p}" for p in range(3)]
    assert sum(c[:2] == ["git", "archive"] for c in commands) == 1  # one archive for all pods
    workers = [
        (int(_option(s, "worker_index")), int(_option(s, "num_workers")))
        for s in _study_tokens(commands)
    ]
    assert workers == [(0, 3), (1, 3), (2, 3)]
    # Those worker flags split the expanded study into disjoint shares covering every run.
    flags.parse_gin([gin_file], [])
    runs = sweep.expand(sweep.Study(), "/mnt/shared/study")
    shares = [sweep.assigned(runs, index, count) for index, count in workers]
    ids = [r.run_id for share in shares for r in share]
    assert sorted(ids) == sorted(r.run_id for r in runs) and len(set(ids)) == len(runs)
    assert [len(s) for s in shares] == [444, 444, 443]  # 1331 runs
    one = _dry_run(capsys, f"--gin_file={gin_file}", *BASE, "--num_pods=3", "--pod_index=2")
    assert [c[5] for c in one if c[4] == "create"] == ["ft-scaling-paper-wmt19-enzh-2"]
    assert _study_tokens(one)[0][-2:] == ["--worker_index=2", "--num_workers=3"]


STORE = "postgresql://ft:pa ss;rm -rf /@10.1.2.3:5432/paper"  # a password that needs quoting
SHOWN_STORE = "postgresql://ft:***@10.1.2.3:5432/paper"


def test_pods_of_one_store_run_the_same_claiming_study_on_a_bucket(capsys, monkeypatch):
    argv = ["--gin_file=gin/studies/paper_wmt14_ende.gin", "--tpu=v4-64", "--zone=us-central2-b"]
    argv += ["--out=gs://my-bucket/paper", f"--store={STORE}", "--num_pods=4", "--detach"]
    commands = _dry_run(capsys, *argv)
    names = [c[5] for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]]
    assert names == [f"ft-scaling-paper-wmt14-ende-{p}" for p in range(4)]
    studies = [_detached_study(c) for c in commands if c[4] == "ssh" and "nohup" in _remote(c)]
    assert len(studies) == 4 and all(s == studies[0] for s in studies)  # one store, no index
    assert studies[0][2:] == [
        "--gin_file=gin/studies/paper_wmt14_ende.gin",
        "--out=gs://my-bucket/paper",
        f"--store={SHOWN_STORE}",
    ]
    assert not any("pa ss" in " ".join(c) for c in commands)  # printed without the password
    calls = []
    monkeypatch.setattr(
        tpu.subprocess, "run", lambda a, **kw: calls.append(a) or subprocess.CompletedProcess(a, 0)
    )
    assert tpu.main(argv) == 0
    run = [_detached_study(c) for c in calls if c[4] == "ssh" and "nohup" in _remote(c)]
    assert len(run) == 4 and f"--store={STORE}" in run[0]  # the real URL, one argument
    assert "rm" not in run[0] and "-rf" not in run[0]
    assert "pa ss" not in capsys.readouterr().err  # the echoed commands redact it too


def _detached_study(command: list[str]) -> list[str]:
    """The `ft-scaling study` argv inside a detached run: nohup sh -c 'cd ... && env ...'."""
    inner = shlex.split(_remote(command)[3])
    return inner[inner.index("-m") + 1 :]


def test_execution_runs_the_dry_run_commands_without_a_shell(monkeypatch, capsys):
    argv = ["--gin_file=gin/studies/paper_wmt14_ende.gin", *BASE, "--queued"]
    printed = _dry_run(capsys, *argv)
    calls, states = [], iter(["WAITING_FOR_RESOURCES", "ACTIVE"])

    def fake_run(args, **kwargs):
        assert "shell" not in kwargs and isinstance(args, list)
        calls.append(args)
        stdout = next(states) if "describe" in args else ""
        return subprocess.CompletedProcess(args, 0, stdout=stdout)

    monkeypatch.setattr(tpu.subprocess, "run", fake_run)
    monkeypatch.setattr(tpu, "POLL_SECONDS", 0)
    assert tpu.main(argv) == 0
    describe = [c for c in printed if "describe" in c]
    assert calls == printed[:3] + describe + printed[3:]  # the poll ran until ACTIVE
    monkeypatch.setattr(
        tpu.subprocess, "run", lambda args, **kw: subprocess.CompletedProcess(args, 7)
    )
    assert tpu.main(argv) == 7  # the first failing command stops the launch


def test_several_pods_in_the_foreground_need_a_pod_index():
    argv = ["--gin_file=gin/studies/paper_mlsum.gin", *BASE, "--num_pods=2"]
    with pytest.raises(SystemExit, match="--pod_index"):
        tpu.main(argv)


def test_jax_tpu_requirement_matches_the_setup_pin():
    with open(f"{tpu.REPO_ROOT}/setup.py") as f:
        setup = f.read()
    version = tpu.JAX_TPU_REQUIREMENT.split("==")[1]
    assert f'"jax=={version}"' in setup


def test_the_console_entry_point_dispatches_to_the_launcher():
    out = subprocess.run(
        [sys.executable, "-m", "ft_scaling.cli", "launch", "--gin_file=gin/studies/paper_mlsum.gin"]
        + BASE
        + ["--dry_run"],
        cwd=tpu.REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shlex.split(out.splitlines()[-1])[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
