"""People's edits on Telegram reach the bus as edits of the message they were (real NATS, the bridge
process, the fake Bot API). Telegram sends bots no update for a deleted message, so there are no deletes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clawden.bus import events as ev
from clawden.bus import subjects
from services.channels.telegram import ALLOWED_UPDATES
from tests.channels.harness import BridgeProcess, Bus, until
from tests.conftest import NatsServer
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.nats


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.open(nats_server.url)
    yield b
    await b.close()


@pytest.fixture
def bridge(tmp_path: Path, nats_server: NatsServer, fake: FakeTelegram) -> Iterator[BridgeProcess]:
    b = BridgeProcess(tmp_path / "home", nats_server.url, fake)
    yield b
    b.close()


async def test_an_edited_message_becomes_an_edit_of_the_original(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    sent = fake.send(chat, ada, "whats 2+")
    fake.edit(chat, sent["message_id"], "whats 2+2")
    fake.edit(chat, sent["message_id"], "whats 2+3")
    await until(lambda: fake.pending_updates == 0 and fake.confirmed_offset > 0, 15, "updates never confirmed")

    stored = await bus.stored(subjects.inbound("telegram"))

    [message, first, second] = [event for _, event in stored]
    assert isinstance(message, ev.InboundMessage)
    assert isinstance(first, ev.InboundEdit) and isinstance(second, ev.InboundEdit)
    assert (first.message_id, first.text, first.route) == (message.message_id, "whats 2+2", message.route)
    assert first.sender == message.sender and second.text == "whats 2+3"
    assert len({h["Nats-Msg-Id"] for h, _ in stored}) == 3  # two edits of one message stay two


def test_the_bridge_asks_telegram_for_edits() -> None:
    # The fake, like Telegram, creates no update of a kind the bot did not ask for.
    assert "edited_message" in ALLOWED_UPDATES
