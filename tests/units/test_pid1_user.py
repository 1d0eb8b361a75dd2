"""User units for real: a login with lingering on, in the docker group, installs Clawden's units into its
own systemd user manager (`clawden units install --user`), in a container booted by systemd.

No chat here: agent containers would mount this user's home from the host, where it does not exist
(test_pid1.py chats). Tests run in file order on one machine.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator

import docker
import pytest

from clawden import natsserver, units
from tests.units.machine import LABEL_INSTALL, Machine, booted

pytestmark = pytest.mark.docker

USER, UID = "alice", 1500
HOME = f"/home/{USER}/.clawden"
UNITS = ["clawden-nats.service", *(f"clawden-{s}.service" for s in units.SERVICES)]


@pytest.fixture(scope="module")
def machine(docker_client: docker.DockerClient) -> Iterator[Machine]:
    install_id = f"u{secrets.token_hex(4)}"
    with booted(docker_client, f"clawden-pid1-user-{install_id}", volumes={},
                labels={LABEL_INSTALL: install_id}) as machine:
        docker_gid = os.stat("/var/run/docker.sock").st_gid
        # The interpreter may live under /root (pyenv): let the user through, as its owner would have to.
        machine.sh(f"chmod o+x /root; groupadd -o -g {docker_gid} docker && useradd -m -u {UID} -G docker {USER}"
                   f" && loginctl enable-linger {USER}")
        machine.wait(lambda: machine.sh(f"systemctl is-active user@{UID}", check=False).strip() == "active", 30,
                     "the user manager did not start")
        machine.user = USER
        machine.env = {"HOME": f"/home/{USER}", "XDG_RUNTIME_DIR": f"/run/user/{UID}"}
        machine.sh(f"{sys.executable} -m clawden init </dev/null >/dev/null && "
                   f"sed -i 's/^port = .*/port = {natsserver.free_port()}/' {HOME}/config.toml && "
                   f"sed -i 's/^install_id = .*/install_id = \"{install_id}\"/' {HOME}/config.toml")
        print(machine.sh(f"{sys.executable} -m clawden units install --user --now"))
        yield machine


def test_user_units_run_as_the_user_and_reach_docker(machine: Machine) -> None:
    assert {u: machine.state(u) for u in [units.TARGET, *UNITS]} == dict.fromkeys([units.TARGET, *UNITS], "active")
    runner = machine.main_pid("clawden-runner.service")
    # Active means READY=1 came through the notify socket ProtectHome= hides, after the runner reached the
    # engine with the docker group it keeps inside its user namespace.
    assert machine.sh(f"ps -o user= -p {runner}").strip() == USER


def test_every_service_answers_clawden_status_over_its_own_identity(machine: Machine) -> None:
    def answering() -> set[str]:
        try:
            report = json.loads(machine.sh(f"{sys.executable} -m clawden status --json", check=False))
        except ValueError:  # NATS not answering yet: an error message, not JSON
            return set()
        return {s["name"] for s in report["services"]}

    # `status` waits half a second for answers: on a busy machine one may come late, so ask again.
    machine.wait(lambda: answering() >= set(units.SERVICES), 20, "not every service answered `clawden status`")


def test_a_reinstall_reloads_nats_and_a_killed_service_comes_back(machine: Machine) -> None:
    nats = machine.main_pid("clawden-nats.service")
    machine.sh(f"{sys.executable} -m clawden units install --user")
    assert machine.main_pid("clawden-nats.service") == nats  # reloaded, not restarted
    router = machine.main_pid("clawden-router.service")
    machine.systemctl("kill -s KILL clawden-router.service")
    machine.wait(lambda: machine.state("clawden-router.service") == "active"
                 and machine.main_pid("clawden-router.service") not in (0, router), 30, "router not restarted")


def test_uninstall_stops_everything_and_leaves_no_unit_file(machine: Machine) -> None:
    machine.sh(f"{sys.executable} -m clawden units uninstall --user")
    assert {u: machine.state(u) for u in UNITS} == dict.fromkeys(UNITS, "inactive")
    assert not machine.sh(f"ls /home/{USER}/.config/systemd/user | grep clawden", check=False).strip()
