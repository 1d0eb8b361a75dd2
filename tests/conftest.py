"""Shared fixtures: a real nats-server per test on a free loopback port with a temp store; and the
`nats` and `docker` markers, put on each test by the fixtures it uses."""

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

pytest_plugins = ["tests.plugins.docker", "tests.servers.synapse.fixture", "tests.servers.mail.fixture"]

# A test using one of these starts a nats-server (directly, or through `clawden up`), needs Docker, or runs a
# whole program as a child process (Claude Code): it gets the marker, so `pytest -m "not docker and not nats and
# not process"` is the fast subset. A test that does so some other way carries the marker by hand.
MARKED_BY_FIXTURE = {
    "nats": frozenset({"nats_server", "secured_nats", "core", "stack", "up"}),
    "docker": frozenset({"docker_client", "agent_image", "synapse", "mail_server"}),
    "process": frozenset({"start_agent"}),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in MARKED_BY_FIXTURE.items():
            if used & fixtures and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


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
