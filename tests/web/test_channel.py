"""The `web` channel against a real NATS and a real web.db, with JetStream's answers lost on the way: a person's
line is stored on the bus once and kept once; a reply whose receipt NATS did not take still reaches open pages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext

from clawden.bus import bind, consume, ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.streams import bridge_lanes
from services.web.channel import CHANNEL, Hub, WebChannel
from services.web.store import WebStore

CHAT = "c1"


class Flaky:
    """JetStream, but the first publish on `subject` fails with a timeout: after it was stored (its answer lost on
    the way back) or before (NATS away for a moment)."""

    def __init__(self, js: JetStreamContext, subject: str, *, stored: bool) -> None:
        self.js, self.subject, self.stored = js, subject, stored
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.js, name)

    async def publish(self, subject: str, *args: Any, **kwargs: Any) -> Any:
        if subject == self.subject and not self.failed:
            self.failed = True
            if self.stored:
                await self.js.publish(subject, *args, **kwargs)
            raise nats.errors.TimeoutError
        return await self.js.publish(subject, *args, **kwargs)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[WebStore]:
    started = await WebStore.start(tmp_path / "web.db")
    yield started
    await started.stop()


async def stored_lines(js: JetStreamContext) -> list[ev.InboundMessage]:
    """Every inbound message of the web channel JetStream holds."""
    sub = await js.pull_subscribe(subjects.inbound(CHANNEL), stream="CLAWDEN_INBOUND")
    found: list[ev.InboundMessage] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(16, timeout=0.5)
            except nats.errors.TimeoutError:
                return found
            for m in msgs:
                event = ev.decode(m.data)
                assert isinstance(event, ev.InboundMessage)
                found.append(event)
                await m.ack()
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize("stored", [True, False], ids=["answer-lost", "nats-away"])
async def test_a_typed_line_whose_first_publish_timed_out_is_on_the_bus_once_and_in_the_history_once(
    nc: Client, store: WebStore, stored: bool
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    hub = Hub()
    page = hub.watch(CHAT)
    channel = WebChannel(Flaky(js, subjects.inbound(CHANNEL), stored=stored), store, hub)  # type: ignore[arg-type]
    shown = await channel.say(CHAT, "web:ada", "ada", "water the plants", "m1")
    assert shown is not None and shown.text == "water the plants"
    assert await channel.say(CHAT, "web:ada", "ada", "water the plants", "m1") is None  # the page sent it again
    assert [(e.message_id, e.text) for e in await stored_lines(js)] == [("m1", "water the plants")]
    assert [(m.id, m.text) for m in await store.run(store.history, CHAT)] == [("m1", "water the plants")]
    assert page.get_nowait()["id"] == "m1" and page.empty()


async def test_a_reply_kept_whose_receipt_nats_did_not_take_still_reaches_the_open_page(
    nc: Client, store: WebStore
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    hub = Hub()
    page = hub.watch(CHAT)
    flaky = Flaky(js, subjects.receipt(CHANNEL), stored=False)
    channel = WebChannel(flaky, store, hub)  # type: ignore[arg-type]
    reply = ev.OutboundMessage(id="o1", route=ev.Route(channel=CHANNEL, chat_id=CHAT), text="watered")
    await publish(js, subjects.outbound(CHANNEL, CHAT), reply, msg_id=f"s1:{reply.id}")
    stopping = asyncio.Event()
    lanes = [await bind(js, lane, batch=1) for lane in bridge_lanes(CHANNEL)]
    async with asyncio.TaskGroup() as tg:
        for puller in lanes:
            tg.create_task(consume(puller, ev.OUTBOUND_DECODER, channel.handle, stopping=stopping))
        try:
            told = await asyncio.wait_for(page.get(), 15)
        finally:
            stopping.set()
    assert flaky.failed
    assert (told["id"], told["text"]) == ("o1", "watered")
    assert [m.text for m in await store.run(store.history, CHAT)] == ["watered"]
