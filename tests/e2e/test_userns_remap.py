"""Clawden on a rootful Docker engine with `userns-remap`: the engine shifts a container's uids to sub-uids that own no
host file, so an agent container in its remapped user namespace could not use its own session folder; the runner
starts agent containers in the host's user namespace there. A real remapped engine (a second dockerd of Debian's
docker.io, beside the system one), the agent image loaded into it, and a whole `clawden up` run by a user of its own
against it."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.harness import Terminal, session_folder, start_stack
from tests.plugins.docker import _unavailable

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
USER = "clawden-userns-test"  # who runs `clawden up`, as an install's user does
REMAP_USER = "dockremap"  # whose sub-uids `--userns-remap=default` maps containers' users to
# The engine's own folders, kept between runs so that the image it loaded stays: a remapped engine needs every folder
# above its data root open to others' search (o+x), which pytest's tmp_path is not.
ROOT = Path("/tmp/clawden-userns-test")
PIDFILE = ROOT / "dockerd.pid"
SOCKET = ROOT / "docker.sock"


def _users() -> pwd.struct_passwd:
    """The install's user, and the remap user with its sub-uids and sub-gids (Debian's dockerd adds none itself)."""
    for name, options in ((USER, ["--create-home"]), (REMAP_USER, ["--system", "--no-create-home"])):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", *options, "--shell", "/usr/sbin/nologin", name], check=True)
    for table, flag in (("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")):
        if not any(line.startswith(f"{REMAP_USER}:") for line in Path(table).read_text().splitlines()):
            subprocess.run(["usermod", flag, "400000-465535", REMAP_USER], check=True)
    return pwd.getpwnam(USER)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _kill_leftovers(user: pwd.struct_passwd) -> None:
    """What an earlier run left (a SIGKILLed pytest): its `clawden up` and home, USER's, and its engine, which holds
    the pid file and would answer on the socket."""
    subprocess.run(["pkill", "--signal", "KILL", "--uid", str(user.pw_uid)], check=False)
    try:
        pid = int(PIDFILE.read_text())
        if str(ROOT).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a reused pid's program
            os.kill(pid, signal.SIGKILL)  # its containerd goes with it (its parent-death signal)
    except (OSError, ValueError):
        pid = 0
    pgrep, gone_by = ["pgrep", "--uid", str(user.pw_uid)], time.monotonic() + 30
    while _running(pid) or subprocess.run(pgrep, capture_output=True).returncode == 0:
        assert time.monotonic() < gone_by, "what an earlier run left outlives SIGKILL"
        time.sleep(0.1)  # the kernel is still reaping them
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
    host = f"unix://{SOCKET}"
    log = ROOT / "dockerd.log"
    with log.open("wb") as out:
        engine = subprocess.Popen(
            [
                "dockerd",
                "--userns-remap=default",
                f"--data-root={ROOT / 'data'}",
                f"--exec-root={ROOT / 'exec'}",
                f"--pidfile={PIDFILE}",
                f"--host={host}",
                f"--group={grp.getgrgid(user.pw_gid).gr_name}",  # the socket is USER's to use
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:  # the engine listens on its socket once it has started
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(SOCKET))
                    break
                except OSError:
                    assert engine.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)  # the engine is still starting
        assert engine.poll() is None, log.read_text()[-3000:]  # the engine answering is this one
        client = docker.DockerClient(base_url=host)
        try:
            assert "name=userns" in str(client.info().get("SecurityOptions"))
            client.containers.prune()  # an earlier run's agent containers, stopped when this engine started
            wanted = docker_client.images.get(agent_image).id
            if not any(wanted == image.id for image in client.images.list(agent_image)):
                with subprocess.Popen(["docker", "save", agent_image], stdout=subprocess.PIPE) as save:
                    load_env = {**os.environ, "DOCKER_HOST": host}
                    subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env=load_env, check=True)
                assert save.returncode == 0
                client.images.prune(filters={"dangling": True})  # the image an earlier run loaded
        finally:
            client.close()
        yield host
    finally:
        os.killpg(engine.pid, signal.SIGTERM)
        try:
            engine.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait()


def test_a_chat_is_answered_by_an_agent_on_an_engine_that_remaps_users(remapped_engine: str) -> None:
    user = pwd.getpwnam(USER)
    home = Path(user.pw_dir) / f"home-{secrets.token_hex(4)}"  # where USER may go: pytest's tmp_path is root's
    # As in test_rootless: USER runs Debian's Python of the venv's version over the venv's packages and this tree.
    packages = sysconfig.get_path("purelib")
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    roots = os.pathsep.join([str(REPO), packages])
    stack = start_stack(home, user=USER, docker_host=remapped_engine, python=python, environ={"PYTHONPATH": roots})
    try:

        async def converse() -> str:
            async with Terminal(stack, f"remapped-{secrets.token_hex(3)}") as chat:
                reply = await chat.ask("hello from a remapped engine", timeout=90)
                return reply.text

        assert "hello from a remapped engine" in asyncio.run(converse()), "".join(stack.output)
        [container] = stack.containers()
        # The install's uid, in the host's user namespace: the engine's remap would make it a sub-uid.
        assert container.attrs["HostConfig"]["UsernsMode"] == "host"
        assert container.attrs["Config"]["User"] == f"{user.pw_uid}:{user.pw_gid}"
        folder = session_folder(stack, container.labels.get("dev.clawden.chat", "")) or next(
            (home / "sessions" / "main").iterdir()
        )
        assert {p.stat().st_uid for p in folder.iterdir()} == {user.pw_uid}  # what the agent wrote is the user's
        # `clawden doctor` as USER: the engine is named remapped and passes, and its container made like an agent's
        # reaches the gateway through the vault's socket (0600, the user's own).
        doctor = subprocess.run(
            [python, "-m", "clawden", "doctor"],
            env=stack.env() | {"DOCKER_HOST": remapped_engine, "PYTHONPATH": roots, "HOME": user.pw_dir},
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=300,
        )
        rows = {line[6:].split("  ")[0]: line for line in doctor.stdout.splitlines() if line[:5].strip()}
        assert "userns-remap" in rows["Docker"] and rows["Docker"].startswith("ok"), doctor.stdout
        assert rows["CA trust in a container"].startswith("ok"), doctor.stdout
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
