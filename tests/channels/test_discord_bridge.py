"""The Discord bridge as it runs (`clawden run channel@discord`), with real NATS and the fake Discord (REST over HTTP,
the Gateway over a real WebSocket): messages stored once through drops, resumes, refused resumes (read back from the
REST history) and duplicated dispatches; answers, cards, files and rate limits out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from clawden.bus import events as ev
from clawden.bus import subjects
from services.channels import discord as discord_bridge
from services.channels.discord import INTENTS, Buckets, Place, inbound_delete, inbound_edit, inbound_message, route_key
from tests.channels.discord_harness import DiscordBridge, DiscordBus
from tests.channels.harness import listening, until
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.discord import BOT_ID, MESSAGE_CONTENT, Error, FakeDiscord
from tests.fakes.trickle import Trickle


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
    assert discord.token not in b.output(), "the token reached the log"


def connected(discord: FakeDiscord, count: int) -> bool:
    return discord.connections >= count and discord.session is not None and discord._ws is not None


# --- the pure part ------------------------------------------------------------------------------------------


def test_a_mention_a_reply_to_the_bot_and_a_dm_engage_and_a_bot_is_never_read() -> None:
    author = {"id": "7", "username": "ada"}
    msg = {
        "id": "100",
        "channel_id": "5",
        "author": author,
        "content": f"<@{BOT_ID}> hi there",
        "type": 0,
        "mentions": [{"id": BOT_ID}],
        "attachments": [],
    }
    guild = Place(dm=False)
    mention = inbound_message(msg, BOT_ID, guild)
    assert mention is not None and (mention.text, mention.mentioned, mention.is_group) == ("hi there", True, True)
    dated = inbound_message(dict(msg, timestamp="2026-12-05T01:02:03.500000+00:00"), BOT_ID, guild)
    assert dated is not None and dated.sent_at == 1796432523.5
    plain = inbound_message(dict(msg, content="lunch?", mentions=[]), BOT_ID, guild)
    assert plain is not None and not plain.mentioned
    reply = inbound_message(
        dict(
            msg,
            content="and then?",
            mentions=[],
            type=19,
            message_reference={"message_id": "90"},
            referenced_message={"author": {"id": BOT_ID}},
        ),
        BOT_ID,
        guild,
    )
    assert reply is not None and reply.mentioned and reply.reply_to == "5:90"
    dm = inbound_message(dict(msg, content="hello", mentions=[]), BOT_ID, Place(dm=True))
    assert dm is not None and dm.mentioned and not dm.is_group
    in_thread = inbound_message(msg, BOT_ID, Place(dm=False, parent="4"))
    assert in_thread is not None and (in_thread.route.chat_id, in_thread.route.thread_id) == ("4", "5")
    for ignored in ({"author": {"id": "8", "bot": True}}, {"author": {"id": BOT_ID}}, {"type": 7}, {"content": ""}):
        assert inbound_message(dict(msg, **ignored), BOT_ID, guild) is None


def test_buckets_hold_a_spent_route_until_its_reset_and_the_global_limit_holds_every_route() -> None:
    send = route_key("POST", "/channels/11/messages")
    assert send == route_key("POST", "/channels/11/messages") != route_key("POST", "/channels/12/messages")
    assert route_key("PATCH", "/channels/11/messages/99") == route_key("PATCH", "/channels/11/messages/98")
    buckets = Buckets()
    buckets.learn(
        send, {"x-ratelimit-bucket": "abc", "x-ratelimit-remaining": "1", "x-ratelimit-reset-after": "2.5"}, now=100.0
    )
    assert buckets.wait(send, 100.0) == 0.0  # the last call left in the bucket
    assert buckets.wait(send, 101.0) == pytest.approx(1.5)
    assert buckets.wait(send, 102.6) == 0.0  # reset
    buckets.limited(send, 3.0, is_global=True, now=200.0)
    assert buckets.wait(route_key("GET", "/users/@me"), 201.0) == pytest.approx(2.0)


# --- in -------------------------------------------------------------------------------------------------------


async def test_a_dm_a_mention_and_a_thread_reply_are_stored_once_each_in_their_place(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    general = discord.channel("general")
    bridge.start()
    [identify] = discord.identifies
    assert identify["intents"] == INTENTS and identify["intents"] & MESSAGE_CONTENT
    discord.say(dm, ada, "hello in private")
    asked = discord.say(general, ada, f"<@{BOT_ID}> what is on today?")
    discord.say(general, ada, "lunch, anyone?")
    thread = discord.thread(general, "today", ada)
    discord.say(thread, ada, f"<@{BOT_ID}> and tomorrow?")
    got = {m.text: m for m in await bus.messages(4)}
    assert len(got) == 4
    assert (got["hello in private"].mentioned, got["hello in private"].is_group) == (True, False)
    assert got["what is on today?"].mentioned and got["what is on today?"].route.chat_id == general
    assert got["what is on today?"].message_id == f"{general}:{asked}"
    assert not got["lunch, anyone?"].mentioned
    assert (got["and tomorrow?"].route.chat_id, got["and tomorrow?"].route.thread_id) == (general, thread)
    assert got["hello in private"].sender.id == f"discord:{ada}"


async def test_drops_reconnect_requests_and_duplicated_dispatches_lose_nothing_and_store_nothing_twice(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    bridge.start()
    discord.duplicate(40)
    sent = 0
    for round in range(20):
        for _ in range(10):
            discord.say(dm, ada, f"message {sent}")
            sent += 1
        if round % 2:
            discord.drop_socket()
        else:
            discord.ask_reconnect()
        await until(partial(connected, discord, round + 2), 20, lambda: bridge.output()[-2000:])
    got = await bus.messages(sent, timeout=30)
    assert sorted(m.text for m in got) == sorted(f"message {i}" for i in range(sent))
    assert len(got) == sent, "a message was stored twice"
    assert len(discord.identifies) == 1, "a drop ended the session instead of resuming it"
    assert len(discord.resumes) == 20 and all(r["on_resume_url"] for r in discord.resumes)


async def test_a_resume_replays_exactly_what_came_after_the_last_seq_seen(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    bridge.start()
    discord.say(dm, ada, "before")
    await bus.messages(1)
    discord.drop_socket()
    discord.say(dm, ada, "while away 1")  # kept in the session for the resume
    discord.say(dm, ada, "while away 2")
    await until(lambda: connected(discord, 2), 20, lambda: bridge.output()[-2000:])
    got = await bus.messages(3)
    assert [m.text for m in got] == ["before", "while away 1", "while away 2"]
    [resume] = discord.resumes
    assert discord.session is not None
    assert resume["seq"] == max(
        e["s"] for e in discord.session.events if e["t"] == "MESSAGE_CREATE" and e["d"]["content"] == "before"
    )
    assert len(discord.identifies) == 1


async def test_a_refused_resume_identifies_anew_and_reads_what_it_missed_from_the_history(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    general = discord.channel("general")
    bridge.start()
    seen = discord.say(general, ada, f"<@{BOT_ID}> first")
    await bus.messages(1)
    discord.end_session()  # what is said now reaches no Gateway connection
    for i in range(3):
        discord.say(general, ada, f"<@{BOT_ID}> missed {i}")
    await until(lambda: len(discord.identifies) == 2, 20, lambda: bridge.output()[-2000:])
    got = await bus.messages(4)
    assert [m.text for m in got] == ["first", "missed 0", "missed 1", "missed 2"]
    [history] = discord.calls_to("history")[:1]
    assert history.path.startswith(f"/api/v10/channels/{general}/messages?") and f"after={seen}" in history.path
    assert history.outcome == 200 and len(await bus.inbound()) == 4


async def test_a_history_read_cut_short_by_the_next_drop_goes_on_after_the_resume(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    """Live messages after the gap must not move the channel's mark past what the history has not yet given."""
    ada = discord.user("ada")
    dm = discord.dm(ada)
    bridge.start()
    discord.say(dm, ada, "first")
    await bus.messages(1)
    discord.inject("history", *[Error(500, channel=dm)] * 3)  # the read stalls, retrying
    discord.end_session()
    discord.say(dm, ada, "missed")
    await until(lambda: len(discord.calls_to("history")) >= 1, 20, lambda: bridge.output()[-2000:])
    discord.say(dm, ada, "live after the gap")
    await bus.messages(2)
    resumes = len(discord.resumes)
    discord.drop_socket()  # cuts the stalled read short; the connection after it is a resume
    await until(lambda: len(discord.resumes) > resumes, 20, lambda: bridge.output()[-2000:])
    got = await bus.messages(3)
    assert sorted(m.text for m in got) == ["first", "live after the gap", "missed"]
    assert len(discord.identifies) == 2 and discord.calls_to("history")[-1].outcome == 200


