"""The Matrix bridge as it runs (`clawden run channel@matrix`) with real NATS against a real Synapse: rooms as
chats, replies, threads, mentions, cards answered by number, files through the media repository, nothing
lost or repeated across a crash, 429s waited out."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx
import pytest
from nats.aio.msg import Msg

from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.natsserver import free_port
from clawden.runtime import EX_CONFIG
from services.channels.matrix import E2EE_NOTICE, TIMELINE_LIMIT, Credential, MatrixBridge
from tests.channels.harness import listening
from tests.channels.matrix_harness import MatrixBridgeProcess, MatrixBus, MediaProxy, Person
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.trickle import Trickle
from tests.servers.synapse.fixture import Account, Synapse


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[MatrixBus]:
    b = await MatrixBus.open(nats_server.url)
    yield b
    await b.close()


@pytest.fixture
async def router_admits(bus: MatrixBus) -> AsyncIterator[set[str]]:
    """The router's `admit` endpoint (its policy is tested with the router): inviters in the set are refused."""
    refused: set[str] = set()

    async def answer(msg: Msg) -> None:
        user = json.loads(msg.data)["user_id"]
        await msg.respond(json.dumps({"allowed": user not in refused, "reason": "test"}).encode())

    sub = await bus.nc.subscribe(subjects.ctl("router", "admit"), cb=answer)
    yield refused
    await sub.unsubscribe()


@pytest.fixture
def bot(synapse: Synapse) -> Account:
    return synapse.register("Clawden", displayname="Clawden")


@pytest.fixture
def bridge(
    tmp_path: Path, nats_server: NatsServer, synapse: Synapse, bot: Account, router_admits: set[str]
) -> Iterator[MatrixBridgeProcess]:
    b = MatrixBridgeProcess(tmp_path / "home", nats_server.url, synapse, bot).start()
    yield b
    b.close()
    assert bot.token not in b.output(), "the access token reached the log"


@pytest.fixture
def stopped_bridge(
    tmp_path: Path, nats_server: NatsServer, synapse: Synapse, bot: Account
) -> Iterator[MatrixBridgeProcess]:
    b = MatrixBridgeProcess(tmp_path / "home", nats_server.url, synapse, bot)
    yield b
    b.close()


@pytest.fixture
async def ada(synapse: Synapse) -> AsyncIterator[Person]:
    p = Person(synapse, synapse.register("Ada"))
    yield p
    await p.close()


@pytest.fixture
async def bob(synapse: Synapse) -> AsyncIterator[Person]:
    p = Person(synapse, synapse.register("Bob"))
    yield p
    await p.close()


async def joined(person: Person, room_id: str, user_id: str) -> None:
    await eventually(lambda: _is_joined(person, room_id, user_id), 20, f"{user_id} never joined {room_id}")


async def _is_joined(person: Person, room_id: str, user_id: str) -> bool:
    return await person.membership(room_id, user_id) == "join"


async def messages(bus: MatrixBus, count: int) -> list[ev.InboundMessage]:
    async def found() -> list[ev.InboundMessage] | None:
        events = [e for e in await bus.inbound() if isinstance(e, ev.InboundMessage)]
        return events if len(events) >= count else None

    return await eventually(found, 30, f"fewer than {count} inbound messages arrived")


def local_file(url: str) -> bytes:
    return Path(url2pathname(urlsplit(url).path)).read_bytes()


async def direct_room(ada: Person, bot: Account) -> str:
    room = await ada.create_room(invite=[bot.user_id], direct=True)
    await joined(ada, room, bot.user_id)
    return room


# --- in -------------------------------------------------------------------------------------------------


