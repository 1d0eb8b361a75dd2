"""Fixtures the channel tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.channels.harness import Bus
from tests.conftest import NatsServer
from tests.e2e.harness import Stack, start_stack
from tests.fakes.telegram import FakeTelegram
from tests.router.conftest import router as router_fixture


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeTelegram]:
    """A fresh fake Bot API server for the test, made with the arguments of its `fake` mark if it has one
    (`@pytest.mark.fake(privacy=False)`)."""
    mark = request.node.get_closest_marker("fake")
    f = FakeTelegram(**(mark.kwargs if mark else {})).start_in_thread()
    yield f
    f.stop_thread()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """The test's side of NATS for a bridge: what it publishes and receives (a module may have its own)."""
    b = await Bus.open(nats_server.url)
    yield b
    await b.close()


# The router as a real process, for the tests where a bridge and the router meet.
router = router_fixture


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    """A whole Clawden (`clawden up`, real agent containers, the fake model) for one end-to-end module."""
    s = start_stack(tmp_path_factory.mktemp("home"))
    yield s
    s.stop()
