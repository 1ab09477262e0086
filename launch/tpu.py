"""`ft-scaling launch`: run a study on Cloud TPU pod slices with gcloud.

    ft-scaling launch --gin_file=gin/studies/paper_wmt14_ende.gin --tpu=v4-64 \
        --zone=us-central2-b --out=gs://BUCKET/paper_ende \
        --store=postgresql://USER@HOST/DB [--num_pods=4 --pod_index=0] \
        [--env=TFDS_DATA_DIR=gs://BUCKET/tensorflow_datasets ...] \
        [--queued] [--reuse] [--detach] [--delete_after] [--gin.KEY=VALUE ...] [--dry_run]

Per pod (a TPU VM slice of several hosts), one gcloud command per step (launch/gcloud.py):

    create      TPU VM, or a queued resource then poll until ACTIVE    (skipped with --reuse)
    copy code   `git archive` of --git_ref + scp to all hosts + unpack, or `git clone` there
    install     python3.11 venv, `pip install -e .` and the pinned jax[tpu]
    run         `ft-scaling study ... --store=URL` (or `--worker_index=p --num_workers=P`)
                on all hosts at once
    delete      only with --delete_after

Splitting a sweep: each pod is one study worker, all hosts of the pod together as one JAX
program (its process 0 alone talks to the store); pods are named NAME-p. Launch each pod with
--pod_index=p (or all pods in one go with --detach).
  --store=postgresql://...  every pod runs the same command and claims the next runnable run
      from that database (study/claims.py): no pod idles while runs are left, and a preempted
      pod's run is taken over once its lease expires. --out may then be a bucket (gs://...):
      checkpoints, metrics and the report go there; pods share nothing else. Cloud SQL: give
      the instance's address (private IP, or 127.0.0.1 with the Cloud SQL Auth Proxy on each
      host); put the password in the URL or, kept out of the command line, in PGPASSWORD /
      ~/.pgpass on the hosts. --dry_run prints the URL with its password as ***.
  without --store           pod p runs the runs i with i mod P == p (sweep.assigned); --out
      must then be a directory every host of every pod sees at the same path (NFS /
      Filestore): the SQLite stores live there, and pods wait there for the pretraining runs
      their finetuning runs depend on.

Multi-host environment (the one place it is documented; ft_scaling.train.partitioning
`initialize_distributed` reads it when a run starts):

    platform          variables set for every study process    what happens
    TPU VM slice      JAX_COORDINATOR_ADDRESS=auto (set here)  jax.distributed.initialize() with
                                                               no arguments: JAX finds the
                                                               coordinator, process count and id
                                                               from the TPU metadata
    GPU cluster       JAX_COORDINATOR_ADDRESS=host:port,       jax.distributed.initialize(address,
                      JAX_NUM_PROCESSES=N,                     N, i); set them yourself (SLURM:
                      JAX_PROCESS_ID=i (0..N-1, per process)   from SLURM_* in the job script)
    one host          none                                     not started

--env=NAME=VALUE (repeatable) adds a variable to every study process on the pods, e.g.
TFDS_DATA_DIR=gs://BUCKET/tensorflow_datasets (where the task data was built once) or
HF_HUB_OFFLINE=1; it is quoted like every other value.

--dry_run prints the exact commands, one per line (shlex.join), and runs nothing. Without it the
commands run with subprocess, never through a local shell; values that reach the remote shell
are quoted (launch/remote.py).
"""

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from launch import gcloud, remote

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_ENV = {"JAX_COORDINATOR_ADDRESS": "auto"}  # see the table above
JAX_TPU_REQUIREMENT = "jax[tpu]==0.10.2"  # the jax pin of setup.py, with the TPU runtime
DEFAULT_RUNTIME = "tpu-ubuntu2204-base"
# Cloud TPU names: lowercase letters, digits and hyphens, starting with a letter.
NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
POLL_SECONDS = 30
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class Step:
    """One command. `until`: rerun it until it prints this (polling a queued resource)."""

    argv: list[str]
    until: str | None = None


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Launch flags, and the `--gin.KEY=VALUE` flags forwarded to `ft-scaling study` as given."""
    gin_flags = [a for a in argv if a.startswith("--gin.")]
    for flag in gin_flags:
        if "=" not in flag:
            raise SystemExit(f"ft-scaling launch: malformed {flag!r}; expected --gin.KEY=VALUE")
    parser = argparse.ArgumentParser(prog="ft-scaling launch", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--gin_file", required=True, help="the study, relative to the repository root")
    # --gin.KEY=VALUE flags are not declared: they configure the study gin (e.g. its macros)
    # and are passed on to `ft-scaling study` as given, quoted.
    add("--tpu", required=True, help="accelerator type, e.g. v4-64")
    add("--zone", required=True, help="e.g. us-central2-b")
    add("--out", required=True, help="study directory: gs://... or a path every host sees")
    add("--store", default=None, help="postgresql://USER[:PASSWORD]@HOST/DB shared by pods")
    add("--name", default=None, help="TPU VM name (default: ft-scaling-<study>); pods get -p")
    add("--project", default=None, help="Google Cloud project (default: gcloud's)")
    add("--runtime_version", default=DEFAULT_RUNTIME, help="TPU VM software version")
    add("--queued", action="store_true", help="create a queued resource, not a plain TPU VM")
    add("--reuse", action="store_true", help="use existing TPU VMs: skip creating them")
    add("--num_pods", type=int, default=1, help="split the study's runs over this many pods")
    add("--pod_index", type=int, default=None, help="launch only this pod (default: all)")
    add("--git_ref", default="HEAD", help="the commit to ship (git archive, or clone + checkout)")
    add("--git_url", default=None, help="clone this repository on the hosts instead of scp")
    add("--detach", action="store_true", help="run the study in the background (nohup)")
    add("--delete_after", action="store_true", help="delete the TPU VMs when the study ends")
    add("--env", action="append", default=[], help="NAME=VALUE for the study (repeatable)")
    add("--dry_run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args([a for a in argv if not a.startswith("--gin.")])
    return args, gin_flags


def validate(args: argparse.Namespace) -> None:
    """Fails before any pod is paid for: names, paths and the pod split."""
    if os.path.isabs(args.gin_file) or not os.path.isfile(os.path.join(REPO_ROOT, args.gin_file)):
        raise SystemExit(f"ft-scaling launch: no study gin {args.gin_file!r} in {REPO_ROOT}")
    _validate_paths(args)
    for flag in ("git_ref", "git_url"):
        # git would read a leading '-' as an option (e.g. clone's --upload-pack=<command>).
        if (getattr(args, flag) or "").startswith("-"):
            raise SystemExit(f"ft-scaling launch: --{flag} must not start with '-'")
    study_env(args)  # names checked here, before any pod
    if args.detach and args.delete_after:
        raise SystemExit("ft-scaling launch: --delete_after would delete a detached study's pods")
    if args.num_pods < 1:
        raise SystemExit(f"ft-scaling launch: --num_pods={args.num_pods} must be >= 1")
    if args.pod_index is not None and not 0 <= args.pod_index < args.num_pods:
        raise SystemExit(f"ft-scaling launch: --pod_index={args.pod_index} not in [0, num_pods)")
    for name in pod_names(args):
        if not NAME_PATTERN.fullmatch(name):
            raise SystemExit(
                f"ft-scaling launch: TPU name {name!r} must be lowercase letters, digits and "
                "hyphens, start with a letter and have at most 63 characters"
            )


def _validate_paths(args: argparse.Namespace) -> None:
    """--out: a bucket (with a shared store) or an absolute shared path; --store: PostgreSQL."""
    if args.store is not None and not args.store.startswith(("postgresql://", "postgresql+")):
        raise SystemExit(
            f"ft-scaling launch: --store={shown_store(args.store)!r} must be a postgresql:// URL "
            "(pods share no disk a SQLite file could live on)"
        )
    if args.out.startswith("gs://"):
        if args.store is None:
            raise SystemExit(
                f"ft-scaling launch: --out={args.out!r} is a bucket: give the results store "
                "with --store=postgresql://USER@HOST/DB (SQLite cannot live in a bucket)"
            )
    elif not os.path.isabs(args.out):
        raise SystemExit(
            f"ft-scaling launch: --out={args.out!r} must be gs://... or an absolute path that "
            "every host sees (NFS / Filestore at the same path on all hosts)"
        )


def study_env(args: argparse.Namespace) -> dict[str, str]:
    """TPU_ENV plus the --env variables (a name must be a shell variable name)."""
    env = dict(TPU_ENV)
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not ENV_NAME.fullmatch(name):
            raise SystemExit(
                f"ft-scaling launch: --env={item!r} must be NAME=VALUE with NAME a variable name"
            )
        env[name] = value
    return env


def shown_store(url: str | None) -> str | None:
    """The store URL with its password as *** (for printed commands and messages)."""
    if not url:
        return url
    from ft_scaling.study import store  # SQLAlchemy parses the URL the study will use

    return store.redact(url)


def base_name(args: argparse.Namespace) -> str:
    """--name, or ft-scaling-<study file stem> in TPU-name spelling."""
    stem = os.path.splitext(os.path.basename(args.gin_file))[0]
    return args.name or "ft-scaling-" + stem.replace("_", "-").lower()


def pod_names(args: argparse.Namespace) -> list[str]:
    """The TPU VM name of every pod: NAME, or NAME-0 ... NAME-(P-1) for several pods."""
    if args.num_pods == 1:
        return [base_name(args)]
    return [f"{base_name(args)}-{p}" for p in range(args.num_pods)]


def archive_path(args: argparse.Namespace) -> str:
    return os.path.join(tempfile.gettempdir(), f"{base_name(args)}-code.tar.gz")


def pod_steps(args, gin_flags: Sequence[str], pod_index: int) -> list[Step]:
    """Create, copy code, install, run, (delete) for one pod."""
    tpu = gcloud.Tpu(pod_names(args)[pod_index], args.zone, args.project)
    steps = []
    if not args.reuse and args.queued:
        steps.append(Step(gcloud.create_queued(tpu, args.tpu, args.runtime_version)))
        steps.append(Step(gcloud.queued_state(tpu), until="ACTIVE"))
    elif not args.reuse:
        steps.append(Step(gcloud.create_vm(tpu, args.tpu, args.runtime_version)))
    if args.git_url:
        steps.append(Step(gcloud.ssh_all(tpu, remote.clone(args.git_url, args.git_ref))))
    else:
        steps.append(Step(gcloud.scp_to_all(tpu, archive_path(args), remote.ARCHIVE)))
        steps.append(Step(gcloud.ssh_all(tpu, remote.unpack_archive())))
    steps.append(Step(gcloud.ssh_all(tpu, remote.install(JAX_TPU_REQUIREMENT))))
    study = remote.study_argv(
        args.gin_file, args.out, pod_index, args.num_pods, gin_flags, store=args.store
    )
    log = f"study_{tpu.name}.log" if args.detach else None
    steps.append(Step(gcloud.ssh_all(tpu, remote.run_study(study, study_env(args), log))))
    if args.delete_after:
        delete = gcloud.delete_queued if args.queued else gcloud.delete_vm
        steps.append(Step(delete(tpu)))
    return steps


def plan(args: argparse.Namespace, gin_flags: Sequence[str]) -> list[Step]:
    """Every command of this launch, in order: the code archive once, then each pod's steps."""
    pods = range(args.num_pods) if args.pod_index is None else [args.pod_index]
    steps = [] if args.git_url else [Step(gcloud.git_archive(args.git_ref, archive_path(args)))]
    for pod in pods:
        steps.extend(pod_steps(args, gin_flags, pod))
    return steps


