"""bin/setup as a new user runs it: one who may not use the Docker engine already running is told how to fix that at
once, rather than having a second engine started under them that fails a minute later."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parents[2]
SOCKET = Path("/var/run/docker.sock")


def engine_running() -> bool:
    try:
        docker.from_env(timeout=5).ping()
    except Exception:
        return False
    return True


@pytest.mark.skipif(os.getuid() != 0 or not SOCKET.is_socket(), reason="another user is made by runuser, as root")
def test_a_user_outside_the_docker_group_is_told_to_join_it() -> None:
    assert engine_running() and SOCKET.stat().st_mode & 0o002 == 0  # running, and not everyone's to use
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "bash", str(ROOT / "bin" / "setup")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "HOME": "/nonexistent", "TMPDIR": "/tmp"},
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "a Docker engine is running, but nobody may not use it (/var/run/docker.sock)." in done.stderr
    assert "sudo usermod -aG docker nobody" in done.stderr
    assert "starting dockerd" not in done.stdout