async def test_a_direct_room_message_is_stored_marked_read_and_answered_with_typing_shown(
    ada: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await direct_room(ada, bot)
    event_id = await ada.say(room, "what is on today?")
    [message] = await messages(bus, 1)
    assert message.route == ev.Route(channel="matrix", chat_id=room)
    assert (message.message_id, message.text, message.sender.id) == (
        event_id,
        "what is on today?",
        f"matrix:{ada.user_id}",
    )
    assert message.mentioned and not message.is_group

    async def read_by_bot() -> bool:  # a read receipt once it is stored
        receipts = await ada.ephemeral(room, "m.receipt")
        return any(bot.user_id in (r["content"].get(event_id, {}).get("m.read") or {}) for r in receipts)

    await eventually(read_by_bot, 20, "the bot never marked the message read")
    await bus.publish(ev.Typing(id="typing-1", route=message.route, active=True, at=time.time()), "typing-1")

    async def typing() -> bool:  # and "typing…" while the agent works
        return any(bot.user_id in t["content"].get("user_ids", []) for t in await ada.ephemeral(room, "m.typing"))

    await eventually(typing, 20, "the bot never showed it was typing")


async def test_in_a_group_room_only_a_mention_addresses_the_bot(
    ada: Person, bob: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[bot.user_id, bob.user_id], name="Family")
    await joined(ada, room, bot.user_id)
    await bob.join(room)
    await ada.say(room, "dinner at 8 tonight?")
    await ada.say(room, "Clawden, which pub is open late?")
    await ada.say(room, "ask the bot", **{"m.mentions": {"user_ids": [bot.user_id]}})
    await ada.say(room, f"{bot.user_id} any news?")
    found = await messages(bus, 4)
    assert [(m.text, m.mentioned, m.is_group) for m in found] == [
        ("dinner at 8 tonight?", False, True),
        ("Clawden, which pub is open late?", True, True),
        ("ask the bot", True, True),
        (f"{bot.user_id} any news?", True, True),
    ]
    assert found[0].chat_name == "Family"


async def test_in_a_group_room_a_reply_to_what_the_bot_said_before_a_restart_still_addresses_it(
    ada: Person, bob: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[bot.user_id, bob.user_id], name="Club")
    await joined(ada, room, bot.user_id)
    await bob.join(room)
    await bus.send(room, "the pub opens at 6", id="said-1")
    [receipt] = await bus.wait_receipts(1)
    assert bridge.stop() == 0
    bridge.start()
    await ada.say(room, "and closes?", **{"m.relates_to": {"m.in_reply_to": {"event_id": receipt.platform_message_id}}})
    await ada.say(room, "see you there")
    replied, plain = await messages(bus, 2)
    assert (replied.mentioned, replied.reply_to, plain.mentioned) == (True, receipt.platform_message_id, False)


async def test_a_room_the_bot_is_invited_into_late_is_read_from_the_invite_on_not_its_past(
    ada: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[], name="Old room")
    await ada.say(room, "what we said before the bot came")
    await ada.invite(room, bot.user_id)
    await joined(ada, room, bot.user_id)
    await ada.say(room, "welcome, bot")
    [message] = await messages(bus, 1)
    assert message.text == "welcome, bot"
    assert [m.text for m in await bus.inbound() if isinstance(m, ev.InboundMessage)] == ["welcome, bot"]


async def test_replies_and_threads_keep_their_place_both_ways(
    ada: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await direct_room(ada, bot)
    root = await ada.say(room, "let's plan the trip")
    in_thread = await ada.say(
        room,
        "which train?",
        **{
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": root},
            }
        },
    )
    first, second = await messages(bus, 2)
    assert (first.route.thread_id, first.reply_to) == (None, None)
    assert (second.route.thread_id, second.reply_to, second.supports_threads) == (root, None, True)
    await bus.send(room, "the 9:12", id="answer-1", thread_id=root, reply_to=in_thread)
    await bus.send(room, "noted", id="answer-2", reply_to=root)
    await bus.wait_receipts(2)
    answer, noted = await ada.messages_from(room, bot.user_id)
    assert answer["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert answer["content"]["m.relates_to"]["event_id"] == root
    assert answer["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == in_thread
    assert noted["content"]["m.relates_to"] == {"m.in_reply_to": {"event_id": root}}
    # Ada replies to the bot's answer: the reply is to one of its messages, and names it.
    await ada.say(room, "thanks", **{"m.relates_to": {"m.in_reply_to": {"event_id": noted["event_id"]}}})
    third = (await messages(bus, 3))[2]
    assert (third.reply_to, third.text) == (noted["event_id"], "thanks")


async def test_an_invite_is_accepted_and_an_encrypted_room_is_told_once(
    ada: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[bot.user_id], direct=True, encrypted=True)
    await joined(ada, room, bot.user_id)
    await ada.send(
        room,
        {
            "algorithm": "m.megolm.v1.aes-sha2",
            "ciphertext": "xx",
            "sender_key": "k",
            "session_id": "s",
            "device_id": "D",
        },
        kind="m.room.encrypted",
    )
    await ada.send(
        room,
        {
            "algorithm": "m.megolm.v1.aes-sha2",
            "ciphertext": "yy",
            "sender_key": "k",
            "session_id": "s",
            "device_id": "D",
        },
        kind="m.room.encrypted",
    )

    async def told() -> list[str] | None:
        bodies = [m["content"].get("body") for m in await ada.messages_from(room, bot.user_id)]
        return bodies if bodies else None

    assert await eventually(told, 20, "the encrypted room was never told") == [E2EE_NOTICE]
    await ada.say(room, "plain words after")  # the bridge went on: a later message still arrives once
    [message] = await messages(bus, 1)
    assert message.text == "plain words after"
    assert [m["content"]["body"] for m in await ada.messages_from(room, bot.user_id)] == [E2EE_NOTICE]


async def test_an_invite_the_router_refuses_is_declined_and_the_room_never_heard(
    ada: Person, bob: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess, router_admits: set[str]
) -> None:
    router_admits.add(f"matrix:{bob.user_id}")
    room = await bob.create_room(invite=[bot.user_id], direct=True)
    await eventually(lambda: _membership_is(bob, room, bot.user_id, "leave"), 20, "the invite was never declined")
    await bob.say(room, "hello?")
    welcome = await ada.create_room(invite=[bot.user_id], direct=True)  # a later invite is still taken
    await joined(ada, welcome, bot.user_id)
    await ada.say(welcome, "hi")
    [message] = await messages(bus, 1)
    assert message.route.chat_id == welcome
    assert "refused the invite" in bridge.output()


async def _membership_is(person: Person, room_id: str, user_id: str, membership: str) -> bool:
    return await person.membership(room_id, user_id) == membership


# --- out ------------------------------------------------------------------------------------------------


async def test_edits_and_reactions_go_out_as_relations(
    ada: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await direct_room(ada, bot)
    question = await ada.say(room, "is the shop open?")
    await bus.send(room, "checking…", id="m1")
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok and receipt.platform_message_id
    await bus.publish(
        ev.OutboundEdit(
            id="e1",
            route=ev.Route(channel="matrix", chat_id=room),
            target_message_id=receipt.platform_message_id,
            text="yes, until 6",
        ),
        "e1",
    )
    await bus.publish(
        ev.OutboundReaction(
            id="r1", route=ev.Route(channel="matrix", chat_id=room), target_message_id=question, emoji="👍"
        ),
        "r1",
    )
    await bus.wait_receipts(3)
    events = await ada.events(room, bot.user_id)
    edit = next(e for e in events if e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace")
    assert edit["content"]["m.new_content"]["body"] == "yes, until 6"
    assert edit["content"]["m.relates_to"]["event_id"] == receipt.platform_message_id
    [reaction] = [e for e in events if e["type"] == "m.reaction"]
    assert reaction["content"]["m.relates_to"] == {"rel_type": "m.annotation", "event_id": question, "key": "👍"}


async def test_files_travel_through_the_media_repository_both_ways(
    tmp_path: Path, ada: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await direct_room(ada, bot)
    data = bytes(range(256)) * 400
    mxc = await ada.upload(data, "notes.bin", "application/octet-stream")
    await ada.send(
        room,
        {
            "msgtype": "m.file",
            "body": "notes.bin",
            "filename": "notes.bin",
            "url": mxc,
            "info": {"size": len(data), "mimetype": "application/octet-stream"},
        },
    )
    [message] = await messages(bus, 1)
    [attachment] = message.attachments
    assert (attachment.name, attachment.size) == ("notes.bin", len(data))
    assert local_file(attachment.url) == data
    # The agent sends one back: from a session folder, as the runner publishes it.
    outgoing = bridge.home / "sessions" / "main" / "s1" / "outbox" / "plan.txt"
    outgoing.parent.mkdir(parents=True)
    outgoing.write_text("day 1: museum\n" * 100)
    await bus.send(room, "", id="file-1", files=(str(outgoing),))
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok, receipt.error
    [sent] = await ada.messages_from(room, bot.user_id)
    assert (sent["content"]["msgtype"], sent["content"]["body"]) == ("m.file", "plan.txt")
    assert await ada.download(sent["content"]["url"]) == outgoing.read_bytes()
    # Over the homeserver's own limit (10M in the test Synapse's max_upload_size): refused before any upload.
    big = outgoing.with_name("big.bin")
    big.write_bytes(b"x" * (10 * 1024 * 1024 + 1))
    await bus.send(room, "", id="file-2", files=(str(big),))
    refused = (await bus.wait_receipts(2))[1]
    assert not refused.ok and refused.error == f"big.bin is {10 * 1024 * 1024 + 1} bytes; matrix takes at most 10485760"
    assert len(await ada.messages_from(room, bot.user_id)) == 1


@pytest.fixture
def proxy(synapse: Synapse) -> Iterator[MediaProxy]:
    p = MediaProxy(synapse.url).start_in_thread()
    yield p
    p.stop_thread()


def in_process(proxy: MediaProxy, bot: Account) -> MatrixBridge:
    """The bridge as its process makes it, but here (to lower `deaf_after`), its homeserver the proxy."""
    bridge = MatrixBridge(proxy.url, Credential(bot.token, bot.device_id), sync_timeout=0.5)
    bridge.deaf_after = 1.5
    return bridge


async def send_file(ada: Person, room: str, data: bytes, name: str) -> None:
    mxc = await ada.upload(data, name, "application/octet-stream")
    info = {"size": len(data), "mimetype": "application/octet-stream"}
    await ada.send(room, {"msgtype": "m.file", "body": name, "filename": name, "url": mxc, "info": info})


async def test_a_download_slower_than_deaf_after_leaves_the_listener_syncing(
    tmp_path: Path, proxy: MediaProxy, ada: Person, bot: Account, bus: MatrixBus, router_admits: set[str]
) -> None:
    """A big file from a slow media repository is fetched by its room's own task: the listener goes on syncing, is
    not taken for deaf, and the message is stored once its file is whole."""
    trickle = proxy.trickle = Trickle(chunk=64 * 1024)
    data = bytes(range(256)) * 1024  # four chunks
    bridge = in_process(proxy, bot)
    async with listening(bridge, bus.js, tmp_path) as (_, stats):
        room = await direct_room(ada, bot)
        await send_file(ada, room, data, "talk.bin")
        await eventually(lambda: proxy.downloads, 20, "the file was never asked for")
        for _ in range(4):  # the test sets the pace: the download takes 2.4 times deaf_after
            await asyncio.sleep(0.6 * bridge.deaf_after)
            trickle.step()
        await eventually(lambda: stats.inbound == 1 or trickle.aborted.is_set(), 10, "the message was never stored")
        assert not trickle.aborted.is_set() and stats.reconnects == 0, "the download was cut short"
    [message] = await messages(bus, 1)
    assert local_file(message.attachments[0].url) == data


async def test_a_file_the_media_repository_cannot_hand_over_for_a_while_waits_in_its_room_and_arrives(
    tmp_path: Path, proxy: MediaProxy, ada: Person, bot: Account, bus: MatrixBus, router_admits: set[str]
) -> None:
    """503s for longer than the bridge's first try: the message waits for its file, the room's next message behind
    it, and arrives with the file."""
    bridge = in_process(proxy, bot)
    async with listening(bridge, bus.js, tmp_path):
        room = await direct_room(ada, bot)
        proxy.failures = [503, 503, 503]
        await send_file(ada, room, b"milk, eggs", "list.txt")
        await ada.say(room, "did you get it?")
        got = await messages(bus, 2)
    assert [(m.text, len(m.attachments)) for m in got] == [("", 1), ("did you get it?", 0)]
    assert local_file(got[0].attachments[0].url) == b"milk, eggs"
    assert proxy.downloads == [503, 503, 503, 200]


async def test_a_card_goes_to_the_approver_in_a_direct_room_and_only_a_numbered_reply_presses_it(
    ada: Person, bob: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    card = ev.Card(
        title="Allow GitHub?",
        buttons=(ev.Button(id="approve", label="Approve"), ev.Button(id="deny", label="Deny", style="danger")),
    )
    # As the approvals service does for an approver with no direct chat yet: the chat is the user.
    await bus.send(ada.user_id, "The agent wants to use GitHub.", id="approval:m1", card=card)
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok, receipt.error

    async def invited() -> str | None:
        rooms = await ada.invites()
        return rooms[0] if rooms else None

    room = await eventually(invited, 20, "the approver was never invited to a direct room")
    await ada.join(room)
    [shown] = await ada.messages_from(room, bot.user_id)
    assert shown["event_id"] == receipt.platform_message_id
    assert "1) Approve" in shown["content"]["body"] and "2) Deny" in shown["content"]["body"]
    reply = {"m.relates_to": {"m.in_reply_to": {"event_id": shown["event_id"]}}}
    await ada.say(room, "what is GitHub?", **reply)  # not a number: an ordinary message
    await ada.say(room, "2", **reply)
    await ada.say(room, "9", **reply)  # no such choice: an ordinary message

    async def actions() -> list[ev.InboundAction] | None:
        found = [e for e in await bus.inbound() if isinstance(e, ev.InboundAction)]
        return found or None

    [action] = await eventually(actions, 20, "the numbered reply pressed nothing")
    assert (action.card_id, action.button_id, action.sender.id) == ("approval:m1", "deny", f"matrix:{ada.user_id}")
    assert action.message_id == shown["event_id"] and action.route.chat_id == room
    texts = [m.text for m in await messages(bus, 2)]
    assert texts == ["what is GitHub?", "9"]
    # A second card to her reuses the room the bridge made and remembers; a keycap reaction presses too.
    await bus.send(ada.user_id, "And Slack?", id="approval:m2", card=card)
    second = (await bus.wait_receipts(2))[1]
    assert [m["event_id"] for m in await ada.messages_from(room, bot.user_id)] == [
        shown["event_id"],
        second.platform_message_id,
    ]
    await ada.send(
        room,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": second.platform_message_id, "key": "1\ufe0f\u20e3"}},
        kind="m.reaction",
    )

    async def both() -> list[ev.InboundAction] | None:
        found = [e for e in await bus.inbound() if isinstance(e, ev.InboundAction)]
        return found if len(found) == 2 else None

    pressed = (await eventually(both, 20, "the keycap reaction pressed nothing"))[1]
    assert (pressed.card_id, pressed.button_id, pressed.sender.id) == (
        "approval:m2",
        "approve",
        f"matrix:{ada.user_id}",
    )


# --- crashes and limits -----------------------------------------------------------------------------------


async def test_a_killed_bridge_loses_and_repeats_nothing_either_way(
    ada: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await direct_room(ada, bot)
    for i in range(25):
        await bus.send(room, f"answer {i}", id=f"out-{i}")
    sent = [await ada.say(room, f"question {i}") for i in range(25)]
    bridge.stop(signal.SIGKILL)
    sent += [await ada.say(room, f"question {i}") for i in range(25, 50)]  # while it is down
    bridge.start()
    found = await messages(bus, 50)
    await bus.wait_receipts(25, timeout=60)
    assert sorted(m.message_id for m in found) == sorted(sent)  # each once, none lost
    bodies = [m["content"]["body"] for m in await ada.messages_from(room, bot.user_id)]
    assert sorted(bodies) == sorted(f"answer {i}" for i in range(25))  # each once


async def test_a_429_from_synapse_is_waited_out_and_every_message_arrives(
    synapse: Synapse, ada: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await direct_room(ada, bot)
    admin = synapse.register("Admin", admin=True)
    async with httpx.AsyncClient(base_url=synapse.url, headers={"Authorization": f"Bearer {admin.token}"}) as http:
        resp = await http.post(
            f"/_synapse/admin/v1/users/{bot.user_id}/override_ratelimit",
            json={"messages_per_second": 2, "burst_count": 1},
        )
        resp.raise_for_status()
    for i in range(5):
        await bus.send(room, f"line {i}", id=f"burst-{i}")
    receipts = await bus.wait_receipts(5, timeout=60)
    assert all(r.ok for r in receipts)
    assert "M_LIMIT_EXCEEDED" in bridge.output()
    bodies = [m["content"]["body"] for m in await ada.messages_from(room, bot.user_id)]
    assert sorted(bodies) == [f"line {i}" for i in range(5)]


async def test_a_send_the_homeserver_refuses_for_good_is_reported_with_its_words(
    ada: Person, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[])  # the bot was never invited
    await bus.send(room, "hello?", id="nope-1")
    [receipt] = await bus.wait_receipts(1)
    assert not receipt.ok and receipt.error is not None and "M_FORBIDDEN" in receipt.error
    assert "failed for good" in bridge.output()


async def test_more_messages_while_down_than_one_sync_carries_are_read_back_in_order(
    ada: Person, bot: Account, bus: MatrixBus, bridge: MatrixBridgeProcess
) -> None:
    room = await direct_room(ada, bot)
    await ada.say(room, "before")
    await messages(bus, 1)
    assert bridge.stop() == 0
    sent = [await ada.say(room, f"while away {i}") for i in range(TIMELINE_LIMIT + 30)]
    bridge.start()
    found = await messages(bus, len(sent) + 1)
    assert [m.message_id for m in found[1:]] == sent  # none lost, none twice, in order
    assert "more new events than one sync carries" in bridge.output()  # the /messages path was taken


# --- starting ----------------------------------------------------------------------------------------------


async def test_a_token_the_homeserver_no_longer_accepts_stops_the_bridge_saying_to_log_in_again(
    stopped_bridge: MatrixBridgeProcess,
) -> None:
    revoked = "syt_Y2xhd2Rlbg_revokedrevokedrev_0AbCdE"
    stopped_bridge.start(wait=False, env=stopped_bridge.env() | {"CLAWDEN_MATRIX_TOKEN": revoked})
    assert stopped_bridge.proc is not None and stopped_bridge.proc.wait(30) == EX_CONFIG
    output = stopped_bridge.output()
    assert "no longer accepts the access token" in output and "clawden channels login matrix" in output
    assert revoked not in output and "Traceback" not in output


async def test_a_homeserver_away_at_start_is_waited_for_and_what_was_queued_goes_out_once_it_is_back(
    stopped_bridge: MatrixBridgeProcess,
    synapse: Synapse,
    bot: Account,
    ada: Person,
    bus: MatrixBus,
    router_admits: set[str],
) -> None:
    stopped_bridge.start()
    room = await direct_room(ada, bot)
    assert stopped_bridge.stop() == 0
    away = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    stopped_bridge.start(env=stopped_bridge.env() | {"CLAWDEN_MATRIX_HOMESERVER": away})  # it still gets ready
    assert "cannot reach the homeserver yet" in stopped_bridge.output()
    await bus.send(room, "sorry for the wait", id="late-1")
    await eventually(
        lambda: "outbound late-1 failed (send: cannot reach the homeserver" in stopped_bridge.output(),
        30,
        "the send was never tried",
    )
    assert stopped_bridge.stop() == 0  # mid-retry: the message goes back to JetStream
    stopped_bridge.start()
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok
    assert [m["content"]["body"] for m in await ada.messages_from(room, bot.user_id)] == ["sorry for the wait"]
