"""The Telegram bridge as it runs (`clawden run channel@telegram`), with real NATS and the fake Bot API:
nothing lost, nothing repeated, every failure reported."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import nats
import pytest

from clawden import config as config_mod
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import Nothing
from clawden.bus.ctl.common import PING
from clawden.cli import status
from clawden.natsserver import free_port
from clawden.runtime import EX_CONFIG
from services.channels.retry import PlatformError
from services.channels.telegram import ALLOWED_UPDATES, CAPABILITIES, TelegramBridge
from tests.channels.harness import BridgeProcess, Bus, until
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.telegram import BadGateway, Clock, Delay, Drop, Error, FakeTelegram, Fault, Hang, png


@pytest.fixture
def bridge(tmp_path: Path, nats_server: NatsServer, fake: FakeTelegram) -> Iterator[BridgeProcess]:
    b = BridgeProcess(tmp_path / "home", nats_server.url, fake)
    yield b
    b.close()
    assert fake.token not in b.output(), "the bot token reached the log"


def texts_of(fake: FakeTelegram, chat: dict[str, object]) -> list[str]:
    return fake.texts(chat)  # type: ignore[arg-type]


# --- inbound ------------------------------------------------------------------------------------------------


async def test_a_private_message_is_stored_once_under_its_natural_key(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    sent = fake.send(chat, ada, "what is on today?")
    await until(lambda: fake.confirmed_offset > 0, 15, "the update was never confirmed")
    [(headers, event)] = await bus.stored(subjects.inbound("telegram"))
    assert headers["Nats-Msg-Id"] == f"telegram:{chat['id']}:{sent['message_id']}"
    assert isinstance(event, ev.InboundMessage)
    assert (event.text, event.mentioned, event.is_group, event.sender.id) == (
        "what is on today?",
        True,
        False,
        f"telegram:{ada['id']}",
    )


async def test_in_privacy_mode_a_group_reaches_the_bot_by_ask_and_by_replies_to_it(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family")
    bridge.start()
    await bus.send(family["id"], "Good morning, family", id="morning")
    await bus.wait_receipts(1)
    [morning] = fake.bot_messages(family)
    fake.send(family, ada, "dinner at 8?")
    fake.send(family, ada, "@clawden_test_bot book a table")  # Telegram keeps this from a bot in privacy mode
    fake.send(family, ada, "/ask@clawden_test_bot book a table")
    fake.send(family, ada, "and a cake", reply_to=morning["message_id"])
    await until(lambda: fake.confirmed_offset > 0 and fake.pending_updates == 0, 15)
    events = await bus.inbound()
    assert [(e.text, e.is_group, e.mentioned) for e in events] == [
        ("book a table", True, True),
        ("and a cake", True, True),
    ]
    assert len(fake.withheld) == 2


@pytest.mark.fake(privacy=False)
async def test_with_privacy_mode_off_every_group_message_arrives_saying_whether_the_bot_was_addressed(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family")
    bridge.start()
    fake.send(family, ada, "dinner at 8?")
    fake.send(family, ada, "@clawden_test_bot book a table")
    await until(lambda: fake.confirmed_offset > 0 and fake.pending_updates == 0, 15)
    events = await bus.inbound()
    assert [(e.text, e.is_group, e.mentioned) for e in events] == [
        ("dinner at 8?", True, False),
        ("@clawden_test_bot book a table", True, True),
    ]
    assert "privacy mode off" in bridge.output()


async def test_an_update_is_confirmed_to_telegram_only_after_jetstream_stored_it(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess, nats_server: NatsServer
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    fake.send(chat, ada, "first")
    await until(lambda: fake.confirmed_offset > 0, 15)
    confirmed = fake.confirmed_offset
    nats_server.stop()
    fake.send(chat, ada, "while NATS is away")
    # The bridge fetched it and cannot store it: it says so, and it confirms nothing until it has.
    await until(lambda: "cannot store inbound" in bridge.output(), 30, "the bridge never tried to store it")
    assert fake.confirmed_offset == confirmed
    nats_server.restart()
    await until(lambda: fake.confirmed_offset > confirmed, 30, "the update was never confirmed after NATS returned")
    assert [e.text for e in await bus.inbound()] == ["first", "while NATS is away"]


async def test_messages_sent_while_the_bridge_was_down_are_published_once_when_it_returns(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    fake.send(chat, ada, "before")
    await until(lambda: fake.confirmed_offset > 0, 15)
    assert bridge.stop() == 0
    for text in ("while", "you", "were", "away"):
        fake.send(chat, ada, text)
    bridge.start()
    # Confirmed (no update left with Telegram) means stored in JetStream first.
    await until(lambda: fake.pending_updates == 0, 15, "the bridge did not catch up")
    events = await bus.inbound()
    assert [e.text for e in events] == ["before", "while", "you", "were", "away"]
    assert len({e.key for e in events}) == 5


@pytest.mark.fake(clock=Clock())
async def test_messages_telegram_dropped_during_a_day_long_outage_are_counted_and_logged(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess, nats_server: NatsServer
) -> None:
    clock = fake.clock
    assert isinstance(clock, Clock)
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    fake.send(chat, ada, "before")
    await until(lambda: fake.confirmed_offset > 0, 15)
    assert bridge.stop() == 0
    fake.send(chat, ada, "are you there?")
    fake.send(chat, ada, "hello?")
    clock.advance(25 * 3600)  # Telegram has dropped both by now
    fake.send(chat, ada, "a day later")
    bridge.start()
    await until(lambda: fake.pending_updates == 0 and "Telegram dropped" in bridge.output(), 15, bridge.output)
    await until(lambda: fake.confirmed_offset > fake.expired[-1]["update_id"] + 1, 15)
    published = await bus.inbound()
    assert [e.text for e in published if isinstance(e, ev.InboundMessage)] == ["before", "a day later"]
    [lost] = [e for e in published if isinstance(e, ev.MessagesLost)]  # for the router to tell the owners
    assert lost.channel == "telegram" and lost.count == 2
    assert "Telegram dropped 2 update(s) the bridge never fetched" in bridge.output()
    assert (await delivery_counts(nats_server.url))["expired"] == 2
    assert "2 incoming message(s) expired" in status.render_deliveries([await delivery_counts(nats_server.url)])


async def test_an_attachment_is_fetched_into_the_bridges_folder(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    fake.send(chat, ada, "the report", document=("q3 report.pdf", b"%PDF-1.4 fake", "application/pdf"))
    await until(lambda: fake.confirmed_offset > 0, 15)
    [event] = await bus.inbound()
    [attachment] = event.attachments
    assert (attachment.name, attachment.mime, attachment.size) == ("q3 report.pdf", "application/pdf", 13)
    path = Path(url2pathname(urlsplit(attachment.url).path))
    assert await asyncio.to_thread(path.read_bytes) == b"%PDF-1.4 fake"
    assert path.is_relative_to(bridge.home / "data" / "channels" / "telegram" / "files")


async def test_a_file_telegram_gives_no_path_for_still_delivers_the_message_saying_it_was_too_large(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    sent = fake.send(chat, ada, "the holiday video", document=("trip.mp4", b"\x00" * 64, "video/mp4"))
    fake.drop_file_path(sent["document"]["file_id"])  # getFile answers without file_path, as for files over 20 MB
    fake.send(chat, ada, "did it arrive?")
    await until(lambda: fake.confirmed_offset > sent["message_id"] and fake.pending_updates == 0, 15)
    first, second = await bus.inbound()
    assert first.text == "the holiday video"
    assert [(a.name, a.url, a.error) for a in first.attachments] == [
        ("trip.mp4", "", "it was too large to fetch: Telegram lets bots download files of at most 20 MB")
    ]
    assert second.text == "did it arrive?"


async def test_a_file_telegram_cannot_hand_over_for_a_while_waits_in_its_chat_and_arrives(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    """Telegram's file server answers 502 for longer than the bridge's first try: the message waits for its file,
    and its chat's next message waits behind it, while another chat's message goes at once."""
    ada, bob = fake.user("Ada"), fake.user("Bob")
    with_ada, with_bob = fake.private_chat(ada), fake.private_chat(bob)
    fake.inject("file", *[BadGateway()] * 3)
    bridge.start()
    fake.send(with_ada, ada, "the report", document=("q3.pdf", b"%PDF-1.4 fake", "application/pdf"))
    fake.send(with_ada, ada, "did it arrive?")
    await until(lambda: len(fake.calls_to("file")) >= 1, 15, "the file was never asked for")
    fake.send(with_bob, bob, "hello")
    await until(lambda: len(fake.calls_to("file")) == 4, 30, lambda: f"{fake.calls_to('file')}")
    await eventually(lambda: _inbound_count(bus, 3), 15, "not every message was stored")
    got = await bus.inbound()
    assert [e.text for e in got] == ["hello", "the report", "did it arrive?"]
    path = Path(url2pathname(urlsplit(got[1].attachments[0].url).path))
    assert await asyncio.to_thread(path.read_bytes) == b"%PDF-1.4 fake"
    assert [c.outcome for c in fake.calls_to("file")] == ["BadGateway"] * 3 + ["ok"]


async def test_a_message_waiting_for_its_file_outlives_a_killed_bridge(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess, nats_server: NatsServer
) -> None:
    """Telegram is told the update is taken once the message waits in the bridge's own state: a bridge killed
    meanwhile finds it there when it comes back, and fetches the file then. `clawden status` says a chat waits."""
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    fake.inject("file", *[BadGateway()] * 1000)
    bridge.start()
    sent = fake.send(chat, ada, "the report", document=("q3.pdf", b"%PDF-1.4 fake", "application/pdf"))
    await until(lambda: fake.confirmed_offset > 0 and len(fake.calls_to("file")) >= 2, 15, "never confirmed")
    waiting = "telegram: messages of 1 chat(s) wait for files the platform has not handed over yet"
    assert waiting in status.render_deliveries([await delivery_counts(nats_server.url)])
    bridge.kill()
    assert await bus.inbound() == []
    bridge.start()
    asked = len(fake.calls_to("file"))
    await until(lambda: len(fake.calls_to("file")) > asked, 15, "the file was not asked for again")
    assert waiting in status.render_deliveries([await delivery_counts(nats_server.url)])  # read back from its state
    fake.clear_faults()
    await eventually(lambda: _inbound_count(bus, 1), 30, "the message never came")
    assert (await delivery_counts(nats_server.url))["waiting_on_files"] == 0
    [event] = await bus.inbound()
    assert (event.text, event.message_id) == ("the report", f"{chat['id']}:{sent['message_id']}")
    path = Path(url2pathname(urlsplit(event.attachments[0].url).path))
    assert await asyncio.to_thread(path.read_bytes) == b"%PDF-1.4 fake"


async def _inbound_count(bus: Bus, count: int) -> bool:
    return len(await bus.inbound()) >= count


@pytest.mark.fake(private_topics=True)
async def test_a_message_in_a_private_chat_topic_keeps_its_topic_and_the_answer_goes_there(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    trip = fake.topic(chat, ada, "Trip")
    bridge.start()
    fake.send(chat, ada, "book the train", thread_id=trip)
    await until(lambda: fake.pending_updates == 0 and fake.confirmed_offset > 0, 15)
    [event] = [e for e in await bus.inbound() if isinstance(e, ev.InboundMessage)]
    assert (event.route.thread_id, event.supports_threads, event.reply_to) == (str(trip), True, None)
    await bus.send(chat["id"], "booked", id="train", thread_id=event.route.thread_id)
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok, receipt.error
    [answer] = fake.bot_messages(chat)
    assert (answer["text"], answer["message_thread_id"]) == ("booked", trip)


async def test_an_album_arrives_as_one_message_with_every_photo(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    parts = fake.send_album(chat, ada, [png(800, 600), png(600, 800), png(1024, 768)], caption="our holiday")
    fake.send(chat, ada, "which one is best?")
    await until(lambda: fake.pending_updates == 0, 15, "the bridge never confirmed the album")
    album, question = await bus.inbound()
    assert (album.text, album.message_id, question.text) == (
        "our holiday",
        f"{chat['id']}:{parts[0]['message_id']}",
        "which one is best?",
    )
    assert [a.size for a in album.attachments] == [len(png(800, 600)), len(png(600, 800)), len(png(1024, 768))]
    assert all(a.url.startswith("file://") for a in album.attachments)
    # An album last in its poll waits for parts still to come, then goes out whole, once.
    fake.send_album(chat, ada, [png(640, 480), png(480, 640)])
    await until(lambda: fake.pending_updates == 0, 15, "the bridge never confirmed the second album")
    *_, last = await bus.inbound()
    assert (last.text, len(last.attachments)) == ("", 2)
    assert len(await bus.inbound()) == 3


async def test_an_animation_is_fetched_once_though_it_also_comes_as_a_document(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    fake.send(chat, ada, "look", animation=("dance.mp4", b"\x00\x00\x00\x18ftypmp42", "video/mp4"))
    await until(lambda: fake.confirmed_offset > 0, 15)
    [event] = await bus.inbound()
    assert [a.name for a in event.attachments] == ["dance.mp4"]
    assert len(fake.calls_to("getFile")) == 1


# --- outbound -----------------------------------------------------------------------------------------------


async def test_an_answer_is_sent_and_receipted_with_its_platform_id(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    question = fake.send(chat, ada, "hi")
    bridge.start()
    await bus.send(
        chat["id"], "hello Ada", id="s1:r1", reply_to=f"{chat['id']}:{question['message_id']}", seq=3, session_id="s1"
    )
    [receipt] = await bus.wait_receipts(1)
    [message] = fake.bot_messages(chat)
    assert message["text"] == "hello Ada" and message["reply_to_message"]["message_id"] == question["message_id"]
    assert receipt == ev.DeliveryReceipt(
        outbound_id="s1:r1",
        route=ev.Route(channel="telegram", chat_id=str(chat["id"])),
        ok=True,
        session_id="s1",
        seq=3,
        platform_message_id=f"{chat['id']}:{message['message_id']}",
        part_ids=(f"{chat['id']}:{message['message_id']}",),
    )


async def test_a_long_answer_arrives_split_at_paragraphs_and_in_order(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    paragraphs = [f"Paragraph {i}: " + "lorem ipsum " * 150 for i in range(6)]  # ~1.8k characters each
    bridge.start()
    await bus.send(chat["id"], "\n\n".join(paragraphs), id="long")
    [receipt] = await bus.wait_receipts(1)
    texts = texts_of(fake, chat)
    # Two paragraphs fit in 4096 characters, three do not: each part is two whole paragraphs.
    assert texts == ["\n\n".join(paragraphs[i : i + 2]).rstrip() for i in (0, 2, 4)]
    assert receipt.ok and len(receipt.part_ids) == 3


async def test_a_card_becomes_buttons_and_a_press_becomes_an_inbound_action(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    card = ev.Card(
        title="Allow GitHub?",
        body="GET api.github.com/user",
        buttons=(
            ev.Button(id="approve", label="Approve", style="primary"),
            ev.Button(id="deny", label="Deny", style="danger"),
        ),
    )
    bridge.start()
    await bus.send(chat["id"], "The agent asks:", id="approval:ap-1", card=card)
    await bus.wait_receipts(1)
    [message] = fake.bot_messages(chat)
    assert message["text"] == "The agent asks:\n\nAllow GitHub?\n\nGET api.github.com/user"
    buttons = message["reply_markup"]["inline_keyboard"][0]
    assert [b["text"] for b in buttons] == ["Approve", "Deny"]
    assert all(len(b["callback_data"].encode()) <= 64 for b in buttons)
    query = fake.click(chat, message["message_id"], ada, button="Deny")
    await until(lambda: fake.answered(query) is not None, 15, "the click was never answered")
    [action] = [e for e in await bus.inbound() if isinstance(e, ev.InboundAction)]
    assert (action.card_id, action.button_id, action.sender.id, action.message_id) == (
        "approval:ap-1",
        "deny",
        f"telegram:{ada['id']}",
        f"{chat['id']}:{message['message_id']}",
    )
    assert fake.answered(query) == {}


async def test_a_press_on_a_button_nobody_knows_is_answered_as_expired_and_goes_nowhere(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    await bus.send(chat["id"], "old card", id="old", card=ev.Card(title="?", buttons=(ev.Button(id="y", label="Y"),)))
    await bus.wait_receipts(1)
    [message] = fake.bot_messages(chat)
    query = fake.click(chat, message["message_id"], ada, data="AAAAAAAAAAAAAAAA:0")
    await until(lambda: fake.answered(query) is not None, 15)
    assert fake.answered(query) == {"text": "This button is no longer active."}
    assert not [e for e in await bus.inbound() if isinstance(e, ev.InboundAction)]


@pytest.mark.fake(clock=Clock())
async def test_a_press_made_while_the_bridge_was_down_still_counts_though_telegram_refuses_the_late_answer(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    clock = fake.clock
    assert isinstance(clock, Clock)
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    await bus.send(chat["id"], "Lunch?", id="lunch", card=ev.Card(title="?", buttons=(ev.Button(id="y", label="Y"),)))
    await bus.wait_receipts(1)
    [card] = fake.bot_messages(chat)
    assert bridge.stop() == 0
    query = fake.click(chat, card["message_id"], ada)
    clock.advance(60)  # the spinner is long gone: Telegram no longer takes an answer
    fake.send(chat, ada, "and dessert?")
    bridge.start()
    await until(lambda: fake.pending_updates == 0 and fake.confirmed_offset > 0, 15)
    await until(lambda: len(fake.calls_to("answerCallbackQuery")) == 1, 15)
    assert [c.outcome for c in fake.calls_to("answerCallbackQuery")] == ["error 400"]
    assert fake.answered(query) is None
    events = await bus.inbound()
    assert [(type(e).__name__, getattr(e, "button_id", getattr(e, "text", ""))) for e in events] == [
        ("InboundAction", "y"),
        ("InboundMessage", "and dessert?"),
    ]


async def test_a_first_message_to_a_user_who_never_wrote_to_the_bot_fails_saying_why(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    bob = fake.user("Bob")  # never pressed Start
    bridge.start()
    await bus.send(bob["id"], "hello Bob", id="hello")
    [receipt] = await bus.wait_receipts(1)
    assert not receipt.ok and not receipt.unconfirmed
    assert receipt.error == "Forbidden: bot can't initiate conversation with a user"
    assert [c.outcome for c in fake.calls_to("sendMessage")] == ["error 403"]  # tried once: retrying cannot help


async def test_an_edit_and_a_reaction_reach_the_message(fake: FakeTelegram, bus: Bus, bridge: BridgeProcess) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    route = ev.Route(channel="telegram", chat_id=str(chat["id"]))
    bridge.start()
    await bus.send(chat["id"], "Approve?", id="card", card=ev.Card(title="t", buttons=(ev.Button(id="y", label="Y"),)))
    [receipt] = await bus.wait_receipts(1)
    target = receipt.platform_message_id
    assert target is not None
    edit = ev.OutboundEdit(id="edit-1", route=route, target_message_id=target, text="Approved by Ada")
    await bus.publish(edit, "edit-1")
    await bus.publish(
        ev.OutboundEdit(id="edit-2", route=route, target_message_id=target, text="Approved by Ada"), "edit-2"
    )  # the same edit again: Telegram says "not modified", which is fine
    await bus.publish(ev.OutboundReaction(id="react-1", route=route, target_message_id=target, emoji="👍"), "react-1")
    await bus.publish(ev.OutboundReaction(id="react-2", route=route, target_message_id=target, emoji="🦜"), "react-2")
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(5)}
    [message] = fake.bot_messages(chat)
    assert message["text"] == "Approved by Ada" and "reply_markup" not in message
    assert message["_bot_reactions"] == ["👍"]
    assert receipts["edit-1"].ok and receipts["edit-2"].ok and receipts["react-1"].ok
    assert not receipts["react-2"].ok and "Telegram takes no 🦜 reaction; it accepts only 👍 👎" in (
        receipts["react-2"].error or ""
    )


async def test_a_reaction_telegram_refuses_is_sent_as_the_nearest_one_it_accepts(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    route = ev.Route(channel="telegram", chat_id=str(chat["id"]))
    bridge.start()
    await bus.send(chat["id"], "Done?", id="m1")
    [receipt] = await bus.wait_receipts(1)
    assert receipt.platform_message_id is not None
    for i, emoji in enumerate(["✅", "👍🏽", "❤️"]):  # REACTION_INVALID as they are (see the fake)
        await bus.publish(
            ev.OutboundReaction(id=f"r{i}", route=route, target_message_id=receipt.platform_message_id, emoji=emoji),
            f"r{i}",
        )
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(4)}
    assert all(receipts[f"r{i}"].ok for i in range(3)), receipts
    # A bot's reactions replace each other (setMessageReaction), in the order sent: the last one stays.
    assert fake.bot_messages(chat)[0]["_bot_reactions"] == ["❤"]


async def test_an_edit_of_a_message_sent_with_a_file_changes_its_text_and_of_a_file_alone_its_caption(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    route = ev.Route(channel="telegram", chat_id=str(chat["id"]))
    outbox = bridge.home / "sessions" / "main" / "s1" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "chart.png").write_bytes(png(800, 600))
    bridge.start()
    await bus.send(chat["id"], "Sales, draft", id="m1", files=(str(outbox / "chart.png"),))
    await bus.send(chat["id"], "", id="m2", files=(str(outbox / "chart.png"),))
    sent = {r.outbound_id: r for r in await bus.wait_receipts(2)}
    with_text, alone = sent["m1"].platform_message_id, sent["m2"].platform_message_id
    assert with_text == sent["m1"].part_ids[-1] and alone is not None  # the file: what an edit aims at
    await bus.publish(ev.OutboundEdit(id="e1", route=route, target_message_id=with_text, text="Sales, final"), "e1")
    await bus.publish(ev.OutboundEdit(id="e2", route=route, target_message_id=alone, text="Sales, chart"), "e2")
    await bus.publish(ev.OutboundEdit(id="e3", route=route, target_message_id=alone, text="x" * 1500), "e3")
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(5)}
    assert receipts["e1"].ok and receipts["e2"].ok
    assert not receipts["e3"].ok and "caption holds at most 1024 characters" in (receipts["e3"].error or "")
    text, photo, lone = fake.bot_messages(chat)
    assert text["text"] == "Sales, final" and "edit_date" in text
    assert "caption" not in photo and "edit_date" not in photo
    assert lone["caption"] == "Sales, chart"


async def test_an_edit_of_a_split_answer_refills_its_parts_and_removes_those_it_no_longer_needs(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    route = ev.Route(channel="telegram", chat_id=str(chat["id"]))
    bridge.start()
    await bus.send(chat["id"], "\n\n".join(c * 3000 for c in "ABC"), id="long")
    [sent] = await bus.wait_receipts(1)
    assert len(sent.part_ids) == 3 and sent.platform_message_id is not None
    await bus.publish(
        ev.OutboundEdit(
            id="shorter", route=route, target_message_id=sent.platform_message_id, text="a" * 3000 + "\n\n" + "b" * 3000
        ),
        "shorter",
    )
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(2)}
    assert receipts["shorter"].ok, receipts["shorter"].error
    assert fake.texts(chat) == ["a" * 3000, "b" * 3000]
    assert [c.outcome for c in fake.calls_to("deleteMessage")] == ["ok"]

    await bus.publish(
        ev.OutboundEdit(
            id="longer", route=route, target_message_id=sent.part_ids[1], text="\n\n".join(c * 3000 for c in "xyz")
        ),
        "longer",
    )
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(3)}
    assert receipts["longer"].ok, receipts["longer"].error
    first, last = fake.texts(chat)  # the removed part stays removed; what does not fit is cut
    assert first == "x" * 3000 and last.startswith("y" * 3000) and last.endswith(" …")


async def test_a_file_from_a_session_folder_is_uploaded_and_one_from_elsewhere_refused(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess, tmp_path: Path
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    outbox = bridge.home / "sessions" / "main" / "s1" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "chart.png").write_bytes(png(800, 600))
    secret = tmp_path / "secret.txt"
    secret.write_text("do not send")
    bridge.start()
    await bus.send(chat["id"], "here it is", id="f1", files=(str(outbox / "chart.png"),))
    await bus.send(chat["id"], "and this", id="f2", files=(str(secret),))
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(2)}
    messages = fake.bot_messages(chat)
    assert [m.get("text") for m in messages] == ["here it is", None, "and this"]
    assert messages[1]["photo"][0]["file_size"] == len(png(800, 600))
    assert receipts["f1"].ok and len(receipts["f1"].part_ids) == 2
    assert not receipts["f2"].ok and "outside the session folders" in (receipts["f2"].error or "")


async def test_an_image_telegram_refuses_as_a_photo_arrives_as_a_file(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    outbox = bridge.home / "sessions" / "main" / "s1" / "outbox"
    outbox.mkdir(parents=True)
    images = {
        "screenshot.png": png(1080, 9200),
        "banner.png": png(2200, 100),
        "photo.png": png(1280, 960),
        "broken.png": b"\x89PNG not really",
    }
    for name, data in images.items():
        (outbox / name).write_bytes(data)
    bridge.start()
    await bus.send(chat["id"], "", id="f1", files=tuple(str(outbox / name) for name in images))
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok and len(receipt.part_ids) == 4
    sent = [
        ("photo", m["photo"][0]["width"]) if "photo" in m else ("document", m["document"]["file_name"])
        for m in fake.bot_messages(chat)
    ]
    assert sent == [
        ("document", "screenshot.png"),
        ("document", "banner.png"),
        ("photo", 1280),
        ("document", "broken.png"),
    ]
    refusals = [c.outcome for c in fake.calls_to("sendPhoto")]
    assert refusals == ["error 400", "error 400", "ok", "error 400"]


async def test_typing_shows_while_the_agent_works_and_stops_with_the_answer(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    route = ev.Route(channel="telegram", chat_id=str(chat["id"]))
    bridge.start()
    await bus.publish(ev.Typing(id="t-old", route=route, at=time.time() - 3600), "t-old")  # replayed, stale
    await bus.publish(ev.Typing(id="t-1", route=route, at=time.time()), "t-1")
    await until(lambda: len(fake.typing(chat)) >= 2, 10, "typing was not renewed")
    await bus.send(chat["id"], "done", id="answer")
    await bus.wait_receipts(1)
    # Renewed within the 5 s Telegram shows it; that it ends with the answer is test_delivery's to show.
    assert CAPABILITIES.typing_interval < 5


# --- never lost, never twice --------------------------------------------------------------------------------


def chats_in_lanes(fake: FakeTelegram, count: int) -> list[dict[str, Any]]:
    """Private chats that each have an outbound lane of their own."""
    chats: dict[int, dict[str, Any]] = {}
    while len(chats) < count:
        chat = fake.private_chat(fake.user(f"User{len(chats)}"))
        chats.setdefault(subjects.lane(str(chat["id"])), chat)
    return list(chats.values())


async def _two_hundred_in_flight(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess, signal_: int
) -> tuple[list[dict[str, Any]], list[list[str]], list[ev.DeliveryReceipt]]:
    # Eight chats in the eight lanes, so eight messages are in flight at once when the signal lands (and each
    # chat's 25 take 30 s at Telegram's pace of one a second per chat).
    chats = chats_in_lanes(fake, 8)
    bridge.start()
    expected = [[f"chat {c} message {i:03d}" for i in range(25)] for c in range(8)]
    for i in range(25):
        for c, chat in enumerate(chats):
            await bus.send(chat["id"], expected[c][i], id=f"s{c}:m{i:03d}", seq=2 * i + 1, session_id=f"s{c}")
    sent = lambda: sum(len(fake.texts(chat)) for chat in chats)  # noqa: E731
    await until(lambda: sent() >= 60, 60, "the bridge did not get going")
    bridge.stop(signal_)
    assert sent() < 200, "all were sent before the stop: the test proves nothing"
    bridge.start()
    receipts = await bus.wait_receipts(200, timeout=90)
    return chats, expected, receipts


async def test_a_bridge_stopped_with_200_answers_in_flight_delivers_each_exactly_once(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    import signal

    chats, expected, receipts = await _two_hundred_in_flight(fake, bus, bridge, signal.SIGTERM)
    assert [fake.texts(chat) for chat in chats] == expected  # type: ignore[arg-type]
    assert all(r.ok and not r.unconfirmed for r in receipts)
    assert len({r.outbound_id for r in receipts}) == 200


async def test_a_bridge_killed_with_200_answers_in_flight_repeats_none_and_reports_any_doubt(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    import signal

    chats, expected, receipts = await _two_hundred_in_flight(fake, bus, bridge, signal.SIGKILL)
    doubtful = {r.outbound_id for r in receipts if r.unconfirmed}
    # SIGKILL can land between Telegram taking a message and the bridge writing that down: that message
    # (one in flight per lane) is reported unconfirmed instead of being sent again.
    assert len(doubtful) <= len(chats)
    for c, chat in enumerate(chats):
        texts = fake.texts(chat)  # type: ignore[arg-type]
        assert len(texts) == len(set(texts)), "a message was sent twice"
        assert texts == sorted(texts), "messages went out of order"
        missing = {f"s{c}:m{expected[c].index(t):03d}" for t in set(expected[c]) - set(texts)}
        assert missing <= doubtful
    assert all(r.ok for r in receipts if r.outbound_id not in doubtful)


# --- lanes: a chat held back holds back only its own lane -----------------------------------------------------


async def test_a_chat_held_back_by_a_rate_limit_does_not_hold_up_other_chats(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    busy = fake.group("Busy group")
    [quiet] = [c for c in chats_in_lanes(fake, 2) if subjects.lane(str(c["id"])) != subjects.lane(str(busy["id"]))][:1]
    fake.inject("sendMessage", Error(429, retry_after=5))  # the busy group's first send is held back 5 s
    bridge.start()
    await bus.send(busy["id"], "busy 1", id="busy-1")
    await bus.send(busy["id"], "busy 2", id="busy-2")
    await until(lambda: fake.pending_faults == 0, 10, "the busy group's send never reached Telegram")
    published = time.time()
    await bus.send(quiet["id"], "quiet 1", id="quiet-1")
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(3, timeout=30)}

    assert all(r.ok for r in receipts.values())
    sends = [c for c in fake.calls_to("sendMessage") if c.outcome == "ok"]
    order = [(str(c.params["chat_id"]), c.params["text"]) for c in sends]
    assert order == [(str(quiet["id"]), "quiet 1"), (str(busy["id"]), "busy 1"), (str(busy["id"]), "busy 2")]
    assert sends[0].at - published < 2.0, "the quiet chat waited for the busy one"
    held = next(c for c in fake.calls_to("sendMessage") if c.outcome == "Error")
    assert sends[1].at - held.at >= 5.0, "retry_after was not honoured"
    assert fake.texts(busy) == ["busy 1", "busy 2"] and fake.texts(quiet) == ["quiet 1"]  # type: ignore[arg-type]


async def test_a_send_telegram_took_while_the_bridge_died_is_not_sent_again(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    fake.inject("sendMessage", Delay(3.0))  # Telegram takes it, but answers only after the bridge is gone
    await bus.send(chat["id"], "exactly once", id="s1:x", seq=5, session_id="s1")
    await until(lambda: len(fake.calls_to("sendMessage")) == 1, 15)
    bridge.kill()
    await until(lambda: fake.texts(chat) == ["exactly once"], 10)
    bridge.start()
    [receipt] = await bus.wait_receipts(1, timeout=40)
    assert receipt.unconfirmed and not receipt.ok and receipt.error and receipt.error.startswith("unconfirmed:")
    # A later message in the same chat is delivered after whatever the bridge still did with the first.
    await bus.send(chat["id"], "and then", id="s1:y", seq=6, session_id="s1")
    await bus.wait_receipts(2, timeout=40)
    assert fake.texts(chat) == ["exactly once", "and then"]


async def delivery_counts(nats_url: str) -> dict[str, int]:
    """What `clawden status` shows for the bridge: its ping stats through status's own reading."""
    nc = await nats.connect(nats_url)
    try:
        ping = await status.ask(nc, PING.at("channel-telegram"), Nothing())
    finally:
        await nc.close()
    [row] = status.deliveries([{"name": "channel-telegram", "stats": ping.stats}])
    return row


