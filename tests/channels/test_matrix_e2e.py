"""End to end over Matrix: `clawden up` (router, runner, approvals, vault), the real bridge process, a real
Synapse, a real agent container running Claude Code against the fake model."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clawden import config as config_mod
from clawden import control, sessiondb
from clawden.bus.ctl import router as router_ctl
from tests.channels.matrix_harness import MatrixBridgeProcess, Person
from tests.e2e.harness import Stack
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall
from tests.servers.synapse.fixture import Account, Synapse

pytestmark = pytest.mark.docker
ANSWER = 120.0  # a first message starts a container


@pytest.fixture(scope="module")
def bot(synapse: Synapse) -> Account:
    return synapse.register("Clawden", displayname="Clawden")


@pytest.fixture(scope="module")
def bridge(stack: Stack, synapse: Synapse, bot: Account) -> Iterator[MatrixBridgeProcess]:
    b = MatrixBridgeProcess(stack.home, stack.nats_url, synapse, bot).start()
    yield b
    b.close()
    assert bot.token not in b.output(), "the access token reached the log"


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


async def wire(stack: Stack, room_id: str, *, group: bool, policy: router_ctl.UnknownSenderPolicy = "public") -> None:
    """The owner wires a room to agent group `main` (the router's control API, as `clawden wire` does)."""
    cfg = config_mod.load(stack.home)
    await control.ask(
        cfg,
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(channel="matrix", chat_id=room_id, name="", is_group=group, policy=policy),
    )
    await control.ask(
        cfg, router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="matrix", chat_id=room_id, agent_group="main")
    )


async def answers(person: Person, room_id: str, bot: Account, count: int) -> list[dict[str, object]]:
    async def found() -> list[dict[str, object]] | None:
        got = await person.messages_from(room_id, bot.user_id)
        return got if len(got) >= count else None

    return await eventually(found, ANSWER, f"fewer than {count} answers from the agent in {room_id}")


async def joined(person: Person, room_id: str, user_id: str) -> None:
    async def member() -> bool:
        return await person.membership(room_id, user_id) == "join"

    await eventually(member, 20, f"{user_id} never joined {room_id}")


async def test_a_message_is_answered_in_its_room_and_a_thread_in_its_thread(
    stack: Stack, ada: Person, bot: Account, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[bot.user_id], direct=True)
    await joined(ada, room, bot.user_id)
    await wire(stack, room, group=False)
    await ada.say(room, "what is on today?")
    [answer] = await answers(ada, room, bot, 1)
    body = answer["content"]["body"]  # type: ignore[index]
    assert str(body).startswith("echo: ") and "what is on today?" in str(body)
    root = await ada.say(room, "about the trip")
    await answers(ada, room, bot, 2)
    await ada.say(
        room,
        "which train do we take",
        **{
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": root},
            }
        },
    )
    third = (await answers(ada, room, bot, 3))[2]
    assert "which train do we take" in str(third["content"]["body"])  # type: ignore[index]
    assert third["content"]["m.relates_to"]["rel_type"] == "m.thread"  # type: ignore[index]
    assert third["content"]["m.relates_to"]["event_id"] == root  # type: ignore[index]


async def test_in_a_group_room_a_mention_engages_and_a_plain_message_does_not(
    stack: Stack, ada: Person, bob: Person, bot: Account, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[bot.user_id, bob.user_id], name="Club")
    await joined(ada, room, bot.user_id)
    await bob.join(room)
    await wire(stack, room, group=True)  # default engage mode for a group: mentions
    await ada.say(room, "dinner at 8 tonight?")
    await bob.say(room, "Clawden, which pub is open late?")
    [answer] = await answers(ada, room, bot, 1)
    assert "which pub is open late" in str(answer["content"]["body"])  # type: ignore[index]
    assert not any("dinner at 8" in str(r.body) for r in stack.fake.messages_requests(with_tools=True))


async def test_a_stranger_waits_for_the_owner_who_alone_decides_in_a_direct_room_the_bridge_made(
    tmp_path: Path, stack: Stack, ada: Person, bob: Person, bot: Account, bridge: MatrixBridgeProcess
) -> None:
    cfg = config_mod.load(stack.home)
    await control.ask(cfg, router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=f"matrix:{ada.user_id}", role="owner"))
    room = await ada.create_room(invite=[bot.user_id, bob.user_id], name="Neighbours")
    await joined(ada, room, bot.user_id)
    await bob.join(room)
    await wire(stack, room, group=True, policy="request_approval")
    await bob.say(room, "Clawden, when is the bin day?")  # Bob is unknown here: the owner is asked

    async def invited() -> str | None:
        rooms = await ada.invites()
        return rooms[0] if rooms else None

    direct = await eventually(invited, ANSWER, "the owner was never invited to a direct room with the card")
    await ada.join(direct)
    [card] = await answers(ada, direct, bot, 1)
    assert "1) Allow" in str(card["content"]["body"])  # type: ignore[index]
    reply = {"m.relates_to": {"m.in_reply_to": {"event_id": card["event_id"]}}}
    # Someone else in that room presses: refused, nothing changes.
    await ada.invite(direct, bob.user_id)
    await bob.join(direct)
    await bob.say(direct, "1", **reply)
    refusal = (await answers(ada, direct, bot, 2))[1]
    assert "only" in str(refusal["content"]["body"]) and "Nothing was changed" in str(refusal["content"]["body"])  # type: ignore[index]
    assert await ada.messages_from(room, bot.user_id) == []
    # The owner presses: Bob's message is let through and answered in his room.
    await ada.say(direct, "1", **reply)
    answer = (await answers(ada, room, bot, 1))[-1]
    assert "when is the bin day" in str(answer["content"]["body"])  # type: ignore[index]


