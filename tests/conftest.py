"""Shared fixtures: a real nats-server per test on a free loopback port with a temp store."""

from __future__ import annotations

import os

# testcontainers reads these at import time; its reaper image cannot be pulled here, and its
# default gateway address would leave loopback.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from clawden import natsserver
from clawden.bus import connect

pytest_plugins = ["tests.plugins.docker"]


class NatsServer:
    def __init__(self, port: int, store: Path) -> None:
        self.port = port
        self.store = store
        self.url = f"nats://127.0.0.1:{port}"
        self.proc = natsserver.start(port, store)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.proc = natsserver.start(self.port, self.store)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(natsserver.free_port(), tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await connect(nats_server.url, "test")
    yield client
    await client.close()
