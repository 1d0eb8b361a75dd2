"""End to end over Discord: `clawden up` (router, runner, approvals, vault), the real bridge process, the fake
Discord (REST and the Gateway), a real agent container running Claude Code against the fake model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clawden import config as config_mod
from clawden import control, sessiondb
from clawden.bus.ctl import router as router_ctl
from tests.channels.discord_harness import DiscordBridge
from tests.e2e.harness import Stack, start_stack
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall
from tests.fakes.discord import BOT_ID, FakeDiscord

pytestmark = pytest.mark.docker
ANSWER = 120.0  # a first message starts a container


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("home"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def discord() -> Iterator[FakeDiscord]:
    fake = FakeDiscord().start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture(scope="module")
def bridge(stack: Stack, discord: FakeDiscord) -> Iterator[DiscordBridge]:
    b = DiscordBridge(stack.home, stack.nats_url, discord).start()
    yield b
    b.close()
    assert discord.token not in b.output()


async def wire(stack: Stack, chat: str, *, group: bool, policy: router_ctl.UnknownSenderPolicy = "public") -> None:
    """The owner wires a channel to agent group `main` (the router's control API, as `clawden wire` does)."""
    cfg = config_mod.load(stack.home)
    await control.ask(
        cfg,
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(channel="discord", chat_id=chat, name=chat, is_group=group, policy=policy),
    )
    await control.ask(
        cfg, router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="discord", chat_id=chat, agent_group="main")
    )


async def answers(discord: FakeDiscord, chat: str, count: int, timeout: float = ANSWER) -> list[str]:
    def found() -> list[str] | None:
        texts = discord.texts(chat)
        return texts if len(texts) >= count else None

    return await eventually(found, timeout, lambda: f"fewer than {count} answers in {chat}: {discord.texts(chat)}")


def settled(stack: Stack) -> bool:
    """Every session's triggering messages are finished: no turn is still running or waiting."""
    folders = [f for f in (stack.home / "sessions" / "main").iterdir() if (f / sessiondb.INBOUND).exists()]
    return all(not sessiondb.unfinished(f) for f in folders)


def asked(stack: Stack, text: str) -> bool:
    return any(text in str(r.body) for r in stack.fake.messages_requests(with_tools=True))


async def test_a_dm_a_mention_and_a_thread_reply_are_answered_in_their_place_and_a_plain_message_is_not(
    stack: Stack, discord: FakeDiscord, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    general = discord.channel("general")
    await wire(stack, dm, group=False)
    await wire(stack, general, group=True)  # default engage mode for a channel: mentions
    discord.say(dm, ada, "what is on today?")
    [answer] = await answers(discord, dm, 1)
    assert answer.startswith("echo: ") and "what is on today?" in answer
    discord.say(general, ada, "lunch at noon, anyone?")
    discord.say(general, ada, f"<@{BOT_ID}> which pub is open late?")
    [answer] = await answers(discord, general, 1)
    assert "which pub is open late?" in answer
    thread = discord.thread(general, "pubs", ada)
    discord.say(thread, ada, f"<@{BOT_ID}> and which one has a terrace?")
    [threaded] = await answers(discord, thread, 1)
    assert "which one has a terrace?" in threaded
    await eventually(lambda: asyncio.to_thread(settled, stack), ANSWER, "the turns never finished")
    assert not asked(stack, "lunch at noon")
    assert discord.texts(general) == [answer]  # nothing else in the channel itself


async def test_a_strangers_message_waits_for_the_owner_who_alone_presses_the_card_in_their_dm(
    stack: Stack, discord: FakeDiscord, bridge: DiscordBridge
) -> None:
    cfg = config_mod.load(stack.home)
    ada, bob = discord.user("ada"), discord.user("bob")
    await control.ask(cfg, router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=f"discord:{ada}", role="owner"))
    own = discord.dm(ada)
    await wire(stack, own, group=False)
    discord.say(own, ada, "hello")  # the bridge now knows her DM: her cards go there
    await answers(discord, own, 1)
    neighbours = discord.channel("neighbours")
    await wire(stack, neighbours, group=True, policy="request_approval")
    discord.say(neighbours, bob, f"<@{BOT_ID}> when is the bin day?")  # Bob is unknown here: the owner is asked

    def card() -> dict[str, Any] | None:
        return next((m for m in discord.bot_messages(own) if m["components"]), None)

    pending = await eventually(card, ANSWER, "no card reached the owner's DM")
    discord.click(own, pending["id"], bob, button=0)  # someone else presses: refused, nothing changes

    def refused() -> bool:
        return any("only" in t for t in discord.texts(own)[1:] if t != pending["content"])

    await eventually(refused, 60, lambda: f"no refusal: {discord.texts(own)}")
    assert discord.texts(neighbours) == []
    discord.click(own, pending["id"], ada, button=0)  # the owner allows
    [answer] = await answers(discord, neighbours, 1)
    assert "when is the bin day?" in answer

    def decided() -> bool:
        found = next(m for m in discord.bot_messages(own) if m["id"] == pending["id"])
        return not found["components"]

    await eventually(decided, 60, "the decided card kept its buttons")
    assert len(discord.callbacks) == 2 and all(kind == 6 and after < 3.0 for _, kind, after in discord.callbacks)


