"""People's edits and deletes on Discord reach the bus as edits and deletes of the message they were (real
NATS, the bridge process, the fake Discord: REST over HTTP, the Gateway over a real WebSocket)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from clawden.bus import events as ev
from services.channels.discord import Place, inbound_delete, inbound_edit
from tests.channels.discord_harness import DiscordBridge, DiscordBus
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.discord import BOT_ID, FakeDiscord


@pytest.fixture
def discord() -> Iterator[FakeDiscord]:
    fake = FakeDiscord().start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[DiscordBus]:
    b = await DiscordBus.open(nats_server.url)
    assert isinstance(b, DiscordBus)
    yield b
    await b.close()


@pytest.fixture
def bridge(tmp_path: Path, nats_server: NatsServer, discord: FakeDiscord) -> Iterator[DiscordBridge]:
    b = DiscordBridge(tmp_path / "home", nats_server.url, discord)
    yield b
    b.close()


async def test_an_edit_in_a_thread_and_a_delete_become_events_naming_the_message(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    general = discord.channel("general")
    bridge.start()
    first = discord.say(general, ada, f"<@{BOT_ID}> plan the trip")
    thread = discord.thread(general, "trip", ada)
    second = discord.say(thread, ada, f"<@{BOT_ID}> for 3 peple")
    discord.embed(thread, second)  # a partial update: a link preview, nobody edited anything
    discord.edit(thread, second, f"<@{BOT_ID}> for 3 people")
    discord.delete(general, first)

    async def all_in() -> list[Any] | None:
        found = await bus.inbound()
        return found if any(isinstance(e, ev.InboundDelete) for e in found) else None

    found = await eventually(all_in, timeout=20, message="the delete never reached the bus")

    messages = [e for e in found if isinstance(e, ev.InboundMessage)]
    [edit] = [e for e in found if isinstance(e, ev.InboundEdit)]  # the embed update, before it, made none
    [delete] = [e for e in found if isinstance(e, ev.InboundDelete)]
    threaded = next(m for m in messages if m.route.thread_id == thread)
    assert (edit.message_id, edit.route, edit.sender, edit.text) == (
        threaded.message_id,
        threaded.route,
        threaded.sender,
        "for 3 people",
    )
    top = next(m for m in messages if m.route.thread_id is None)
    assert (delete.message_id, delete.route, delete.sender) == (top.message_id, top.route, None)


FULL = {
    "id": "20",
    "channel_id": "10",
    "author": {"id": "7", "username": "ada"},
    "content": "for 3 people",
    "timestamp": "2026-01-01T10:00:00+00:00",
    "edited_timestamp": "2026-01-01T10:05:00.123456+00:00",
    "type": 0,
}


@pytest.mark.parametrize(
    ("update", "text"),
    [
        pytest.param(FULL, "for 3 people", id="an edit"),
        pytest.param({"id": "20", "channel_id": "10", "embeds": [{"type": "link"}]}, None, id="embeds only"),
        pytest.param(dict(FULL, edited_timestamp=None), None, id="not edited"),
        pytest.param({k: v for k, v in FULL.items() if k != "author"}, None, id="no author"),
        pytest.param(dict(FULL, author={"id": "8", "bot": True}), None, id="a bot's"),
        pytest.param(dict(FULL, edited_timestamp="yesterday"), "for 3 people", id="an unreadable stamp"),
    ],
)
def test_only_a_full_update_with_a_new_edited_timestamp_is_an_edit(update: dict[str, Any], text: str | None) -> None:
    found = inbound_edit(update, BOT_ID, Place(dm=False))

    assert (found.text if found else None) == text
    if found is not None:
        assert (found.message_id, found.edit_id) == ("10:20", update["edited_timestamp"])


def test_a_delete_in_a_thread_names_the_thread() -> None:
    delete = inbound_delete({"id": "20", "channel_id": "11", "guild_id": "1"}, Place(dm=False, parent="10"))

    assert (delete.message_id, delete.route.chat_id, delete.route.thread_id) == ("11:20", "10", "11")
