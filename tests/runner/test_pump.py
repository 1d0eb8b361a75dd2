"""What the agent says reaches its chat: a reply NATS did not take as its container died goes out once NATS answers,
and a row the agent wrote that is no row holds back none of the replies after it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.bus.streams import ensure_streams
from clawden.config import Config, RunnerConfig
from clawden.runtime import ServiceContext
from services.runner.containers import Died, Docker
from services.runner.service import Live, Runner
from services.runner.sessions import SessionIndex, SessionInfo, prepare_folder
from tests.eventually import eventually

MINE = SessionInfo("s-1", "main", ev.Route(channel="local", chat_id="kitchen"))
ROUTING = sessiondb.Routing("", "")


class Bus:
    """JetStream as the runner uses it, whose publishes time out while `away` (NATS restarting, a stream without a
    leader): nats-py raises its TimeoutError after the publish's 5 s."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.away = False

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        if self.away:
            raise NatsTimeoutError
        return await self.js.publish(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.js, name)


class GoneContainers:
    """Docker for a container that has died already: nothing to stop, no last output."""

    async def stop_and_remove(self, container_id: str, timeout: int = 5) -> int | None:
        return -1

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        return ""


@pytest.fixture
async def bus(nc: Client) -> Bus:
    js = nc.jetstream()
    await ensure_streams(js)
    return Bus(js)


@pytest.fixture
async def runner(bus: Bus, nc: Client, tmp_path: Path) -> AsyncIterator[Runner]:
    index = await SessionIndex.start(tmp_path / "data" / "runner.db")
    await index.run(index.put, MINE)
    cfg = Config(home=str(tmp_path), runner=RunnerConfig(safety_poll=0.1))
    ctx = types.SimpleNamespace(config=cfg, js=bus, nc=nc, stopping=asyncio.Event())
    runner = Runner(cast(ServiceContext, ctx), cast(Docker, GoneContainers()), index)
    yield runner
    ctx.stopping.set()
    await runner.shutdown()
    await index.stop()


def session(runner: Runner) -> Path:
    folder = runner.session_dir(MINE)
    prepare_folder(folder, None)
    return folder


async def published(runner: Runner) -> int:
    return (await runner.ctx.js.stream_info("CLAWDEN_OUTBOUND")).state.messages


async def test_a_reply_nats_did_not_take_as_its_container_died_goes_out_once_nats_answers(
    runner: Runner, bus: Bus
) -> None:
    folder = session(runner)
    sessiondb.write_outbound(folder, id="r-1", kind="chat", content={"text": "the last word"}, routing=ROUTING)
    live = Live(MINE, folder, container_id="c-1")
    runner.live[MINE.id] = live
    bus.away = True

    await runner._handle_death(live, Died(MINE.id, "c-1", 0))  # its last pump: NATS does not answer
    assert MINE.id not in runner.live and await published(runner) == 0

    bus.away = False
    housekeeping = asyncio.create_task(runner.housekeeping())
    try:
        await eventually(lambda: went_out(runner), timeout=5, message="the reply never went out")
    finally:
        runner.ctx.stopping.set()
        await housekeeping
    assert sessiondb.read_new_outbound(folder) == []
    assert await published(runner) == 1


async def went_out(runner: Runner) -> bool:
    return await published(runner) == 1


def written_by_hand(folder: Path, seq: int, content: str) -> None:
    """A row as the agent can write outbound.db past `write_outbound` (it writes the file as it likes)."""
    with contextlib.closing(sqlite3.connect(folder / sessiondb.OUTBOUND)) as conn, conn:
        conn.execute(
            "INSERT INTO messages_out (id, seq, created_at, kind, content) VALUES (?, ?, 1.0, 'chat', ?)",
            (f"by-hand-{seq}", seq, content),
        )


async def test_a_row_that_is_no_row_is_logged_once_and_the_replies_after_it_go_out(
    runner: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    folder = session(runner)
    written_by_hand(folder, 3, "{not json")
    sessiondb.write_outbound(folder, id="r-1", kind="chat", content={"text": "after"}, routing=ROUTING)

    with caplog.at_level(logging.WARNING, logger="clawden.runner"):
        await runner.pump(MINE.id)
        await runner.pump(MINE.id)  # a ring later: the row is behind the cursor now

    assert await published(runner) == 1
    assert sessiondb.read_new_outbound(folder) == []
    [said] = [r.getMessage() for r in caplog.records if "#3" in r.getMessage()]
    assert said.startswith("session s-1: outbound #3 unreadable, not published: its content is no JSON")
