"""Clawden run as an ordinary login, for real, in a container booted by systemd: the login's own user units
(`clawden units install --user`, with lingering and the docker group), and system units that root installs
for the login's home (`sudo clawden --home ~alice/.clawden units install --system`), which then run as
that login, reaching Docker through `SupplementaryGroups=` alone.

No chat here: agent containers would mount this login's home from the host, where it does not exist
(test_pid1.py chats). Tests run in file order on each machine.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator

import docker
import pytest

from clawden import natsserver
from clawden.cli import units
from tests.fakes.telegram import FakeTelegram
from tests.units.machine import LABEL_INSTALL, Machine, booted

pytestmark = pytest.mark.docker

USER, UID = "alice", 1500
HOME = f"/home/{USER}/.clawden"
UNITS = ["clawden-nats.service", *(f"clawden-{s}.service" for s in units.SERVICES)]
PYTHON = sys.executable


def install_command(machine: Machine) -> str:
    return f"{PYTHON} -m clawden --home {HOME} units install --{machine.scope}"


@pytest.fixture(scope="module", params=["user", "system"])
def machine(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> Iterator[Machine]:
    scope = request.param
    install_id = f"u{secrets.token_hex(4)}"
    with booted(
        docker_client, f"clawden-pid1-{scope}-{install_id}", volumes={}, labels={LABEL_INSTALL: install_id}
    ) as machine:
        docker_gid = os.stat("/var/run/docker.sock").st_gid
        # The interpreter may live under /root (pyenv): let the login through, as its owner would have to.
        # Only user units need the login in the docker group; system units grant it themselves.
        machine.sh(
            f"chmod o+x /root && groupadd -o -g {docker_gid} docker && "
            f"useradd -m -u {UID} {'-G docker ' if scope == 'user' else ''}{USER}"
        )
        if scope == "user":
            machine.sh(f"loginctl enable-linger {USER}")
            machine.wait(
                lambda: machine.sh(f"systemctl is-active user@{UID}", check=False).strip() == "active",
                30,
                "the user manager did not start",
            )
        machine.user, machine.scope = USER, scope
        machine.env = {"HOME": f"/home/{USER}", "XDG_RUNTIME_DIR": f"/run/user/{UID}"}
        machine.sh(
            f"{PYTHON} -m clawden init </dev/null >/dev/null && "
            f"sed -i 's/^port = .*/port = {natsserver.free_port()}/' {HOME}/config.toml && "
            f"sed -i 's/^install_id = .*/install_id = \"{install_id}\"/' {HOME}/config.toml"
        )
        print(machine.sh(f"{install_command(machine)} --now", root=scope == "system"))
        yield machine


def test_the_units_run_as_the_login_and_reach_docker(machine: Machine) -> None:
    assert {u: machine.state(u) for u in [units.TARGET, *UNITS]} == dict.fromkeys([units.TARGET, *UNITS], "active")
    # Active means READY=1 came through (for user units, through a notify socket ProtectHome= hides),
    # after the runner reached the engine with a docker group it was given, not born with.
    runner = machine.main_pid("clawden-runner.service")
    assert machine.sh(f"ps -o user= -p {runner}").strip() == USER
    assert "docker" not in machine.sh(f"id -Gn {USER}") or machine.scope == "user"


def test_every_service_answers_clawden_status_over_its_own_identity(machine: Machine) -> None:
    def answering() -> set[str]:
        try:
            report = json.loads(machine.sh(f"{PYTHON} -m clawden status --json", check=False))
        except ValueError:  # NATS not answering yet: an error message, not JSON
            return set()
        return {s["name"] for s in report["services"]}

    # `status` waits half a second for answers: on a busy machine one may come late, so ask again.
    machine.wait(lambda: answering() >= set(units.SERVICES), 20, "not every service answered `clawden status`")


def test_a_reinstall_reloads_nats_and_a_killed_service_comes_back(machine: Machine) -> None:
    nats = machine.main_pid("clawden-nats.service")
    machine.sh(install_command(machine), root=machine.scope == "system")
    assert machine.main_pid("clawden-nats.service") == nats  # reloaded, not restarted
    router = machine.main_pid("clawden-router.service")
    machine.systemctl("kill -s KILL clawden-router.service")
    machine.wait(
        lambda: (
            machine.state("clawden-router.service") == "active"
            and machine.main_pid("clawden-router.service") not in (0, router)
        ),
        30,
        "router not restarted",
    )


def test_a_bridge_whose_token_is_refused_at_install_now_is_said_and_runs_once_its_key_file_is_mended(
    machine: Machine,
) -> None:
    """Added to the running install with a token Telegram refuses, the bridge exits 78, which its unit does not
    restart: `install --now` still succeeds, since the rest runs, and says why the bridge did not start and how to
    mend it. The owner writes the right token into keys/telegram and its path unit starts it, no systemctl needed."""
    bridge, watcher = units.channel_units("telegram")
    key = f"{HOME}/keys/telegram"
    telegram = FakeTelegram().start_in_thread()  # on the host's loopback, which the machine shares
    try:
        machine.sh(
            f"printf '[channels.telegram]\\napi_url = \"{telegram.url}\"\\npoll_timeout = 2\\npoll_grace = 2\\n' "
            f">> {HOME}/config.toml && umask 077 && echo 7012345678:refused > {key}"
        )
        out = machine.sh(
            f"{install_command(machine)} --now 2>&1; echo exit=$?", root=machine.scope == "system"
        ).splitlines()
        assert out[-1] == "exit=0", "\n".join(out)
        said = "\n".join(out)
        # Its own words, from its journal: Telegram refused the token (not NATS the bridge's new identity).
        assert (
            f"  {bridge} did not start: channel@telegram cannot run as configured: Telegram rejected the bot token"
        ) in said, said
        mend = f"`clawden doctor` checks its credential, and once {key} holds one that works, {watcher} starts it"
        assert mend in said
        assert "clawden units:" not in said  # no error: the install stands
        assert {u: machine.state(u) for u in UNITS} == dict.fromkeys(UNITS, "active")
        assert machine.state(bridge) == "failed"
        assert machine.systemctl(f"show -p ExecMainStatus --value {bridge}").strip() == "78"
        assert machine.state(watcher) == "active"

        machine.sh(f"umask 077 && echo {telegram.token} > {key}")  # as the owner mends it: no restart by hand
        machine.wait(lambda: machine.state(bridge) == "active", 60, "the mended key file did not start the bridge")
        assert machine.systemctl(f"show -p NRestarts --value {bridge}").strip() == "0"  # started, not restarted
    finally:
        telegram.stop_thread()


def test_uninstall_stops_everything_and_leaves_no_unit_file(machine: Machine) -> None:
    machine.sh(f"{PYTHON} -m clawden units uninstall --{machine.scope}", root=machine.scope == "system")
    stopped = [*UNITS, *units.channel_units("telegram")]  # with the bridge the test above added, and its path unit
    assert {u: machine.state(u) for u in stopped} == dict.fromkeys(stopped, "inactive")
    folder = f"/home/{USER}/.config/systemd/user" if machine.scope == "user" else "/etc/systemd/system"
    assert not machine.sh(f"ls {folder} | grep clawden", check=False, root=True).strip()
