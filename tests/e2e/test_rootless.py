"""Clawden on rootless Docker, run by the user whose engine it is: the engine runs in a user namespace of that
user's, so an agent container's root is the user and any other uid in it is a sub-uid that owns nothing on the
host. A real rootless engine (Debian's dockerd-rootless.sh under rootlesskit) for a user of its own, the agent
image loaded into it, and a whole `clawden up` run as that user."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from clawden import config
from tests.e2e.harness import Terminal, session_folder, start_stack
from tests.plugins.docker import _unavailable

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
USER = "clawden-rootless-test"
ROOTLESS_SCRIPT = "/usr/share/docker.io/contrib/dockerd-rootless.sh"  # Debian's docker.io ships it there
TOOLS = ("rootlesskit", "newuidmap")  # bin/setup installs them


def _user() -> pwd.struct_passwd:
    """The test's own user, made once, with the sub-uids rootless Docker maps its containers' users to."""
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    entry = pwd.getpwnam(USER)
    for table in ("/etc/subuid", "/etc/subgid"):
        if not any(line.startswith(f"{USER}:") for line in Path(table).read_text().splitlines()):
            flag = "--add-subuids" if table.endswith("uid") else "--add-subgids"
            subprocess.run(["usermod", flag, "300000-365535", USER], check=True)
    return entry


@pytest.fixture(scope="module")
def rootless_engine(docker_client: docker.DockerClient, agent_image: str) -> Iterator[str]:
    """DOCKER_HOST of a rootless engine run by USER, holding the agent image the system engine has."""
    if os.getuid() != 0:
        _unavailable("starting a rootless engine for a user of its own takes root")
    missing = [t for t in TOOLS if shutil.which(t) is None] + ([] if Path(ROOTLESS_SCRIPT).exists() else ["docker.io"])
    if missing:
        _unavailable(f"rootless Docker needs {', '.join(missing)} (bin/setup installs them)")
    user = _user()
    # An engine an earlier run left (a SIGKILLed pytest) would answer on the socket in this one's place.
    subprocess.run(["pkill", "--signal", "KILL", "--uid", str(user.pw_uid)], check=False)
    gone_by = time.monotonic() + 30
    while subprocess.run(["pgrep", "--uid", str(user.pw_uid)], capture_output=True).returncode == 0:
        assert time.monotonic() < gone_by, f"processes of {USER} outlive SIGKILL"
        time.sleep(0.1)  # the kernel is still reaping them
    runtime = Path(f"/run/user/{user.pw_uid}")
    shutil.rmtree(runtime, ignore_errors=True)  # its pid file and sockets
    runtime.mkdir(parents=True, exist_ok=True)
    os.chown(runtime, user.pw_uid, user.pw_gid)
    runtime.chmod(0o700)
    host = f"unix://{runtime}/docker.sock"
    log = Path(user.pw_dir) / "dockerd.log"
    env = {
        "HOME": user.pw_dir,
        "USER": USER,
        "XDG_RUNTIME_DIR": str(runtime),
        # The host's network namespace, not slirp4netns's user-mode NAT: agent containers have no network anyway.
        "DOCKERD_ROOTLESS_ROOTLESSKIT_NET": "host",
        "DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER": "none",
        "PATH": f"{Path(ROOTLESS_SCRIPT).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    with log.open("wb") as out:
        engine = subprocess.Popen(
            [ROOTLESS_SCRIPT, "--bridge=none", "--iptables=false", "--ip-masq=false"],
            env=env,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            cwd=user.pw_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:  # the engine listens on its socket once it has started
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(runtime / "docker.sock"))
                    break
                except OSError:
                    assert engine.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)  # the engine is still starting
        assert engine.poll() is None, log.read_text()[-3000:]  # the engine answering is this one
        client = docker.DockerClient(base_url=host)
        try:
            wanted = docker_client.images.get(agent_image).id
            if not any(wanted == image.id for image in client.images.list(agent_image)):
                with subprocess.Popen(["docker", "save", agent_image], stdout=subprocess.PIPE) as save:
                    load_env = {**os.environ, "DOCKER_HOST": host}
                    subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env=load_env, check=True)
                assert save.returncode == 0
            assert "name=rootless" in str(client.info().get("SecurityOptions"))
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


def test_a_chat_is_answered_by_an_agent_on_rootless_docker(rootless_engine: str) -> None:
    user = pwd.getpwnam(USER)
    home = Path(user.pw_dir) / f"home-{secrets.token_hex(4)}"  # where USER may go: pytest's tmp_path is root's
    # The test's venv may live where USER cannot go (its Python under root's home): USER runs Debian's Python of the
    # same version over the venv's packages and this tree, which is what a venv of USER's own would hold.
    packages = sysconfig.get_path("purelib")
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    roots = os.pathsep.join([str(REPO), packages])
    stack = start_stack(home, user=USER, docker_host=rootless_engine, python=python, environ={"PYTHONPATH": roots})
    try:

        async def converse() -> str:
            async with Terminal(stack, f"rootless-{secrets.token_hex(3)}") as chat:
                reply = await chat.ask("hello from a rootless engine", timeout=120)
                return reply.text

        assert "hello from a rootless engine" in asyncio.run(converse()), "".join(stack.output)
        [container] = stack.containers()
        assert container.attrs["Config"]["User"] == "0:0"  # the engine's user, with no capabilities
        folder = session_folder(stack, container.labels.get("dev.clawden.chat", "")) or next(
            (home / "sessions" / "main").iterdir()
        )
        # What the agent wrote is the user's, as the vault's socket it reached is (0600, the user's own).
        assert {p.stat().st_uid for p in folder.iterdir()} == {user.pw_uid}
        socket = config.load(home).gateway_dir / "main" / "gateway.sock"
        assert (stat.S_IMODE(socket.stat().st_mode), socket.stat().st_uid) == (0o600, user.pw_uid)
        # `clawden doctor` as USER: the engine is named rootless, and its container made like an agent's (as the
        # engine's user) reaches the gateway through that socket.
        doctor = subprocess.run(
            [python, "-m", "clawden", "doctor"],
            env=stack.env() | {"DOCKER_HOST": rootless_engine, "PYTHONPATH": roots, "HOME": user.pw_dir},
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=300,
        )
        rows = {line[6:].split("  ")[0]: line for line in doctor.stdout.splitlines() if line[:5].strip()}
        assert "rootless" in rows["Docker"] and not rows["Docker"].startswith("FAIL"), doctor.stdout
        assert rows["CA trust in a container"].startswith("ok"), doctor.stdout
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
