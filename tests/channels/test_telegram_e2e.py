"""End to end over Telegram: `clawden up` (router, runner, vault), the real bridge process, the fake Bot API,
a real agent container running Claude Code against the fake model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from clawden import config as config_mod
from clawden import control, sessiondb
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_ctl
from tests.channels.harness import BridgeProcess, Bus, until
from tests.e2e.harness import Stack
from tests.fakes.anthropic import ToolCall
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.docker
ANSWER = 120.0  # a first message starts a container


@pytest.fixture(scope="module")
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram().start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture(scope="module")
def bridge(stack: Stack, telegram: FakeTelegram) -> Iterator[BridgeProcess]:
    b = BridgeProcess(stack.home, stack.nats_url, telegram).start()
    yield b
    b.close()
    assert telegram.token not in b.output()


async def wire(stack: Stack, chat: dict[str, Any]) -> None:
    """The owner wires a chat to agent group `main` (the router's control API, as `clawden wire` does)."""
    cfg = config_mod.load(stack.home)
    is_group = chat["type"] != "private"
    await control.ask(
        cfg,
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(
            channel="telegram",
            chat_id=str(chat["id"]),
            name=chat.get("title") or chat.get("first_name", ""),
            is_group=is_group,
            policy="public",
        ),
    )
    # Default engage mode: every message in a direct chat, mentions in a group.
    await control.ask(
        cfg,
        router_ctl.WIRINGS_CREATE,
        router_ctl.WiringCreate(channel="telegram", chat_id=str(chat["id"]), agent_group="main"),
    )


def sends_read(stack: Stack, marker: str) -> int:
    """How many of its tool calls (send_message) the agent has read the results of, in the conversation
    whose text holds `marker`. A turn ends only once the model has read them, after the answer is in the
    chat: a test that leaves earlier lets that last request take the next test's scripted reply."""
    most = 0
    for request in stack.fake.messages_requests(with_tools=True):
        if not isinstance(request.body, dict) or marker not in str(request.body):
            continue
        uses: set[str] = set()
        results: set[str] = set()
        for message in request.body.get("messages") or []:
            for block in message.get("content") if isinstance(message.get("content"), list) else []:
                if block.get("type") == "tool_use":
                    uses.add(block.get("id"))
                elif block.get("type") == "tool_result":
                    results.add(block.get("tool_use_id"))
        most = max(most, len(uses & results))
    return most


async def answers(telegram: FakeTelegram, chat: dict[str, Any], count: int, timeout: float = ANSWER) -> list[str]:
    await until(
        lambda: len(telegram.texts(chat)) >= count,
        timeout,
        lambda: f"{len(telegram.texts(chat))} of {count} answers: {telegram.texts(chat)}",
    )
    return telegram.texts(chat)


async def test_a_private_message_is_answered_with_typing_shown_meanwhile(
    stack: Stack, telegram: FakeTelegram, bridge: BridgeProcess
) -> None:
    ada = telegram.user("Ada")
    chat = telegram.private_chat(ada)
    await wire(stack, chat)
    telegram.send(chat, ada, "what is on today?")
    [answer] = await answers(telegram, chat, 1)
    assert answer.startswith("echo: ") and "what is on today?" in answer
    assert telegram.typing(chat), "no typing indicator while the agent worked"


async def test_a_group_in_privacy_mode_is_answered_by_ask_and_by_replies_to_the_bot(
    stack: Stack, telegram: FakeTelegram, bridge: BridgeProcess
) -> None:
    ada = telegram.user("Ada")
    family = telegram.group("Family")  # the bot joined with privacy mode on, as every new bot has it
    await wire(stack, family)
    telegram.send(family, ada, "dinner at 8 tonight?")
    telegram.send(family, ada, "@clawden_test_bot is the pizzeria open?")  # Telegram never delivers this one
    telegram.send(family, ada, "/ask@clawden_test_bot which restaurant is open late")
    [answer] = await answers(telegram, family, 1)
    assert "which restaurant is open late" in answer and "/ask" not in answer
    [first] = telegram.bot_messages(family)
    telegram.send(family, ada, "and which one has a terrace", reply_to=first["message_id"])
    second = (await answers(telegram, family, 2))[1]
    assert "which one has a terrace" in second
    # One conversation: the second turn's request to the model carries the first turn too.
    assert any(
        "which restaurant is open late" in str(r.body) and "which one has a terrace" in str(r.body)
        for r in stack.fake.messages_requests(with_tools=True)
    )
    assert not any(
        "dinner at 8" in str(r.body) or "pizzeria" in str(r.body) for r in stack.fake.messages_requests(with_tools=True)
    )
    await until(
        lambda: sends_read(stack, "which restaurant is open late") >= 2, ANSWER, "the agent never finished its turns"
    )


async def test_a_group_with_privacy_mode_off_is_answered_when_the_bot_is_mentioned(
    stack: Stack, telegram: FakeTelegram, bridge: BridgeProcess
) -> None:
    ada = telegram.user("Ada")
    telegram.set_privacy(False)
    try:
        club = telegram.group("Club")  # joined after /setprivacy Disable: it reads every message here
    finally:
        telegram.set_privacy(True)
    await wire(stack, club)
    telegram.send(club, ada, "dinner at 8 tonight?")
    telegram.send(club, ada, "@clawden_test_bot which pub is open late")
    [answer] = await answers(telegram, club, 1)
    assert "which pub is open late" in answer
    assert [m for m in telegram.withheld if m["chat"]["id"] == club["id"]] == []  # Telegram delivered both
    await until(lambda: sends_read(stack, "which pub is open late") >= 1, ANSWER, "the agent never finished its turn")
    assert not any("dinner at 8" in str(r.body) for r in stack.fake.messages_requests(with_tools=True))


async def test_a_long_answer_arrives_split_and_in_order(
    stack: Stack, telegram: FakeTelegram, bridge: BridgeProcess
) -> None:
    ada = telegram.user("Ada")
    chat = telegram.private_chat(ada)
    await wire(stack, chat)
    chapters = [f"Chapter {i}. " + f"Line {i} of the long story. " * 90 for i in range(5)]  # ~2.4k each
    stack.fake.script(ToolCall("send_message", {"text": "\n\n".join(chapters)}))
    telegram.send(chat, ada, "tell me a long story")
    # The five parts go out a second apart (Telegram's pace in one chat); the turn ends once the agent has
    # read its send's result, after every part is in: nothing arrives after that.
    await answers(telegram, chat, 5)
    await until(lambda: sends_read(stack, "tell me a long story") >= 1, ANSWER, "the agent never finished its turn")
    texts = telegram.texts(chat)
    assert [t.split(".")[0] for t in texts] == ["Chapter 0", "Chapter 1", "Chapter 2", "Chapter 3", "Chapter 4"]
    assert "\n\n".join(texts) == "\n\n".join(c.rstrip() for c in chapters)


async def test_messages_sent_while_the_bridge_is_down_are_answered_after_it_comes_back(
    stack: Stack, telegram: FakeTelegram, bridge: BridgeProcess
) -> None:
    ada = telegram.user("Ada")
    chat = telegram.private_chat(ada)
    await wire(stack, chat)
    assert bridge.stop() == 0
    seen = len(stack.fake.requests)
    telegram.send(chat, ada, "are you there")  # Telegram keeps it for the bot until it polls again
    bridge.start()
    [answer] = await answers(telegram, chat, 1)
    assert "are you there" in answer
    assert any("are you there" in str(r.body) for r in stack.fake.requests[seen:])


async def test_a_send_that_fails_for_good_is_reported_back_to_the_agent(
    stack: Stack, telegram: FakeTelegram, bridge: BridgeProcess
) -> None:
    ada = telegram.user("Ada")
    chat = telegram.private_chat(ada)
    await wire(stack, chat)
    telegram.send(chat, ada, "remind me about the dentist")
    telegram.block(chat)  # she blocks the bot before the answer comes
    await until(
        lambda: "failed for good: Forbidden: bot was blocked by the user" in bridge.output(),
        ANSWER,
        "the bridge never reported the refused send",
    )
    failed: list[tuple[int, str]] = []
    deadline = time.monotonic() + 30
    while not failed and time.monotonic() < deadline:
        for session in (stack.home / "sessions" / "main").iterdir():
            if (session / sessiondb.INBOUND).exists():
                failed += sessiondb.failed_deliveries(session, after_seq=0)
        await asyncio.sleep(0.2)
    assert any(error == "Forbidden: bot was blocked by the user" for _, error in failed), failed


async def test_a_card_press_reaches_the_router_as_a_button_action(
    stack: Stack, telegram: FakeTelegram, bridge: BridgeProcess
) -> None:
    ada = telegram.user("Ada")
    chat = telegram.private_chat(ada)
    await wire(stack, chat)
    bus = Bus(await stack.connect("test-bus"))
    try:
        # As the approvals service will: a card on the chat's outbound subject.
        await bus.send(
            chat["id"],
            "The agent wants to use GitHub.",
            id="approval:e2e-1",
            card=ev.Card(
                title="Allow?", buttons=(ev.Button(id="approve", label="Approve"), ev.Button(id="deny", label="Deny"))
            ),
        )
        await answers(telegram, chat, 1, timeout=30)
        [message] = telegram.bot_messages(chat)
        query = telegram.click(chat, message["message_id"], ada, button="Approve")
        await until(lambda: telegram.answered(query) is not None, 30, "the click was never answered")
        actions = [e for e in await bus.inbound() if isinstance(e, ev.InboundAction)]
        assert [(a.card_id, a.button_id) for a in actions] == [("approval:e2e-1", "approve")]
        # The router took it off the stream; it hands clicks to the approvals service once that exists.
        info = await bus.js.consumer_info("CLAWDEN_INBOUND", "router")
        assert info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        await bus.close()
