"""gcloud command lines for Cloud TPU VMs: one small function per action, each returning argv.

Nothing here runs anything: launch/tpu.py prints these lists (--dry_run) or executes them with
`subprocess` and no local shell, so a value here can never split into two local commands. The one
string a *remote* shell reads is ssh's `--command=`, built in launch/remote.py with every value
quoted.
"""

import dataclasses

TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
QUEUED = ("gcloud", "compute", "tpus", "queued-resources")


@dataclasses.dataclass(frozen=True)
class Tpu:
    """Where a TPU VM (or the node of a queued resource) lives.

    Attributes:
      name: the TPU VM name (also the queued resource's name and node id).
      zone: e.g. 'us-central2-b'.
      project: the Google Cloud project; None uses gcloud's configured default.
    """

    name: str
    zone: str
    project: str | None = None

    def location(self) -> list[str]:
        flags = [f"--zone={self.zone}"]
        if self.project:
            flags.append(f"--project={self.project}")
        return flags


def create_vm(tpu: Tpu, accelerator: str, runtime_version: str) -> list[str]:
    """Creates a TPU VM (all hosts of the slice) right away, or fails if none is free."""
    return [
        *TPU_VM,
        "create",
        tpu.name,
        *tpu.location(),
        f"--accelerator-type={accelerator}",
        f"--version={runtime_version}",
    ]


def create_queued(tpu: Tpu, accelerator: str, runtime_version: str) -> list[str]:
    """Queues a request for a TPU VM; it becomes ACTIVE when capacity frees up."""
    return [
        *QUEUED,
        "create",
        tpu.name,
        f"--node-id={tpu.name}",
        *tpu.location(),
        f"--accelerator-type={accelerator}",
        f"--runtime-version={runtime_version}",
    ]


def queued_state(tpu: Tpu) -> list[str]:
    """Prints the queued resource's state (WAITING_FOR_RESOURCES, ..., ACTIVE, FAILED)."""
    return [*QUEUED, "describe", tpu.name, *tpu.location(), "--format=value(state.state)"]


def git_archive(ref: str, archive_path: str) -> list[str]:
    """Packs the committed tree at `ref` (local command: uncommitted edits are not shipped)."""
    return ["git", "archive", "--format=tar.gz", f"--output={archive_path}", ref]


def scp_to_all(tpu: Tpu, local_path: str, remote_path: str) -> list[str]:
    """Copies a local file to every host of the slice (remote path relative to home)."""
    return [
        *TPU_VM,
        "scp",
        local_path,
        f"{tpu.name}:{remote_path}",
        *tpu.location(),
        "--worker=all",
    ]


def ssh_all(tpu: Tpu, command: str) -> list[str]:
    """Runs one remote shell command on every host of the slice at once."""
    return [*TPU_VM, "ssh", tpu.name, *tpu.location(), "--worker=all", f"--command={command}"]


def delete_vm(tpu: Tpu) -> list[str]:
    return [*TPU_VM, "delete", tpu.name, *tpu.location(), "--quiet"]


def delete_queued(tpu: Tpu) -> list[str]:
    """Deletes the queued resource and (--force) the TPU VM it created."""
    return [*QUEUED, "delete", tpu.name, *tpu.location(), "--force", "--quiet"]
