"""What a person sends with a file, as every bridge publishes it (`Inbound.deliver`): the file fetched into the
bridge's folder, or the text saying why not; a file the platform cannot hand over yet waits, with its chat behind it,
for at most the bridge's patience."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from clawden.bus import ensure_streams, subjects
from clawden.bus import events as ev
from services.channels.bridge import BridgeStats, Capabilities, Inbound
from services.channels.retry import PlatformError
from services.channels.state import BridgeState
from tests.channels.harness import Bus
from tests.channels.memory_bridge import MemoryBridge
from tests.eventually import eventually

ROUTE = ev.Route(channel="memory", chat_id="c1")
OTHER = ev.Route(channel="memory", chat_id="c2")
ADA = ev.Sender(id="memory:ada", name="Ada")


class FileServer(MemoryBridge):
    """A platform whose file server answers as told, file by file: each url's next answers, then the file."""

    def __init__(self, answers: dict[str, list[PlatformError]]) -> None:
        super().__init__(Capabilities(max_text=100, max_download_bytes=1024))
        self.answers = answers
        self.asked: list[str] = []

    async def fetch_file(self, attachment: ev.Attachment, dest: Path) -> None:
        self.asked.append(attachment.url)
        if self.answers.get(attachment.url):
            raise self.answers[attachment.url].pop(0)
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(dest.write_bytes, f"the bytes of {attachment.url}".encode())


def unavailable() -> PlatformError:
    return PlatformError("the platform answered HTTP 503", "transient", code=503)


def message(id: str, text: str, *urls: str, route: ev.Route = ROUTE) -> ev.InboundMessage:
    files = tuple(ev.Attachment(name=f"{u}.txt", size=10, url=u) for u in urls)
    return ev.InboundMessage(route=route, message_id=id, sender=ADA, text=text, sent_at=1.0, attachments=files)


class MemoryBus(Bus):
    channel = "memory"


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[BridgeState]:
    s = await BridgeState.open(tmp_path / "memory.db")
    yield s
    await s.close()


@pytest.fixture
async def bus(nc: Client) -> MemoryBus:
    await ensure_streams(nc.jetstream())
    return MemoryBus(nc)


def inbound_for(bridge: FileServer, state: BridgeState, bus: Bus, tmp_path: Path, patience: float) -> Inbound:
    return Inbound(bus.js, "memory", state, tmp_path / "files", BridgeStats(), bridge=bridge, patience=patience)


async def nothing_queued(state: BridgeState) -> bool:
    return await state.queued_chats() == []


async def stored(bus: Bus, count: int) -> list[ev.Inbound]:
    async def enough() -> list[ev.Inbound] | None:
        found = [e for _, e in await bus.stored(subjects.inbound("memory"))]
        return found if len(found) >= count else None

    return await eventually(enough, 20, f"fewer than {count} events were stored")


async def test_a_file_that_keeps_failing_goes_without_after_the_patience_saying_why_and_its_chat_follows(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    bridge = FileServer({"f1": [unavailable() for _ in range(100)]})
    inbound = inbound_for(bridge, state, bus, tmp_path, patience=0.5)
    try:
        await inbound.deliver(message("m1", "what is in it?", "f1"))
        edit = ev.InboundEdit(route=ROUTE, message_id="m1", edit_id="e1", sender=ADA, text="what is in this?")
        await inbound.publish(edit)
        await inbound.deliver(message("m2", "hello?"))
        await inbound.deliver(message("m3", "meanwhile elsewhere", route=OTHER))
        first, *rest = await stored(bus, 4)
        waited, edited, second = rest
    finally:
        await inbound.close()
    assert isinstance(first, ev.InboundMessage) and first.text == "meanwhile elsewhere"
    assert isinstance(waited, ev.InboundMessage) and waited.text == "what is in it?"
    [missing] = waited.attachments
    assert missing.url == "" and missing.error.startswith("it could not be fetched: still failing after ")
    assert missing.error.endswith(" seconds (the platform answered HTTP 503)")
    assert edited == edit
    assert isinstance(second, ev.InboundMessage) and second.text == "hello?"
    assert len(bridge.asked) >= 2, "the file was not tried again while it waited"
    await eventually(lambda: nothing_queued(state), 5, "something stayed queued")


async def test_the_files_of_one_message_are_fetched_refused_or_waited_for_each_on_its_own(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    """The first file comes at once, the second is gone for good, the third comes after two 503s: the message waits
    for the third only, and then says why the second is not there."""
    gone = PlatformError("the platform answered HTTP 404", "permanent", code=404)
    bridge = FileServer({"f2": [gone], "f3": [unavailable(), unavailable()]})
    inbound = inbound_for(bridge, state, bus, tmp_path, patience=60)
    try:
        await inbound.deliver(message("m1", "three files", "f1", "f2", "f3"))
        [event] = await stored(bus, 1)
    finally:
        await inbound.close()
    assert isinstance(event, ev.InboundMessage)
    assert event.text == "three files"
    first, second, third = event.attachments
    assert (second.url, second.error) == ("", "it could not be fetched: the platform answered HTTP 404")
    assert first.url.startswith("file://") and third.url.startswith("file://") and not first.error + third.error
    assert await asyncio.to_thread(Path(third.url.removeprefix("file://")).read_bytes) == b"the bytes of f3"
    assert bridge.asked == ["f1", "f2", "f3", "f3", "f3"]  # what came is kept: only the third is asked again


async def test_what_waits_for_a_file_is_published_by_the_next_run(state: BridgeState, bus: Bus, tmp_path: Path) -> None:
    """The bridge stops while a message waits: the message stays in its state, and the next run fetches and
    publishes it before anything newer of its chat."""
    first_run = FileServer({"f1": [unavailable() for _ in range(100)]})
    inbound = inbound_for(first_run, state, bus, tmp_path, patience=60)
    await inbound.deliver(message("m1", "the report", "f1"))
    await inbound.close()
    assert await state.queued_chats() == ["c1"]
    inbound = inbound_for(FileServer({}), state, bus, tmp_path, patience=60)
    try:
        await inbound.resume()
        await inbound.deliver(message("m2", "did it arrive?"))
        waited, newer = await stored(bus, 2)
    finally:
        await inbound.close()
    assert isinstance(waited, ev.InboundMessage) and waited.attachments[0].url.startswith("file://")
    assert isinstance(newer, ev.InboundMessage) and newer.text == "did it arrive?"
    await eventually(lambda: nothing_queued(state), 5, "something stayed queued")
