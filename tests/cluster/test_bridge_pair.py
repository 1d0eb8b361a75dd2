"""Two instances of one bridge (the real Telegram bridge process, twice, with separate homes as on two
hosts) sharing its outbound durables: every message is sent once, each chat's in order, and when one
instance stops the other carries on (issue 25, item 6); one killed after the platform took a message and
before its ack does not have it posted twice by the other (their shared sent-log)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.channels.harness import BridgeProcess, Bus
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.telegram import FakeTelegram, Held

CHATS = 8  # one per lane or so: crc32 spreads them (subjects.outbound)
EACH = 10


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    f = FakeTelegram()
    f.start_in_thread()
    yield f
    f.stop_thread()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.open(nats_server.url)
    yield b
    await b.close()


@pytest.fixture
def pair(tmp_path: Path, nats_server: NatsServer, fake: FakeTelegram) -> Iterator[list[BridgeProcess]]:
    bridges = [BridgeProcess(tmp_path / name, nats_server.url, fake) for name in ("host-a", "host-b")]
    yield bridges
    for b in bridges:
        b.close()


def sent_by(bridge: BridgeProcess, state: str = "sent") -> set[str]:
    """The outbound ids this instance sent (or whose parts are in `state`), from its own sent-log."""
    with sqlite3.connect(bridge.home / "data" / "channels" / "telegram.db") as db:
        return {row[0] for row in db.execute("SELECT outbound_id FROM sends WHERE state = ?", (state,))}


async def test_two_instances_share_the_lanes_without_sending_anything_twice(
    fake: FakeTelegram, bus: Bus, pair: list[BridgeProcess]
) -> None:
    a, b = pair
    a.start()
    b.start()
    chats = [fake.private_chat(fake.user(f"P{i}")) for i in range(CHATS)]
    expected = {c["id"]: [f"chat {c['id']} line {n}" for n in range(EACH)] for c in chats}

    async def send(lines: range) -> None:
        for n in lines:
            for c in chats:
                await bus.send(c["id"], expected[c["id"]][n], id=f"out-{c['id']}-{n}")

    def delivered(upto: int) -> bool:
        return all(len(fake.texts(c)) >= upto for c in chats)

    await send(range(EACH // 2))
    await eventually(lambda: delivered(EACH // 2) and sent_by(a) and sent_by(b), 60, "both instances sent")
    assert a.stop() == 0  # SIGTERM: it finishes the message in hand, acks it, and leaves
    await send(range(EACH // 2, EACH))
    await eventually(lambda: delivered(EACH), 60, lambda: {c["id"]: fake.texts(c) for c in chats})

    for c in chats:
        assert fake.texts(c) == expected[c["id"]]  # each once, in the order sent
    by_a, by_b = sent_by(a), sent_by(b)
    assert not by_a & by_b
    assert len(by_a | by_b) == CHATS * EACH


async def test_a_message_the_platform_took_from_an_instance_killed_before_its_ack_is_not_posted_again(
    fake: FakeTelegram, bus: Bus, pair: list[BridgeProcess]
) -> None:
    for bridge in pair:
        bridge.start()
    chat = fake.private_chat(fake.user("Ada"))
    held = Held()
    fake.inject("sendMessage", held)
    await bus.send(chat["id"], "only once, please", id="out-once")
    assert await asyncio.to_thread(held.taken.wait, 30), "no instance sent the message"
    # Whichever instance took it logged the part 'sending' before the call: that one is killed now, with the
    # message in the chat and the answer never read, so nothing was acked.
    [taker] = [b for b in pair if "out-once" in sent_by(b, "sending")]
    taker.kill()
    [other] = [b for b in pair if b is not taker]

    [receipt] = await bus.wait_receipts(1, timeout=60)  # the other's, once the lane hands it the message again

    assert fake.texts(chat) == ["only once, please"]
    assert receipt.unconfirmed and not receipt.ok  # in flight when its instance died: reported, never repeated
    assert sent_by(other, "unconfirmed") == {"out-once"}
