"""One whole Clawden for the operations tests (status, doctor), and a secured NATS on its own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
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
    (home / "config.toml").write_text(f'install_id = "o{secrets.token_hex(4)}"\n'
                                      f"[nats]\nport = {port or natsserver.free_port()}\n")
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
