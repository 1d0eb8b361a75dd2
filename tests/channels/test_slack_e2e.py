"""End to end over Slack: `clawden up` (router, runner, approvals, vault), the real bridge process, the fake
Slack (Web API and Socket Mode), a real agent container running Claude Code against the fake model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clawden import config as config_mod
from clawden import control, sessiondb
from clawden.bus.ctl import router as router_ctl
from tests.channels.slack_harness import SlackBridge
from tests.e2e.harness import Stack
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall
from tests.fakes.slack import BOT_USER, Error, FakeSlack

pytestmark = pytest.mark.docker
ANSWER = 120.0  # a first message starts a container


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture(scope="module")
def bridge(stack: Stack, slack: FakeSlack) -> Iterator[SlackBridge]:
    b = SlackBridge(stack.home, stack.nats_url, slack).start()
    yield b
    b.close()
    assert slack.bot_token not in b.output() and slack.app_token not in b.output()


async def wire(stack: Stack, chat: str, *, group: bool, policy: router_ctl.UnknownSenderPolicy = "public") -> None:
    """The owner wires a conversation to agent group `main` (the router's control API, as `clawden wire` does)."""
    cfg = config_mod.load(stack.home)
    await control.ask(
        cfg,
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(channel="slack", chat_id=chat, name=chat, is_group=group, policy=policy),
    )
    await control.ask(
        cfg, router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="slack", chat_id=chat, agent_group="main")
    )


async def answers(
    slack: FakeSlack, chat: str, count: int, thread: str | None = None, timeout: float = ANSWER
) -> list[str]:
    def found() -> list[str] | None:
        texts = slack.texts(chat, thread)
        return texts if len(texts) >= count else None

    return await eventually(found, timeout, f"fewer than {count} answers in {chat} (thread {thread})")


def settled(stack: Stack) -> bool:
    """Every session's triggering messages are finished: no turn is still running or waiting."""
    folders = [f for f in (stack.home / "sessions" / "main").iterdir() if (f / sessiondb.INBOUND).exists()]
    return all(not sessiondb.unfinished(f) for f in folders)


def asked(stack: Stack, text: str) -> bool:
    return any(text in str(r.body) for r in stack.fake.messages_requests(with_tools=True))


async def test_a_dm_a_mention_and_a_thread_reply_are_answered_in_their_place_and_a_plain_message_is_not(
    stack: Stack, slack: FakeSlack, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    general = slack.channel("general", ada)
    await wire(stack, dm, group=False)
    await wire(stack, general, group=True)  # default engage mode for a channel: mentions
    slack.say(dm, ada, "what is on today?")
    [answer] = await answers(slack, dm, 1)
    assert answer.startswith("echo: ") and "what is on today?" in answer
    slack.say(general, ada, "lunch at noon, anyone?")
    slack.say(general, ada, f"<@{BOT_USER}> which pub is open late?")
    [answer] = await answers(slack, general, 1)
    assert "which pub is open late?" in answer
    root = slack.bot_messages(general)[0]["ts"]
    slack.say(general, ada, "and which one has a terrace?", thread_ts=root)  # in the bot's thread: for it
    [threaded] = await answers(slack, general, 1, thread=root)
    assert "which one has a terrace?" in threaded
    await eventually(lambda: asyncio.to_thread(settled, stack), ANSWER, "the turns never finished")
    assert not asked(stack, "lunch at noon")
    assert slack.texts(general) == [answer]  # nothing else at the top level of the channel


async def test_a_strangers_message_waits_for_the_owner_who_alone_presses_the_card_in_their_dm(
    stack: Stack, slack: FakeSlack, bridge: SlackBridge
) -> None:
    cfg = config_mod.load(stack.home)
    ada, bob = slack.user("ada"), slack.user("bob")
    await control.ask(cfg, router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=f"slack:{ada}", role="owner"))
    own = slack.dm(ada)
    await wire(stack, own, group=False)
    slack.say(own, ada, "hello")  # the bridge now knows her DM: her cards go there
    await answers(slack, own, 1)
    neighbours = slack.channel("neighbours", ada, bob)
    await wire(stack, neighbours, group=True, policy="request_approval")
    slack.say(neighbours, bob, f"<@{BOT_USER}> when is the bin day?")  # Bob is unknown here: the owner is asked

    def card() -> dict[str, Any] | None:
        return next((m for m in slack.bot_messages(own) if m.get("blocks")), None)

    pending = await eventually(card, ANSWER, "no card reached the owner's DM")
    slack.click(own, pending["ts"], bob, button=0)  # someone else presses: refused, nothing changes

    def refused() -> bool:
        return any("only" in t for t in slack.texts(own)[1:] if t != pending["text"])

    await eventually(refused, 60, lambda: f"no refusal: {slack.texts(own)}")
    assert slack.texts(neighbours) == []
    slack.click(own, pending["ts"], ada, button=0)  # the owner allows
    [answer] = await answers(slack, neighbours, 1)
    assert "when is the bin day?" in answer

    def decided() -> bool:
        found = next(m for m in slack.bot_messages(own) if m["ts"] == pending["ts"])
        return found.get("blocks") == []

    await eventually(decided, 60, "the decided card kept its buttons")


