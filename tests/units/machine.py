"""A machine run by systemd: PID 1 in a container from the Debian-bootstrapped `clawden-systemd` image,
with this repo, its venv and its interpreter mounted read-only at their own paths."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import ImageNotFound
from docker.models.containers import Container

import clawden
from tests.plugins.docker import _unavailable

IMAGE = "clawden-systemd:bookworm"
BUILD = (
    "container/bootstrap-base.sh --tag clawden-systemd:bookworm "
    "--include systemd,systemd-sysv,dbus,libpam-systemd,procps (bin/setup --tests does)"
)
LABEL_INSTALL = "dev.clawden.install"


@dataclass
class Machine:
    container: Container
    env: dict[str, str] = field(default_factory=dict)  # for every command run in it
    user: str = "root"  # who runs commands in it
    scope: str = "system"  # whose systemd `systemctl` talks to: "system" (as root) or "user" (as `user`)

    def sh(self, command: str, *, check: bool = True, root: bool = False) -> str:
        code, out = self.container.exec_run(
            ["sh", "-c", command], environment=self.env, user="root" if root else self.user
        )
        text = out.decode(errors="replace")
        if check:
            assert code == 0, f"`{command}` exited {code}:\n{text}\n{self.journal()}"
        return text

    def systemctl(self, args: str, *, check: bool = True) -> str:
        if self.scope == "user":
            return self.sh(f"systemctl --user {args}", check=check)
        return self.sh(f"systemctl {args}", check=check, root=True)

    def journal(self, lines: int = 150) -> str:
        _, out = self.container.exec_run(["journalctl", "--no-pager", "-n", str(lines)])
        return out.decode(errors="replace")

    def main_pid(self, unit: str) -> int:
        return int(self.systemctl(f"show -p MainPID --value {unit}").strip())

    def state(self, unit: str) -> str:
        return self.systemctl(f"is-active {unit}", check=False).strip()

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what}\n{self.journal()}"
            time.sleep(0.2)


def code_mounts() -> list[Path]:
    """The code and the interpreter, at their own paths (never over the image's own /usr)."""
    paths = sorted({Path(clawden.__file__).resolve().parents[1], Path(sys.prefix), Path(sys.base_prefix)})
    kept: list[Path] = []
    for path in paths:
        if not path.is_relative_to("/usr") and not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


@contextmanager
def booted(
    client: docker.DockerClient, name: str, *, volumes: dict[str, dict[str, str]], labels: dict[str, str]
) -> Iterator[Machine]:
    """Boot it (host network: everything it talks to is on 127.0.0.1) and wait until systemd is up."""
    try:
        client.images.get(IMAGE)
    except ImageNotFound:
        _unavailable(f"image {IMAGE} is missing; build it with {BUILD}")
    mounts = {str(p): {"bind": str(p), "mode": "ro"} for p in code_mounts()}
    mounts |= {
        "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"},
        "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
        **volumes,
    }
    # A booting kernel hands systemd a shared root; in a container systemd leaves propagation to the
    # container manager, and Docker's is private, which silently empties every LoadCredential= directory.
    container = client.containers.run(
        IMAGE,
        ["sh", "-c", "mount --make-rshared / && exec /sbin/init"],
        detach=True,
        name=name,
        network_mode="host",
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined"],
        tmpfs={"/run": "", "/run/lock": ""},
        environment={"container": "docker"},
        volumes=mounts,
        labels=labels,
    )
    machine = Machine(container)
    try:
        # Early in boot systemctl cannot ask yet: before systemd makes /run/systemd/system it answers
        # "offline" (sd_booted() is false), and its private socket can come and go ("Failed to connect").
        # Ask again until it names a state the manager itself reports (--wait waits out "starting").
        answers: list[str] = []

        def settled() -> bool:
            answers.append(machine.sh("systemctl is-system-running --wait", check=False).strip())
            return answers[-1] in ("running", "degraded", "maintenance", "stopping")

        machine.wait(settled, 60, "no boot")
        assert answers[-1] in ("running", "degraded"), answers[-1] + machine.sh(
            "systemctl --failed --no-pager", check=False
        )
        yield machine
    finally:
        container.remove(force=True)
