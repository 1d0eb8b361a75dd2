"""`ask_user_question` end to end: a real agent container asks, the approvals service puts the card in
the asking terminal chat, a press there answers, and the model sees the choice."""

from __future__ import annotations

import asyncio
import getpass
import time
import uuid

import pytest

from clawden.bus import events as ev
from clawden.bus import publish, subjects
from tests.e2e.conftest import stack  # noqa: F401  (the module-scoped whole system)
from tests.e2e.harness import Stack, Terminal
from tests.e2e.test_tools import tool_results
from tests.fakes.anthropic import Text, ToolCall

pytestmark = pytest.mark.docker


async def test_ask_user_question_round_trip_through_the_local_channel(stack: Stack) -> None:  # noqa: F811
    async with Terminal(stack, "approvals-question") as term:
        await stack.wait_until_idle((await term.ask("hello", timeout=90)).session_id)
        seen = len(tool_results(stack))
        stack.fake.script(
            ToolCall("ask_user_question", {"question": "Tea or coffee?", "options": ["Tea", "Coffee"], "timeout": 120}),
            Text("ok"),
        )
        await term.send("ask me something")
        card = await term.reply(timeout=60)
        assert card.card is not None and card.card.body == "Tea or coffee?"
        assert [b.label for b in card.card.buttons] == ["Tea", "Coffee"]
        assert card.route.chat_id == term.chat_id  # a question goes to the chat that asked
        user = getpass.getuser()
        press = ev.InboundAction(
            route=card.route,
            action_id=uuid.uuid4().hex,
            sender=ev.Sender(id=f"local:{user}", name=user),
            card_id=card.id,
            button_id=card.card.buttons[1].id,
            message_id=f"term-{card.seq}",
            sent_at=time.time(),
        )
        assert term.js is not None
        await publish(term.js, subjects.inbound("local"), press, msg_id=press.key)
        deadline = time.monotonic() + 60
        while not any("The user chose: Coffee" in r for r in tool_results(stack)[seen:]):
            assert time.monotonic() < deadline, tool_results(stack)[seen:]
            await asyncio.sleep(0.1)