async def test_a_file_reaches_the_agents_inbox_and_the_file_it_sends_arrives_in_the_dm(
    stack: Stack, slack: FakeSlack, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    await wire(stack, dm, group=False)
    slack.say(dm, ada, "hello")
    await answers(slack, dm, 1)  # the container is up: the next turn is the scripted one
    await eventually(lambda: asyncio.to_thread(settled, stack), ANSWER, "the first turn never finished")
    write = ToolCall("Write", {"file_path": "/workspace/agent/report.txt", "content": "quarterly numbers\n"})
    stack.fake.script(write, ToolCall("send_file", {"path": "report.txt", "text": "here it is"}), Text("ok"))
    seen = len(stack.fake.messages_requests(with_tools=True))
    slack.say(dm, ada, "", files=[b"buy oat milk\n"], names=["note.txt"])

    def file_back() -> dict[str, Any] | None:
        return next((m for m in slack.bot_messages(dm) if m.get("files")), None)

    sent = await eventually(file_back, ANSWER, "the agent's file never arrived")
    assert sent["files"][0]["name"] == "report.txt"
    assert slack.uploaded[sent["files"][0]["id"]] == b"quarterly numbers\n"
    prompt = str(stack.fake.messages_requests(with_tools=True)[seen].body["messages"])
    assert "[attachment note.txt (text/plain, 13 bytes) at /workspace/session/inbox/" in prompt


def reconnected(slack: FakeSlack, connections: int) -> Callable[[], bool]:
    return lambda: slack.connections >= connections


async def test_messages_flowing_through_socket_drops_and_duplicates_are_each_answered_exactly_once(
    stack: Stack, slack: FakeSlack, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    await wire(stack, dm, group=False)
    questions = [f"question Q{i:03d}Z" for i in range(200)]
    slack.duplicate(50)
    for i, text in enumerate(questions):
        slack.say(dm, ada, text)
        if i % 10 == 9:  # twenty drops and disconnects while the answers flow
            connections = slack.connections  # counted before: the bridge may be back before this thread runs again
            if i % 20 == 9:
                slack.drop_socket()
            else:
                slack.disconnect()
            await eventually(reconnected(slack, connections + 1), 20, "the bridge did not connect again")

    async def all_answered() -> list[str] | None:
        texts = slack.texts(dm)
        done = all(any(q in t for t in texts) for q in questions) and await asyncio.to_thread(settled, stack)
        return texts if done else None

    texts = await eventually(all_answered, 3 * ANSWER, "not every message was answered")
    counts = {q: sum(t.count(q) for t in texts) for q in questions}
    assert {q: n for q, n in counts.items() if n != 1} == {}, texts
    assert not slack.late_acks


async def test_a_chat_held_by_a_429_does_not_hold_up_another(
    stack: Stack, slack: FakeSlack, bridge: SlackBridge
) -> None:
    ada, bea = slack.user("ada"), slack.user("bea")
    held, free = slack.dm(ada), slack.dm(bea)
    await wire(stack, held, group=False)
    await wire(stack, free, group=False)
    slack.say(held, ada, "hello")
    slack.say(free, bea, "hello")
    await answers(slack, held, 1)
    await answers(slack, free, 1)  # both containers are up: what follows measures the bridge, not a start
    slack.inject("chat.postMessage", Error(429, "ratelimited", retry_after=15, channel=held))
    slack.say(held, ada, "first question")
    await eventually(
        lambda: any(c.outcome.startswith("fault 429") for c in slack.calls_to("chat.postMessage")),
        ANSWER,
        "the held chat's answer never reached Slack",
    )
    slack.say(free, bea, "second question")
    answer = (await answers(slack, free, 2, timeout=12))[1]  # inside the other chat's 15 s
    assert "second question" in answer
    assert len(slack.texts(held)) == 1
    held_answer = (await answers(slack, held, 2, timeout=60))[1]
    assert "first question" in held_answer


async def test_the_owner_pairs_by_sending_the_code_in_a_dm(stack: Stack, slack: FakeSlack, bridge: SlackBridge) -> None:
    dee = slack.user("dee")
    dm = slack.dm(dee)
    pair = await control.ask(config_mod.load(stack.home), router_ctl.PAIR, router_ctl.PairCreate(channel="slack"))
    slack.say(dm, dee, pair.code)
    [answer] = await answers(slack, dm, 1, timeout=60)
    assert answer == f"Paired: slack:{dee} is now an owner of this Clawden."
    roles = await control.ask(config_mod.load(stack.home), router_ctl.ROLES_LIST, router_ctl.ListAll())
    assert any(r.user_id == f"slack:{dee}" and r.role == "owner" for r in roles)
