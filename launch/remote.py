"""The shell commands the TPU hosts run (ssh `--command=`), every value quoted with shlex.

A remote shell reads these strings, so each value that comes from a flag or a gin binding goes
through `shlex.quote` / `shlex.join`: a run name, path or gin value containing `; rm -rf /`
stays one argument of `ft-scaling study` and is never run. Only fixed text of this module is
left unquoted. Paths are relative to the remote home directory, where ssh commands start.
"""

import shlex
from collections.abc import Mapping, Sequence

CODE_DIR = "ft-scaling"  # the unpacked or cloned repository
VENV_DIR = "ft-scaling-venv"
ARCHIVE = "ft-scaling.tar.gz"  # where scp puts the code archive
PYTHON = "python3.11"  # setup.py: python_requires >=3.11,<3.12


def unpack_archive() -> str:
    """Replaces the code directory with the copied archive (a fresh tree on every launch)."""
    return f"rm -rf {CODE_DIR} && mkdir -p {CODE_DIR} && tar -xzf {ARCHIVE} -C {CODE_DIR}"


def clone(url: str, ref: str) -> str:
    """Replaces the code directory with `url` checked out at `ref`."""
    q = shlex.quote
    return (
        f"rm -rf {CODE_DIR} && git clone --quiet -- {q(url)} {CODE_DIR} && "
        f"git -C {CODE_DIR} checkout --quiet {q(ref)}"
    )


def install(jax_requirement: str, python: str = PYTHON) -> str:
    """Installs the package (pinned by setup.py) and JAX's TPU runtime into a virtualenv."""
    q = shlex.quote
    return (
        f"sudo apt-get -qq update && sudo apt-get -qq install -y {q(python + '-venv')} && "
        f"{q(python)} -m venv {VENV_DIR} && "
        f"{VENV_DIR}/bin/pip install -q -e ./{CODE_DIR} {q(jax_requirement)}"
    )


def study_argv(
    gin_file: str,
    out_dir: str,
    worker_index: int,
    num_workers: int,
    gin_flags: Sequence[str] = (),
    store: str | None = None,
) -> list[str]:
    """`ft-scaling study` for one study worker, run from the code directory: with a shared
    `store` every pod runs the same command and claims runs; else it takes run i mod P."""
    split = [f"--store={store}"] if store else [
        f"--worker_index={worker_index}",
        f"--num_workers={num_workers}",
    ]  # fmt: skip
    return [
        f"../{VENV_DIR}/bin/python",
        "-m",
        "ft_scaling.cli",
        "study",
        f"--gin_file={gin_file}",
        f"--out={out_dir}",
        *split,
        *gin_flags,
    ]


def run_study(argv: Sequence[str], env: Mapping[str, str], log_path: str | None = None) -> str:
    """The study command with its environment; detached (nohup, logging to `log_path`) if given.

    Detached, the ssh session returns at once and the study survives it; rerunning the same
    launch later continues the study where it stopped (the runner skips finished runs).
    """
    assignments = [f"{name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    command = " ".join([f"cd {CODE_DIR} &&", "env", *assignments, shlex.join(argv)])
    if log_path is None:
        return command
    q = shlex.quote
    return f"nohup sh -c {q(command)} > {q(log_path)} 2>&1 < /dev/null &"