async def test_a_send_whose_connection_dropped_after_it_went_out_is_sent_once_more_and_counted(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess, nats_server: NatsServer
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    fake.inject("sendMessage", Drop())  # the connection closes before Telegram acted on it
    await bus.send(chat["id"], "one", id="a")
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok and not receipt.unconfirmed
    assert fake.texts(chat) == ["one"]
    counts = await delivery_counts(nats_server.url)
    assert (counts["ambiguous"], counts["unsent"], counts["unconfirmed"]) == (1, 0, 0)


async def test_a_send_dropped_twice_in_a_row_is_reported_unconfirmed_and_not_sent_a_third_time(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess, nats_server: NatsServer
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    # Both tries reached Telegram and lost their answers: the documented price of the one resend is
    # a duplicate here, and it stops there.
    fake.inject("sendMessage", Drop(after_processing=True), Drop(after_processing=True))
    await bus.send(chat["id"], "one", id="a")
    await bus.send(chat["id"], "two", id="b")
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(2)}
    assert fake.texts(chat) == ["one", "one", "two"]
    assert receipts["a"].unconfirmed and receipts["b"].ok
    counts = await delivery_counts(nats_server.url)
    assert (counts["ambiguous"], counts["unconfirmed"], counts["sent"]) == (2, 1, 1)


async def test_a_send_that_could_not_connect_is_retried_and_counted_as_not_sent(
    tmp_path: Path, nats_server: NatsServer, bus: Bus
) -> None:
    fake = FakeTelegram()
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    port = free_port()
    bridge = BridgeProcess(tmp_path / "home", nats_server.url, fake)
    fake.url = f"http://127.0.0.1:{port}"  # nothing listens there yet: every connect is refused
    try:
        bridge.start()
        await bus.send(chat["id"], "one", id="a")
        await until(
            lambda: "outbound a failed (cannot reach Telegram (ConnectError))" in bridge.output(), 15, bridge.output
        )
        fake.start_in_thread(port=port)
        [receipt] = await bus.wait_receipts(1)
        assert receipt.ok and fake.texts(chat) == ["one"]
        counts = await delivery_counts(nats_server.url)
        assert counts["unsent"] >= 1 and counts["ambiguous"] == 0
    finally:
        bridge.close()
        fake.stop_thread()


async def bridge_status(nats_url: str, home: Path) -> tuple[dict[str, Any], str]:
    """The bridge's row in `clawden status`'s report, and the report as the command prints it."""
    nc = await nats.connect(nats_url)
    try:
        report = await status.report(nc, config_mod.load(home, environ={}), wait=0.5)
    finally:
        await nc.close()
    [row] = [s for s in report["services"] if s["name"] == "channel-telegram"]
    return row, status.render(report)


async def trouble_of(nats_url: str) -> str:
    """What the bridge's ping says it cannot do now ("" when nothing)."""
    nc = await nats.connect(nats_url)
    try:
        return (await status.ask(nc, PING.at("channel-telegram"), Nothing())).trouble
    finally:
        await nc.close()


async def untroubled(nats_url: str) -> bool:
    return await trouble_of(nats_url) == ""


async def test_a_bridge_that_cannot_reach_telegram_is_degraded_with_why_until_telegram_answers(
    tmp_path: Path,
    nats_server: NatsServer,
    bus: Bus,  # the bus makes the streams, as the core services do
) -> None:
    fake = FakeTelegram()
    port = free_port()
    bridge = BridgeProcess(tmp_path / "home", nats_server.url, fake)
    fake.url = f"http://127.0.0.1:{port}"  # nothing listens there yet: every connect is refused
    try:
        bridge.start()  # READY all the same: replies wait for Telegram in their lanes
        row, shown = await bridge_status(nats_server.url, bridge.home)
        said = (
            r"cannot reach Telegram since \d\d:\d\d \(connection refused\); "
            "messages wait and go through once it answers"
        )
        assert re.fullmatch(said, row["trouble"]), row
        assert re.search(r"^channel-telegram +degraded ", shown, re.MULTILINE), shown
        assert re.search(f"^channel-telegram: {said}$", shown, re.MULTILINE), shown
        assert not status.healthy({"down": [], "services": [row]})

        fake.start_in_thread(port=port)
        await eventually(lambda: untroubled(nats_server.url), 40, bridge.output)  # its next poll
        row, shown = await bridge_status(nats_server.url, bridge.home)
        assert row["trouble"] == "" and re.search(r"^channel-telegram +up ", shown, re.MULTILINE), shown
        assert "cannot reach Telegram" not in shown
    finally:
        bridge.close()
        fake.stop_thread()


async def test_with_429s_5xx_and_dropped_polls_nothing_is_lost_or_repeated(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    polls: list[Fault] = [Error(429, retry_after=1), BadGateway(), Drop(), Error(500), Hang(), Error(502)]
    sends: list[Fault] = [Error(429, retry_after=2), Error(500), BadGateway(), Error(502), Error(429, retry_after=1)]
    bridge.start()
    for i in range(10):
        # One fault per round, so the test pays for recovery, not for the backoff of a long outage.
        fake.inject("getUpdates", *polls[i : i + 1])
        fake.inject("sendMessage", *sends[i : i + 1])
        fake.send(chat, ada, f"question {i}")
        await bus.send(chat["id"], f"answer {i}", id=f"o{i}")
        await until(lambda: fake.pending_faults == 0 and fake.pending_updates == 0, 30, "the bridge did not recover")
    await bus.wait_receipts(10, timeout=60)
    await until(
        lambda: fake.pending_updates == 0 and fake.pending_faults == 0,
        30,
        lambda: (
            f"the bridge did not catch up: {fake.pending_updates} updates, {fake.pending_faults} faults "
            f"left\n{bridge.output()}"
        ),
    )
    assert fake.texts(chat) == [f"answer {i}" for i in range(10)]
    assert [e.text for e in await bus.inbound()] == [f"question {i}" for i in range(10)]
    assert all(r.ok for r in await bus.receipts())
    calls = fake.calls_to("sendMessage")
    rate_limited = next(i for i, c in enumerate(calls) if c.outcome == "Error")
    assert calls[rate_limited + 1].at - calls[rate_limited].at >= 2.0, "retry_after was not honoured"


async def test_a_send_that_fails_for_good_is_reported_final_and_logged(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    bob = fake.user("Bob")
    blocked = fake.private_chat(ada)
    flaky = fake.private_chat(bob)
    fake.block(blocked)
    bridge.settings["send_deadline"] = "3"
    bridge.start()
    await bus.send(blocked["id"], "hello?", id="s1:blocked", seq=7, session_id="s1")
    await bus.wait_receipts(1)
    # A rejected token (which an operator can fix) is tried until the deadline, then reported; a 5xx would be
    # waited out (the test below).
    fake.inject("sendMessage", *[Error(401, "Unauthorized")] * 40)
    await bus.send(flaky["id"], "anyone?", id="s1:flaky", seq=9, session_id="s1")
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(2, timeout=30)}
    assert receipts["s1:blocked"] == ev.DeliveryReceipt(
        outbound_id="s1:blocked",
        route=ev.Route(channel="telegram", chat_id=str(blocked["id"])),
        ok=False,
        session_id="s1",
        seq=7,
        error="Forbidden: bot was blocked by the user",
        final=True,
    )
    assert not receipts["s1:flaky"].ok and receipts["s1:flaky"].final
    assert (receipts["s1:flaky"].error or "").startswith("gave up after")
    log = bridge.output()
    assert "outbound s1:blocked to chat" in log and "failed for good: Forbidden: bot was blocked by the user" in log
    assert "outbound s1:flaky" in log and "gave up after" in log


async def test_a_telegram_outage_longer_than_the_send_deadline_is_waited_out_and_the_answer_lands(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    """Telegram's front answering 502 and 500 for longer than `send_deadline`: Telegram never refused the answer,
    so it waits for Telegram instead of being reported failed."""
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    fake.inject("sendMessage", BadGateway(), Error(500), BadGateway())
    bridge.settings["send_deadline"] = "1"
    bridge.start()
    await bus.send(chat["id"], "after the outage", id="o1")
    [receipt] = await bus.wait_receipts(1, timeout=30)
    assert receipt.ok and fake.texts(chat) == ["after the outage"]
    calls = fake.calls_to("sendMessage")
    assert [c.outcome for c in calls] == ["BadGateway", "Error", "BadGateway", "ok"]
    assert calls[-1].at - calls[0].at > 1, "the outage did not outlast the deadline"


async def test_a_group_upgraded_to_a_supergroup_is_announced_once_and_answers_reach_the_supergroup(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family", supergroup=False)
    bridge.start()
    supergroup = fake.migrate(family, by=ada)
    await bus.send(family["id"], "dinner is at 8", id="s1:r1", session_id="s1")  # the session still names the old id
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok and fake.texts(supergroup) == ["dinner is at 8"]
    assert receipt.platform_message_id == f"{supergroup['id']}:{fake.bot_messages(supergroup)[0]['message_id']}"
    await until(lambda: fake.pending_updates == 0, 15)
    moves = [e for e in await bus.inbound() if isinstance(e, ev.ChatMoved)]
    assert [(m.old_chat_id, m.new_chat_id) for m in moves] == [(str(family["id"]), str(supergroup["id"]))]


async def test_a_send_refused_because_the_group_was_upgraded_goes_to_the_supergroup_and_old_edits_fail_plainly(
    fake: FakeTelegram,
) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family", supergroup=False)
    old = ev.Route(channel="telegram", chat_id=str(family["id"]))
    bot = TelegramBridge(fake.url, fake.token)
    try:
        card = await bot.send_text(old, "Approve?", reply_to=None, buttons=[], key="k1")
        supergroup = fake.migrate(family, by=ada)  # the listener has not seen the service messages
        sent = await bot.send_text(old, "dinner is at 8", reply_to=None, buttons=[], key="k2")
        await bot.typing(old)
        with pytest.raises(PlatformError) as refused:
            await bot.edit(old, card, "Approved", [])
    finally:
        await bot.close()
    assert sent.startswith(f"{supergroup['id']}:") and fake.texts(supergroup) == ["dinner is at 8"]
    assert fake.typing(supergroup) and bot.moved == {family["id"]: supergroup["id"]}
    assert refused.value.kind == "permanent" and "became a supergroup" in str(refused.value)
    assert [c.outcome for c in fake.calls_to("sendMessage")] == ["ok", "error 400", "ok"]


@pytest.mark.fake(flood_limits=True)
async def test_under_telegrams_flood_limits_a_burst_to_one_group_is_paced_and_never_refused(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    family = fake.group("Family")
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start()
    for n in range(4):
        await bus.send(family["id"], f"step {n}", id=f"step-{n}")
        await bus.send(chat["id"], f"note {n}", id=f"note-{n}")
    receipts = await bus.wait_receipts(8)
    assert all(r.ok for r in receipts)
    assert fake.texts(family) == [f"step {n}" for n in range(4)]
    assert fake.texts(chat) == [f"note {n}" for n in range(4)]
    calls = fake.calls_to("sendMessage")
    assert [c.outcome for c in calls] == ["ok"] * 8  # paced: Telegram never had to say 429
    for target in (family, chat):
        posted = [c.at for c in calls if str(c.params["chat_id"]) == str(target["id"])]
        assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(posted))


async def test_a_long_rate_limit_is_announced_with_a_receipt_that_is_not_final(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    fake.inject("sendMessage", Error(429, retry_after=11))
    bridge.start()
    await bus.send(chat["id"], "patience", id="slow")
    [notice] = await bus.wait_receipts(1, final=False, timeout=15)
    assert not notice.ok and (notice.error or "").startswith("delayed: Too Many Requests")
    [final] = await bus.wait_receipts(1, timeout=30)
    assert final.ok and fake.texts(chat) == ["patience"]


# --- starting, polling conflicts, configuration ---------------------------------------------------------------


async def test_a_rejected_token_stops_the_bridge_with_a_clear_error_and_no_token_in_the_log(
    fake: FakeTelegram, bridge: BridgeProcess
) -> None:
    wrong = "7012345678:AAWrongTokenWrongTokenWrongToken123"
    bridge.start(wait=False, env=bridge.env() | {"CLAWDEN_TELEGRAM_TOKEN": wrong})
    assert bridge.proc is not None and bridge.proc.wait(30) == EX_CONFIG
    output = bridge.output()
    assert "Telegram rejected the bot token (401 Unauthorized)" in output
    assert wrong not in output and "[redacted]" not in output.split("Telegram rejected")[0][-200:]


async def test_a_missing_token_says_where_to_put_one(bridge: BridgeProcess) -> None:
    env = bridge.env()
    del env["CLAWDEN_TELEGRAM_TOKEN"]
    bridge.start(wait=False, env=env)
    assert bridge.proc is not None and bridge.proc.wait(30) == EX_CONFIG
    assert "no telegram token: set CLAWDEN_TELEGRAM_TOKEN or write it to" in bridge.output()


async def test_a_token_file_readable_by_others_is_refused(bridge: BridgeProcess) -> None:
    env = bridge.env()
    token = env.pop("CLAWDEN_TELEGRAM_TOKEN")
    key = bridge.home / "keys" / "telegram"
    key.write_text(token + "\n")
    key.chmod(0o644)
    bridge.start(wait=False, env=env)
    assert bridge.proc is not None and bridge.proc.wait(30) == EX_CONFIG
    assert "is readable by other users" in bridge.output()
    key.chmod(0o600)
    bridge.start(env=env)  # the same file, private now, works


async def test_a_webhook_blocks_polling_with_a_clear_error_until_it_may_be_deleted(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    fake.set_webhook("https://old-deployment.example/hook")
    fake.send(chat, ada, "anyone there?")
    bridge.start()
    await until(lambda: "a webhook is set for this bot" in bridge.output(), 15)
    bridge.stop()
    bridge.settings["delete_webhook"] = "true"
    bridge.start()
    await until(lambda: fake.pending_updates == 0, 15)
    assert fake.webhook_url == "" and [e.text for e in await bus.inbound()] == ["anyone there?"]


async def test_another_poller_is_reported_and_polling_goes_on(
    fake: FakeTelegram, bus: Bus, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    fake.inject(
        "getUpdates",
        Error(409, "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"),
    )
    bridge.start()
    await until(lambda: "another process is polling this bot" in bridge.output(), 15)
    fake.send(chat, ada, "still here")
    await until(lambda: fake.pending_updates == 0, 20)
    assert [e.text for e in await bus.inbound()] == ["still here"]


async def test_a_poll_telegram_refuses_makes_the_bridge_say_why_until_a_poll_gets_through(
    fake: FakeTelegram, nats_server: NatsServer, bus: Bus, bridge: BridgeProcess
) -> None:
    bridge.start()
    assert await untroubled(nats_server.url)

    fake.inject("getUpdates", Error(409, "Conflict: terminated by other getUpdates request"))
    # Said at once, after one refused poll, in Telegram's own terms.
    trouble = await eventually(lambda: trouble_of(nats_server.url), 15, bridge.output)
    assert re.fullmatch(
        r"Telegram refuses polling since \d\d:\d\d \(another process polls this bot\); messages may go to that "
        "process instead: run one telegram bridge per bot token",
        trouble,
    )
    await eventually(lambda: untroubled(nats_server.url), 20, bridge.output)  # the next poll, 5 s on


async def test_the_bridge_declares_what_it_supports(nats_server: NatsServer, bridge: BridgeProcess) -> None:
    bridge.start()
    nc = await nats.connect(nats_server.url)
    try:
        reply = await nc.request(subjects.ctl("channel-telegram", "capabilities"), b"", timeout=5)
    finally:
        await nc.close()
    caps = json.loads(reply.data)
    assert caps == caps | {
        "channel": "telegram",
        "max_text": 4096,
        "threads": True,
        "edits": True,
        "reactions": True,
        "files": True,
        "cards": True,
        "typing": True,
        "max_file_bytes": 50 * 1024 * 1024,
        "idempotent_sends": False,
        "group_messages": "addressed",
    }
    # getMe said privacy mode is on (the fake's default, as for a new bot): groups reach it only by
    # `/ask@bot` and replies.
    assert caps["group_note"].startswith("privacy mode on: in groups @clawden_test_bot gets only /ask@")


# People's edits become edits of the message they were. Telegram sends bots no update for a deleted
# message, so there are no deletes.


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
