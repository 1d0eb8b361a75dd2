"""Clawden on a rootful Docker engine with `userns-remap`: the engine shifts a container's uids to sub-uids that own no
host file, so an agent container in its remapped user namespace could not use its own session folder; the runner
starts agent containers in the host's user namespace there. A real remapped engine (a second dockerd of Debian's
docker.io, beside the system one), the agent image loaded into it, and a whole `clawden up` run by a user of its own
against it."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import docker
import pytest

from tests.e2e import engines
from tests.plugins.docker import _unavailable

pytestmark = pytest.mark.docker

USER = "clawden-userns-test"  # who runs `clawden up`, as an install's user does
REMAP_USER = "dockremap"  # whose sub-uids `--userns-remap=default` maps containers' users to
# The engine's own folders, kept between runs so that the image it loaded stays: a remapped engine needs every folder
# above its data root open to others' search (o+x), which pytest's tmp_path is not.
ROOT = Path("/tmp/clawden-userns-test")
PIDFILE = ROOT / "dockerd.pid"
SOCKET = ROOT / "docker.sock"


def _users() -> pwd.struct_passwd:
    """The install's user, and the remap user with its sub-uids and sub-gids (Debian's dockerd adds none itself)."""
    user = engines.make_user(USER, "--create-home")
    engines.make_user(REMAP_USER, "--system", "--no-create-home", subids="400000-465535")
    return user


def _kill_leftovers(user: pwd.struct_passwd) -> None:
    """What an earlier run left (a SIGKILLed pytest): its `clawden up` and home, USER's, and its engine, which holds
    the pid file and would answer on the socket."""
    try:
        pid = int(PIDFILE.read_text())
        if str(ROOT).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a reused pid's program
            os.kill(pid, signal.SIGKILL)  # its containerd goes with it (its parent-death signal)
        else:
            pid = 0  # another program has that pid now: neither killed nor waited for
    except (OSError, ValueError):
        pid = 0
    engines.kill_processes(user, killed=pid)
    for home in Path(user.pw_dir).glob("home-*"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def remapped_engine(docker_client: docker.DockerClient, agent_image: str) -> Iterator[str]:
    """DOCKER_HOST of a rootful engine with `--userns-remap=default` that USER may use, holding the agent image the
    system engine has."""
    if os.getuid() != 0:
        _unavailable("starting a second Docker engine takes root")
    if shutil.which("dockerd") is None:
        _unavailable("a remapped engine needs dockerd (Debian's docker.io)")
    user = _users()
    _kill_leftovers(user)
    ROOT.mkdir(exist_ok=True)
    ROOT.chmod(0o711)
    command = [
        "dockerd",
        "--userns-remap=default",
        f"--data-root={ROOT / 'data'}",
        f"--exec-root={ROOT / 'exec'}",
        f"--pidfile={PIDFILE}",
        f"--host=unix://{SOCKET}",
        f"--group={grp.getgrgid(user.pw_gid).gr_name}",  # the socket is USER's to use
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
    ]
    with engines.engine(command, SOCKET, ROOT / "dockerd.log") as host:
        with closing(docker.DockerClient(base_url=host)) as client:
            assert "name=userns" in str(client.info().get("SecurityOptions"))
            client.containers.prune()  # an earlier run's agent containers, stopped when this engine started
            if engines.load_image(agent_image, docker_client, host):
                client.images.prune(filters={"dangling": True})  # the image an earlier run loaded
        yield host


def test_a_chat_is_answered_by_an_agent_on_an_engine_that_remaps_users(remapped_engine: str) -> None:
    user = pwd.getpwnam(USER)
    with engines.clawden_of(user, remapped_engine) as stack:
        reply = engines.converse(stack, "hello from a remapped engine", chat="remapped", timeout=90)
        assert "hello from a remapped engine" in reply, "".join(stack.output)
        [container] = stack.containers()
        # The install's uid, in the host's user namespace: the engine's remap would make it a sub-uid.
        assert container.attrs["HostConfig"]["UsernsMode"] == "host"
        assert container.attrs["Config"]["User"] == f"{user.pw_uid}:{user.pw_gid}"
        assert engines.session_owners(stack, container) == {user.pw_uid}  # what the agent wrote is the user's
        # `clawden doctor` as USER: the engine is named remapped and passes, and its container made like an agent's
        # reaches the gateway through the vault's socket (0600, the user's own).
        rows, output = engines.doctor(stack, user)
        assert "userns-remap" in rows["Docker"] and rows["Docker"].startswith("ok"), output
        assert rows["CA trust in a container"].startswith("ok"), output
