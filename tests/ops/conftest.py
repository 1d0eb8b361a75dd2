"""One whole Clawden for the operations tests (status, doctor), the core services without Docker for the
CLI's tests, and a secured NATS on its own."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clawden import config as config_mod
from clawden import natsauth, natsserver, setup
from tests.e2e.harness import Stack, start_stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("home"))
    yield s
    s.stop()


def fresh_home(home: Path, port: int | None = None) -> config_mod.Config:
    """`clawden init` in `home`, its NATS on `port` (a free one, where nothing listens, by default)."""
    setup.init(home)
    (home / "config.toml").write_text(
        f'install_id = "o{secrets.token_hex(4)}"\n[nats]\nport = {port or natsserver.free_port()}\n'
    )
    return config_mod.load(home, environ={})


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[config_mod.Config]:
    """An install whose NATS runs the config `clawden init` writes: nobody gets in without a seed."""
    cfg = fresh_home(tmp_path / "home")
    natsauth.write_server_config(cfg, ())
    proc = natsserver.start(cfg.nats.port, cfg.data_dir / "nats", config_file=natsauth.conf_path(cfg))
    yield cfg
    proc.terminate()
    proc.wait(10)


CORE = ("vault", "router", "scheduler", "approvals")  # every service but the runner, which needs Docker


@dataclass
class Core:
    """`clawden up` with the services that need no Docker: all but the runner."""

    home: Path
    proc: subprocess.Popen[bytes]

    @property
    def cfg(self) -> config_mod.Config:
        return config_mod.load(self.home, environ={})

    def env(self) -> dict[str, str]:
        return dict(os.environ, CLAWDEN_HOME=str(self.home))

    def clawden(self, *args: str, value: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clawden", *args],
            env=self.env(),
            input=value,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="package")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    home = tmp_path_factory.mktemp("core") / "home"
    fresh_home(home)
    key = home / "keys" / "anthropic"
    key.write_text(f"sk-ant-api03-{secrets.token_urlsafe(24)}\n")
    key.chmod(0o600)
    log = home / "up.log"
    with log.open("wb") as out:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(
            [sys.executable, "-m", "clawden", "up", *(f"--service={s}" for s in CORE)],
            env=dict(os.environ, CLAWDEN_HOME=str(home)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while "all services ready" not in log.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.1)  # waiting on another process's console: no event to wait on here
    yield Core(home, proc)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