def poll(step: Step, timeout_s: float = 24 * 3600) -> int:
    """Reruns a state query until it prints `step.until`; a FAILED/SUSPENDED state stops it."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        result = subprocess.run(step.argv, capture_output=True, text=True, check=False)  # no shell
        state = result.stdout.strip()
        if result.returncode == 0 and state == step.until:
            return 0
        if state in ("FAILED", "SUSPENDED"):
            sys.stderr.write(f"ft-scaling launch: queued resource is {state}\n")
            return 1
        time.sleep(POLL_SECONDS)
    sys.stderr.write(f"ft-scaling launch: not {step.until} within {timeout_s:.0f}s\n")
    return 1


def execute(steps: Sequence[Step], shown: Sequence[Step] | None = None) -> int:
    """Runs the commands in order (no shell); stops at the first failure with its status.
    `shown`: the same commands as echoed (the store's password as ***)."""
    for step, echo in zip(steps, shown or steps, strict=True):
        sys.stderr.write(f"+ {shlex.join(echo.argv)}\n")
        if step.until:
            code = poll(step)
        else:  # from the repository root: `git archive` packs this checkout
            code = subprocess.run(step.argv, cwd=REPO_ROOT, check=False).returncode
        if code != 0:
            sys.stderr.write(f"ft-scaling launch: failed with status {code}\n")
            return code
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args, gin_flags = parse(list(sys.argv[1:] if argv is None else argv))
    validate(args)
    steps = plan(args, gin_flags)
    # What is printed shows the store's password as ***; what runs has it.
    shown = plan(argparse.Namespace(**{**vars(args), "store": shown_store(args.store)}), gin_flags)
    if args.dry_run:
        for step in shown:
            print(shlex.join(step.argv))
        return 0
    if args.num_pods > 1 and args.pod_index is None and not args.detach:
        # A foreground study blocks its ssh session, so pods would run one after another.
        raise SystemExit(
            "ft-scaling launch: with --num_pods > 1 launch each pod with --pod_index=p "
            "(in its own terminal), or pass --detach"
        )
    return execute(steps, shown)


if __name__ == "__main__":
    sys.exit(main())
