"""Clawden on rootless Docker, run by the user whose engine it is: the engine runs in a user namespace of that
user's, so an agent container's root is the user and any other uid in it is a sub-uid that owns nothing on the
host. A real rootless engine (Debian's dockerd-rootless.sh under rootlesskit) for a user of its own, the agent
image loaded into it, and a whole `clawden up` run as that user."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import docker
import pytest

from clawden import config
from tests.e2e import engines
from tests.plugins.docker import _unavailable

pytestmark = pytest.mark.docker

USER = "clawden-rootless-test"
ROOTLESS_SCRIPT = "/usr/share/docker.io/contrib/dockerd-rootless.sh"  # Debian's docker.io ships it there
TOOLS = ("rootlesskit", "newuidmap")  # bin/setup --tests installs them


@pytest.fixture(scope="module")
def rootless_engine(docker_client: docker.DockerClient, agent_image: str) -> Iterator[str]:
    """DOCKER_HOST of a rootless engine run by USER, holding the agent image the system engine has."""
    if os.getuid() != 0:
        _unavailable("starting a rootless engine for a user of its own takes root")
    missing = [t for t in TOOLS if shutil.which(t) is None] + ([] if Path(ROOTLESS_SCRIPT).exists() else ["docker.io"])
    if missing:
        _unavailable(f"rootless Docker needs {', '.join(missing)} (bin/setup --tests installs them)")
    # The test's own user, with the sub-uids rootless Docker maps its containers' users to.
    user = engines.make_user(USER, "--create-home", subids="300000-365535")
    engines.kill_processes(user)  # an engine an earlier run left would answer on the socket in this one's place
    runtime = Path(f"/run/user/{user.pw_uid}")
    shutil.rmtree(runtime, ignore_errors=True)  # its pid file and sockets
    runtime.mkdir(parents=True, exist_ok=True)
    os.chown(runtime, user.pw_uid, user.pw_gid)
    runtime.chmod(0o700)
    env = {
        "HOME": user.pw_dir,
        "USER": USER,
        "XDG_RUNTIME_DIR": str(runtime),
        # The host's network namespace, not slirp4netns's user-mode NAT: agent containers have no network anyway.
        "DOCKERD_ROOTLESS_ROOTLESSKIT_NET": "host",
        "DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER": "none",
        "PATH": f"{Path(ROOTLESS_SCRIPT).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    command = [ROOTLESS_SCRIPT, "--bridge=none", "--iptables=false", "--ip-masq=false"]
    log = Path(user.pw_dir) / "dockerd.log"
    with engines.engine(command, runtime / "docker.sock", log, user=user, env=env) as host:
        engines.load_image(agent_image, docker_client, host)
        with closing(docker.DockerClient(base_url=host)) as client:
            assert "name=rootless" in str(client.info().get("SecurityOptions"))
        yield host


def test_a_chat_is_answered_by_an_agent_on_rootless_docker(rootless_engine: str) -> None:
    user = pwd.getpwnam(USER)
    with engines.clawden_of(user, rootless_engine) as stack:
        reply = engines.converse(stack, "hello from a rootless engine", chat="rootless", timeout=120)
        assert "hello from a rootless engine" in reply, "".join(stack.output)
        [container] = stack.containers()
        assert container.attrs["Config"]["User"] == "0:0"  # the engine's user, with no capabilities
        # What the agent wrote is the user's, as the vault's socket it reached is (0600, the user's own).
        assert engines.session_owners(stack, container) == {user.pw_uid}
        socket = config.load(stack.home).gateway_dir / "main" / "gateway.sock"
        assert (stat.S_IMODE(socket.stat().st_mode), socket.stat().st_uid) == (0o600, user.pw_uid)
        # `clawden doctor` as USER: the engine is named rootless, and its container made like an agent's (as the
        # engine's user) reaches the gateway through that socket.
        rows, output = engines.doctor(stack, user)
        assert "rootless" in rows["Docker"] and not rows["Docker"].startswith("FAIL"), output
        assert rows["CA trust in a container"].startswith("ok"), output
