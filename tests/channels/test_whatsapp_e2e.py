"""End to end over WhatsApp: `clawden up` (router, runner, vault, approvals), the real front door and bridge
processes under their own NATS identities, the fake Graph API posting signed webhooks, a real agent
container running Claude Code against the fake model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawden import config as config_mod
from clawden import control, sessiondb
from tests.channels.whatsapp_harness import WhatsAppProcess
from tests.e2e.harness import Stack
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall
from tests.fakes.telegram import png
from tests.fakes.whatsapp import FakeGraph, SentMessage
from tests.webhooks.harness import FrontDoorProcess, make_home

pytestmark = pytest.mark.docker
ANSWER = 120.0  # a first message starts a container


class WhatsApp:
    def __init__(self, graph: FakeGraph, door: FrontDoorProcess, bridge: WhatsAppProcess) -> None:
        self.graph, self.door, self.bridge = graph, door, bridge

    def logs(self) -> str:
        return f"bridge:\n{self.bridge.output()}\nfront door:\n{self.door.output()}"


@pytest.fixture(scope="module")
def wa(stack: Stack) -> Iterator[WhatsApp]:
    port = make_home(stack.home)  # the keys and [webhooks]; `clawden up` already runs, the door is started here
    door = FrontDoorProcess(stack.home, stack.nats_url, port, stack.home / "logs" / "webhooks-test.log")
    graph = FakeGraph(door.sender()).start_in_thread()
    asyncio.run(door.start())
    bridge = WhatsAppProcess(stack.home, stack.nats_url, graph).start()
    yield WhatsApp(graph, door, bridge)
    bridge.close()
    door.stop()
    graph.stop_thread()
    assert graph.token not in bridge.output()


async def wire(stack: Stack, wa_id: str) -> None:
    cfg = config_mod.load(stack.home)
    await control.call(
        cfg,
        "router",
        "chats",
        {"op": "create", "channel": "whatsapp", "chat_id": wa_id, "name": "Ada", "is_group": False, "policy": "public"},
    )
    await control.call(
        cfg, "router", "wirings", {"op": "create", "channel": "whatsapp", "chat_id": wa_id, "agent_group": "main"}
    )


async def answers(wa: WhatsApp, wa_id: str, count: int, timeout: float = ANSWER) -> list[SentMessage]:
    return await eventually(
        lambda: wa.graph.to(wa_id)[count - 1 :] and wa.graph.to(wa_id), timeout=timeout, message=wa.logs
    )


def session_dirs(stack: Stack) -> list[Path]:
    return [p for p in (stack.home / "sessions" / "main").iterdir() if (p / sessiondb.INBOUND).exists()]


async def test_a_whatsapp_message_is_answered_and_a_failed_status_reaches_the_agent(stack: Stack, wa: WhatsApp) -> None:
    ada = "447700900201"
    await wire(stack, ada)
    _, status = await wa.graph.user_writes(ada, "what is on today?")
    assert status == 200
    [answer] = await answers(wa, ada, 1)
    assert answer.text.startswith("echo: ") and "what is on today?" in answer.text
    # Later WhatsApp reports that it could not deliver it after all: the agent learns why.
    assert await wa.graph.status(answer, "failed", errors=[{"code": 131026, "title": "Message undeliverable"}]) == 200

    def failure() -> list[tuple[int, str]]:
        return [
            f for d in session_dirs(stack) for f in sessiondb.failed_deliveries(d) if "Message undeliverable" in f[1]
        ]

    [(_, error)] = await eventually(failure, timeout=30, message=wa.logs)
    assert "131026" in error


async def test_a_question_card_becomes_reply_buttons_and_the_press_answers_it(stack: Stack, wa: WhatsApp) -> None:
    ada = "447700900202"
    await wire(stack, ada)
    stack.fake.script(
        ToolCall("ask_user_question", {"question": "Tea or coffee?", "options": ["Tea", "Coffee"], "timeout": 90}),
        Text("ok"),
    )
    await wa.graph.user_writes(ada, "ask me something")
    card = (
        await eventually(
            lambda: [m for m in wa.graph.to(ada) if m.type == "interactive"], timeout=ANSWER, message=wa.logs
        )
    )[0]
    buttons = card.payload["interactive"]["action"]["buttons"]
    assert [b["reply"]["title"] for b in buttons] == ["Tea", "Coffee"]
    await wa.graph.user_presses(ada, card, 1)

    def chose() -> bool:
        return any("The user chose: Coffee" in str(r.body) for r in stack.fake.messages_requests(with_tools=True))

    await eventually(chose, timeout=60, message=wa.logs)


async def test_an_image_reaches_the_agents_inbox(stack: Stack, wa: WhatsApp) -> None:
    ada = "447700900203"
    await wire(stack, ada)
    picture = png(5, 4)
    before = time.time()
    await wa.graph.user_sends_image(ada, picture, caption="what is this?")
    await answers(wa, ada, 1)

    def in_inbox() -> list[Path]:
        return [
            f
            for d in session_dirs(stack)
            for f in (d / "inbox").rglob("*")
            if f.is_file() and f.stat().st_mtime >= before - 1 and f.read_bytes() == picture
        ]

    assert await eventually(in_inbox, timeout=30, message=wa.logs)
