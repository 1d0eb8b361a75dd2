"""A Telegram group as Telegram really delivers it (privacy mode on, as for every new bot), through the real
bridge and router processes on real NATS: how a group reaches the agent, and what `clawden chats list` says."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clawden import setup
from tests.channels.harness import BridgeProcess, until
from tests.conftest import NatsServer
from tests.fakes.telegram import FakeTelegram
from tests.router.conftest import RouterProcess, start_router, stop, wait_ready


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    f = FakeTelegram().start_in_thread()
    yield f
    f.stop_thread()


@pytest.fixture
async def router(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[RouterProcess]:
    home = tmp_path / "home"
    setup.init(home)
    r = RouterProcess(home, nats_server.url, start_router(home, nats_server.url))
    try:
        await wait_ready(r)
        yield r
    finally:
        stop(r.proc)


@pytest.fixture
def bridge(router: RouterProcess, fake: FakeTelegram) -> Iterator[BridgeProcess]:
    b = BridgeProcess(router.home, router.url, fake).start()
    yield b
    b.close()


def chats_list(router: RouterProcess) -> str:
    done = subprocess.run([sys.executable, "-m", "clawden", "chats", "list"], env=router.env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_group_in_privacy_mode_shows_in_chats_list_once_someone_asks_with_ask_at_the_bot(
        fake: FakeTelegram, router: RouterProcess, bridge: BridgeProcess) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family")
    fake.send(family, ada, "@clawden_test_bot are you there?")  # Telegram keeps it from the bot
    listed = chats_list(router)
    assert str(family["id"]) not in listed
    assert "telegram groups: privacy mode on: in groups @clawden_test_bot gets only /ask@clawden_test_bot" in listed
    fake.send(family, ada, "/ask@clawden_test_bot are you there?")
    await until(lambda: str(family["id"]) in chats_list(router), 30, "the group never reached the router")
    [row] = [line for line in chats_list(router).splitlines() if str(family["id"]) in line]
    assert "Family" in row and "group" in row