async def test_a_file_reaches_the_agents_inbox_and_the_file_it_sends_arrives_in_the_dm(
    stack: Stack, discord: FakeDiscord, bridge: DiscordBridge
) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    await wire(stack, dm, group=False)
    discord.say(dm, ada, "hello")
    await answers(discord, dm, 1)  # the container is up: the next turn is the scripted one
    await eventually(lambda: asyncio.to_thread(settled, stack), ANSWER, "the first turn never finished")
    write = ToolCall("Write", {"file_path": "/workspace/agent/report.txt", "content": "quarterly numbers\n"})
    stack.fake.script(write, ToolCall("send_file", {"path": "report.txt", "text": "here it is"}), Text("ok"))
    seen = len(stack.fake.messages_requests(with_tools=True))
    discord.say(dm, ada, "", files={"note.txt": b"buy oat milk\n"})

    def file_back() -> dict[str, Any] | None:
        return next((m for m in discord.bot_messages(dm) if m["attachments"]), None)

    sent = await eventually(file_back, ANSWER, "the agent's file never arrived")
    assert sent["attachments"][0]["filename"] == "report.txt"
    assert discord.files[sent["attachments"][0]["id"]] == b"quarterly numbers\n"
    prompt = str(stack.fake.messages_requests(with_tools=True)[seen].body["messages"])
    assert "[attachment note.txt (text/plain, 13 bytes) at /workspace/session/inbox/" in prompt


def reconnected(discord: FakeDiscord, connections: int) -> Callable[[], bool]:
    return lambda: discord.connections > connections and discord.session is not None


async def test_messages_flowing_through_gateway_drops_and_ended_sessions_are_each_answered_exactly_once(
    stack: Stack, discord: FakeDiscord, bridge: DiscordBridge
) -> None:
    """Twenty drops while forty questions flow: most resumed (with duplicated dispatches), every fifth a session
    Discord ended, so the bridge identifies anew and reads the gap from the channel's history."""
    ada = discord.user("ada")
    dm = discord.dm(ada)
    await wire(stack, dm, group=False)
    questions = [f"question Q{i:03d}Z" for i in range(40)]
    discord.duplicate(20)
    for i, text in enumerate(questions):
        discord.say(dm, ada, text)
        if i % 2 == 1:
            # Counted before the drop: the bridge may be back before this thread runs again.
            connections = discord.connections
            if i % 10 == 9:
                discord.end_session()
            else:
                discord.drop_socket()
            await eventually(
                reconnected(discord, connections),
                20,
                lambda: f"the bridge did not connect again:\n{bridge.output()[-4000:]}",
            )

    async def all_answered() -> list[str] | None:
        texts = discord.texts(dm)
        done = all(any(q in t for t in texts) for q in questions) and await asyncio.to_thread(settled, stack)
        return texts if done else None

    texts = await eventually(all_answered, 2 * ANSWER, "not every message was answered")
    counts = {q: sum(t.count(q) for t in texts) for q in questions}
    assert {q: n for q, n in counts.items() if n != 1} == {}, texts
    assert len(discord.identifies) >= 5 and discord.calls_to("history"), "no session was read back from history"


async def test_the_owner_pairs_by_sending_the_code_in_a_dm(
    stack: Stack, discord: FakeDiscord, bridge: DiscordBridge
) -> None:
    dee = discord.user("dee")
    dm = discord.dm(dee)
    pair = await control.ask(config_mod.load(stack.home), router_ctl.PAIR, router_ctl.PairCreate(channel="discord"))
    discord.say(dm, dee, pair.code)
    [answer] = await answers(discord, dm, 1, timeout=60)
    assert answer == f"Paired: discord:{dee} is now an owner of this Clawden."