async def test_an_invite_from_a_stranger_into_a_strict_room_is_declined_and_shown_as_dropped(
    stack: Stack, bob: Person, bot: Account, bridge: MatrixBridgeProcess
) -> None:
    room = await bob.create_room(invite=[], name="Private")
    cfg = config_mod.load(stack.home)
    await control.ask(
        cfg,
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(channel="matrix", chat_id=room, name="Private", is_group=True, policy="strict"),
    )
    await bob.invite(room, bot.user_id)

    async def declined() -> bool:
        return await bob.membership(room, bot.user_id) == "leave"

    await eventually(declined, 30, "the bot did not decline the invite")
    dropped = await control.ask(cfg, router_ctl.DROPPED_LIST, router_ctl.DroppedList(channel="matrix"))
    assert [(d.chat_id, d.sender_id, d.reason) for d in dropped if d.chat_id == room] == [
        (room, f"matrix:{bob.user_id}", "invited by an unknown user (strict chat)")
    ]


def settled(stack: Stack) -> bool:
    """Every session's triggering messages are finished: no turn is still running or waiting."""
    folders = [f for f in (stack.home / "sessions" / "main").iterdir() if (f / sessiondb.INBOUND).exists()]
    return all(not sessiondb.unfinished(f) for f in folders)


async def test_fifty_messages_across_a_killed_bridge_are_each_answered_exactly_once(
    stack: Stack, ada: Person, bot: Account, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[bot.user_id], direct=True)
    await joined(ada, room, bot.user_id)
    await wire(stack, room, group=False)
    questions = [f"question Q{i:02d}Z" for i in range(50)]  # no characters the prompt would escape
    for text in questions[:20]:
        await ada.say(room, text)
    await answers(ada, room, bot, 1)  # the agent is answering: replies are in flight when the bridge dies
    bridge.stop(signal.SIGKILL)
    for text in questions[20:]:  # while it is down
        await ada.say(room, text)
    bridge.start()

    async def all_answered() -> list[str] | None:
        bodies = [str(m["content"]["body"]) for m in await ada.messages_from(room, bot.user_id)]
        done = all(any(q in b for b in bodies) for q in questions) and await asyncio.to_thread(settled, stack)
        return bodies if done else None

    bodies = await eventually(all_answered, 2 * ANSWER, "not every message was answered")
    counts = {q: sum(b.count(q) for b in bodies) for q in questions}
    assert {q: n for q, n in counts.items() if n != 1} == {}, bodies  # each answered, none twice
    assert len(bodies) == len(set(bodies))  # and no answer posted twice


async def test_a_file_reaches_the_agents_inbox_and_the_file_it_sends_arrives_in_the_room(
    stack: Stack, ada: Person, bot: Account, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[bot.user_id], direct=True)
    await joined(ada, room, bot.user_id)
    await wire(stack, room, group=False)
    await ada.say(room, "hello")
    await answers(ada, room, bot, 1)  # the container is up: the next turn is the scripted one
    await eventually(lambda: asyncio.to_thread(settled, stack), ANSWER, "the first turn never finished")
    write = ToolCall("Write", {"file_path": "/workspace/agent/report.txt", "content": "quarterly numbers\n"})
    stack.fake.script(write, ToolCall("send_file", {"path": "report.txt", "text": "here it is"}), Text("ok"))
    note = b"buy oat milk\n"
    mxc = await ada.upload(note, "note.txt", "text/plain")
    seen = len(stack.fake.messages_requests(with_tools=True))
    await ada.send(
        room,
        {
            "msgtype": "m.file",
            "body": "note.txt",
            "filename": "note.txt",
            "url": mxc,
            "info": {"size": len(note), "mimetype": "text/plain"},
        },
    )

    async def file_back() -> dict[str, object] | None:
        files = [m for m in await ada.messages_from(room, bot.user_id) if m["content"].get("msgtype") == "m.file"]
        return files[0] if files else None

    sent = await eventually(file_back, ANSWER, "the agent's file never arrived")
    assert sent["content"]["body"] == "report.txt"  # type: ignore[index]
    assert await ada.download(str(sent["content"]["url"])) == b"quarterly numbers\n"  # type: ignore[index]
    prompt = str(stack.fake.messages_requests(with_tools=True)[seen].body["messages"])
    assert "[attachment note.txt (text/plain, 13 bytes) at /workspace/session/inbox/" in prompt
    inboxes = [f / "inbox" for f in (stack.home / "sessions" / "main").iterdir()]
    assert note in [p.read_bytes() for inbox in inboxes for p in inbox.rglob("*") if p.is_file()]


async def test_a_send_the_homeserver_refuses_for_good_is_reported_back_to_the_agent(
    stack: Stack, ada: Person, bot: Account, bridge: MatrixBridgeProcess
) -> None:
    room = await ada.create_room(invite=[bot.user_id])  # a room of two where she is its only admin
    await joined(ada, room, bot.user_id)
    await wire(stack, room, group=False)
    await ada.say(room, "remind me about the dentist")
    await ada.kick(room, bot.user_id)  # before the answer comes: the bot may no longer post there

    def failed() -> list[tuple[int, str]]:
        return [
            f
            for s in (stack.home / "sessions" / "main").iterdir()
            if (s / sessiondb.INBOUND).exists()
            for f in sessiondb.failed_deliveries(s, after_seq=0)
        ]

    found = await eventually(lambda: asyncio.to_thread(failed), ANSWER, "no failed delivery reached a session")
    assert any("M_FORBIDDEN" in error for _, error in found), found