async def test_what_was_said_while_the_bridge_was_down_is_read_from_the_history_at_start(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    bridge.start()
    discord.say(dm, ada, "before the stop")
    await bus.messages(1)
    bridge.stop()
    discord.end_session()
    discord.say(dm, ada, "while down")
    bridge.start()
    got = await bus.messages(2)
    assert [m.text for m in got] == ["before the stop", "while down"]


async def test_a_session_discord_timed_out_is_identified_anew_and_read_back_from_the_history(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    bridge.start()
    discord.say(dm, ada, "first")
    await bus.messages(1)
    discord.time_out_session()  # close 4009: a resume would be refused, so none is tried
    discord.say(dm, ada, "missed")
    await until(lambda: len(discord.identifies) == 2, 20, lambda: bridge.output()[-2000:])
    assert [m.text for m in await bus.messages(2)] == ["first", "missed"]
    assert discord.resumes == [] and discord.timeouts == 1


async def test_a_zombie_connection_without_heartbeat_acks_is_closed_and_resumed(
    tmp_path: Path, nats_server: NatsServer, bus: DiscordBus
) -> None:
    fast = FakeDiscord(heartbeat_ms=300).start_in_thread()
    b = DiscordBridge(tmp_path / "home", nats_server.url, fast)
    try:
        ada = fast.user("ada")
        dm = fast.dm(ada)
        b.start()
        fast.say(dm, ada, "one")
        await until(lambda: len(fast.heartbeats) >= 2, 10)
        assert fast.heartbeats[-1] == fast.session.seq if fast.session else False
        fast.stop_acking_heartbeats()
        await until(lambda: len(fast.resumes) == 1, 10, lambda: b.output()[-2000:])
        fast.say(dm, ada, "two")
        assert [m.text for m in await bus.messages(2)] == ["one", "two"]
        assert fast.timeouts == 0, "the fake saw the bridge's heartbeats stop"
    finally:
        b.close()
        fast.stop_thread()


async def test_a_file_from_a_person_is_fetched_into_the_inbox(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    bridge.start()
    discord.say(dm, ada, "my notes", files={"list.txt": b"milk, eggs"})
    [message] = await bus.messages(1)
    [attachment] = message.attachments
    assert attachment.name == "list.txt"
    stored = Path(url2pathname(urlsplit(attachment.url).path))
    assert await asyncio.to_thread(stored.read_bytes) == b"milk, eggs"


async def test_a_file_the_cdn_refuses_arrives_as_a_note_saying_why(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    """A 404 is Discord's final word (the file is gone): not tried again, and the agent reads why it has no file."""
    ada = discord.user("ada")
    dm = discord.dm(ada)
    discord.inject("cdn", Error(404))
    bridge.start()
    discord.say(dm, ada, "my notes", files={"list.txt": b"milk, eggs"})
    [message] = await bus.messages(1)
    assert message.text == "my notes"
    assert [(a.name, a.url, a.error) for a in message.attachments] == [
        ("list.txt", "", "it could not be fetched: Discord answered HTTP 404")
    ]
    assert discord.cdn_calls == [404]


async def test_a_slow_download_holds_up_neither_the_listener_nor_another_chat_and_its_own_chat_keeps_order(
    discord: FakeDiscord, bus: DiscordBus, tmp_path: Path
) -> None:
    """A big attachment from a slow CDN is fetched by its chat's own task: the listener goes on (it is not taken for
    deaf, and Discord's heartbeats are answered), another chat's message is stored at once, and the sender's next
    message waits behind the one with the file."""
    trickle = discord.trickle = Trickle(chunk=64 * 1024)
    discord.heartbeat_ms = 300  # acknowledged beats, each a sign of life, keep the idle listener from looking deaf
    ada, bob = discord.user("ada"), discord.user("bob")
    with_ada, with_bob = discord.dm(ada), discord.dm(bob)
    data = bytes(range(256)) * 1024  # four chunks
    bridge = discord_bridge.DiscordBridge(discord.url, discord.gateway_url, discord.token)
    bridge.deaf_after = 1.5
    async with listening(bridge, bus.js, tmp_path) as (_, stats):
        await until(lambda: connected(discord, 1), 10)
        discord.say(with_ada, ada, "the recording", files={"talk.bin": data})
        discord.say(with_ada, ada, "did it come?")
        discord.say(with_bob, bob, "hello")
        [first] = await bus.messages(1)
        assert (first.text, trickle.sent) == ("hello", 0)  # stored while the download has not begun to arrive
        for _ in range(4):  # the test sets the pace: the download takes 2.4 times deaf_after
            await asyncio.sleep(0.6 * bridge.deaf_after)
            trickle.step()
        await until(lambda: stats.inbound == 3 or trickle.aborted.is_set(), 10, "the messages were never stored")
        assert not trickle.aborted.is_set() and stats.reconnects == 0, "the listener was cancelled mid-download"
    _, recording, after = await bus.messages(3)
    assert (recording.text, after.text) == ("the recording", "did it come?")
    stored = Path(url2pathname(urlsplit(recording.attachments[0].url).path))
    assert await asyncio.to_thread(stored.read_bytes) == data


# --- out ------------------------------------------------------------------------------------------------------


async def test_answers_go_to_their_thread_split_at_2000_and_a_user_reaches_their_dm(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    general = discord.channel("general")
    thread = discord.thread(general, "today", ada)
    bridge.start()
    await bus.send(general, "in the thread", id="a1", thread_id=thread)
    long = "\n\n".join(f"paragraph {i} " + "x" * 900 for i in range(4))
    await bus.send(f"@{ada}", long, id="a2")
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(2)}
    assert all(r.ok for r in receipts.values()), receipts
    assert discord.texts(thread) == ["in the thread"] and discord.texts(general) == []
    parts = discord.texts(discord.dm(ada))
    assert len(parts) >= 2 and all(len(p) <= 2000 for p in parts) and "".join(parts).count("paragraph") == 4
    creates = discord.calls_to("create_message")
    assert all(c.body.get("nonce") and c.body.get("enforce_nonce") for c in creates)


async def test_a_card_press_is_acknowledged_at_once_and_the_decided_card_loses_its_buttons(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    card = ev.Card(
        title="Allow GitHub?",
        buttons=(
            ev.Button(id="approve", label="Approve", style="primary"),
            ev.Button(id="deny", label="Deny", style="danger"),
        ),
    )
    bridge.start()
    await bus.send(dm, "The agent asks:", id="approval:ap-1", card=card)
    [receipt] = await bus.wait_receipts(1)
    [message] = discord.bot_messages(dm)
    assert [b["style"] for b in message["components"][0]["components"]] == [1, 4]
    discord.click(dm, message["id"], ada, button=1)
    await until(lambda: len(discord.callbacks) == 1, 10, "the interaction was not acknowledged")
    [(_, kind, after)] = discord.callbacks
    assert kind == 6 and after < 3.0

    async def action() -> list[ev.InboundAction]:
        return [e for e in await bus.inbound() if isinstance(e, ev.InboundAction)]

    deadline = time.monotonic() + 10
    while not (found := await action()):
        assert time.monotonic() < deadline, "no inbound action"
        await asyncio.sleep(0.1)
    assert (found[0].card_id, found[0].button_id, found[0].sender.id, found[0].message_id) == (
        "approval:ap-1",
        "deny",
        f"discord:{ada}",
        receipt.platform_message_id,
    )
    assert receipt.platform_message_id is not None
    await bus.publish(
        ev.OutboundEdit(
            id="e1",
            route=ev.Route(channel="discord", chat_id=dm),
            target_message_id=receipt.platform_message_id,
            text="Denied by ada",
        ),
        "e1",
    )
    await bus.wait_receipts(2)
    [decided] = discord.bot_messages(dm)
    assert decided["content"] == "Denied by ada" and decided["components"] == []


async def test_a_press_whose_acknowledgement_fails_still_counts_and_the_bridge_keeps_listening(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    card = ev.Card(title="Go?", buttons=(ev.Button(id="yes", label="Yes"),))
    bridge.start()
    await bus.send(dm, "Go?", id="approval:ap-2", card=card)
    await bus.wait_receipts(1)
    [message] = discord.bot_messages(dm)
    discord.inject("callback", Error(503))
    discord.click(dm, message["id"], ada)
    discord.say(dm, ada, "still there?")
    await bus.messages(1)
    [action] = [e for e in await bus.inbound() if isinstance(e, ev.InboundAction)]
    assert (action.button_id, action.sender.id) == ("yes", f"discord:{ada}")
    assert [c.outcome for c in discord.calls_to("callback")] == [503]


async def test_a_file_goes_up_as_multipart_and_a_reaction_lands_on_the_message(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    asked = discord.say(dm, ada, "the chart please")
    outbox = bridge.home / "sessions" / "main" / "s1" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "chart.csv").write_bytes(b"a,b\n1,2\n")
    bridge.start()
    await bus.send(dm, "", id="f1", files=(str(outbox / "chart.csv"),))
    await bus.publish(
        ev.OutboundReaction(
            id="r1", route=ev.Route(channel="discord", chat_id=dm), target_message_id=f"{dm}:{asked}", emoji="👍"
        ),
        "r1",
    )
    receipts = await bus.wait_receipts(2)
    assert all(r.ok for r in receipts), receipts
    [shared] = [m for m in discord.bot_messages(dm) if m["attachments"]]
    assert discord.files[shared["attachments"][0]["id"]] == b"a,b\n1,2\n"
    [said] = [m for m in discord.channels[dm].messages if m["id"] == asked]
    assert said["reactions"][0]["emoji"]["name"] == "👍"


async def test_a_429_is_waited_out_as_discord_says_and_the_message_goes_once(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    discord.inject("create_message", Error(429, retry_after=1.5, channel=dm), Error(502, channel=dm))
    bridge.start()
    await bus.send(dm, "for ada", id="h1")
    [receipt] = await bus.wait_receipts(1, timeout=30)
    assert receipt.ok and discord.texts(dm) == ["for ada"]
    outcomes = [c.outcome for c in discord.calls_to("create_message")]
    assert outcomes == [429, 502, 200]
    first, second = discord.calls_to("create_message")[:2]
    assert second.at - first.at >= 1.5, "the retry came before retry_after"


async def test_a_discord_outage_longer_than_the_send_deadline_is_waited_out_and_the_answer_lands(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    """Discord answering 502 and 503 for longer than `send_deadline`: it never refused the answer, so the answer
    waits for Discord instead of being reported failed."""
    ada = discord.user("ada")
    dm = discord.dm(ada)
    discord.inject("create_message", Error(502, channel=dm), Error(503, channel=dm), Error(502, channel=dm))
    bridge.settings["send_deadline"] = "1"
    bridge.start()
    await bus.send(dm, "after the outage", id="o1")
    [receipt] = await bus.wait_receipts(1, timeout=30)
    assert receipt.ok and discord.texts(dm) == ["after the outage"]
    calls = discord.calls_to("create_message")
    assert [c.outcome for c in calls] == [502, 503, 502, 200]
    assert calls[-1].at - calls[0].at > 1, "the outage did not outlast the deadline"


async def test_a_channel_held_by_a_429_does_not_hold_up_another(
    discord: FakeDiscord, bus: DiscordBus, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    held = discord.dm(ada)
    free = next(
        c for c in (discord.dm(discord.user(f"p{i}")) for i in range(20)) if subjects.lane(c) != subjects.lane(held)
    )  # another lane: a lane holds one message at a time
    discord.inject("create_message", Error(429, retry_after=4, channel=held))
    bridge.start()
    await bus.send(held, "for ada", id="h1")
    await until(lambda: [c.outcome for c in discord.calls_to("create_message")] == [429], 10)
    started = time.monotonic()
    await bus.send(free, "for bea", id="f1")
    await until(lambda: discord.texts(free) == ["for bea"], 10)
    assert time.monotonic() - started < 2.0, "the other channel waited on the 429"
    assert discord.texts(held) == []
    await until(lambda: discord.texts(held) == ["for ada"], 15)
    first, second = [c for c in discord.calls_to("create_message") if f"/channels/{held}/" in c.path]
    assert second.at - first.at >= 4.0


async def test_without_the_message_content_intent_switched_on_the_bridge_says_so_and_does_not_hammer_the_gateway(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    fake = FakeDiscord(message_content=False).start_in_thread()
    b = DiscordBridge(tmp_path / "home", nats_server.url, fake)
    try:
        with pytest.raises(AssertionError, match="no Gateway session"):
            b.start(session_timeout=3)
        assert "4014" in b.output() and "switch on Message Content" in b.output()
        assert "trying again in 10 minutes" in b.output() and fake.connections == 1
    finally:
        b.close()
        fake.stop_thread()


# People's edits and deletes become edits and deletes of the message they were.


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
