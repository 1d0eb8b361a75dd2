"""`create_agent` end to end: `clawden up`, real containers with the real Claude Code, the fake model calling the
tool. The owner approves on the card and the new agent, with its CLAUDE.md, answers in the chat it was wired to;
a denial creates nothing, and the asking agent is told each outcome."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from clawden import config, control
from clawden.bus.ctl import router as api
from tests.e2e.harness import Stack, Terminal
from tests.e2e.test_credential_approval import OWNER, button, card_for, click
from tests.eventually import eventually
from tests.fakes.anthropic import (
    Reply,
    Text,
    ToolCall,
    default_reply,
    is_compaction,
    is_tool_result_turn,
    last_user_text,
    last_user_turn,
)

pytestmark = pytest.mark.docker
MARKER = "You are Poet-7f3a and answer in haiku."


def brain(body: dict[str, Any]) -> Reply:
    """Each agent turn by what it was asked; chosen by content, since two agents may ask the model at once."""
    if not body.get("tools") or is_compaction(body):
        return default_reply(body)
    if is_tool_result_turn(last_user_turn(body)):
        return Text("done")
    prompt = last_user_text(body)
    for name in ("poet", "spy"):
        if f"make a {name}" in prompt:
            instructions = MARKER if name == "poet" else "Read everyone's mail."
            args = {"name": name, "instructions": instructions, "wire_to": f"local:{name}-chat"}
            return ToolCall("create_agent", args)
    if "hello poet" in prompt:  # the new agent: its CLAUDE.md is in what Claude Code sends the model
        return ToolCall("send_message", {"text": "poet here, with my memory" if MARKER in json.dumps(body) else "?"})
    return ToolCall("send_message", {"text": "noted"})


def host_notes(stack: Stack, group: str) -> list[str]:
    """What the host (`clawden`) told the agents of `group`."""
    out: list[str] = []
    for db in (stack.home / "sessions" / group).glob("*/inbound.db"):
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT content FROM messages_in WHERE sender_id = 'clawden'").fetchall()
        out += [json.loads(content).get("text", "") for (content,) in rows]
    return out


async def groups(stack: Stack) -> list[str]:
    return [g.name for g in await control.ask(config.load(stack.home), api.GROUPS_LIST, api.ListAll())]


@pytest.fixture
def thinking(stack: Stack) -> Stack:
    stack.fake.responder = brain
    return stack


async def test_an_approved_new_agent_answers_in_its_chat_with_its_instructions(thinking: Stack) -> None:
    stack = thinking
    async with Terminal(stack, "terminal") as owner:
        await owner.send("please make a poet")
        card = await card_for(owner, timeout=120)
        assert card.card is not None and MARKER in card.card.body and "local chat poet-chat" in card.card.body
        assert "poet" not in await groups(stack)  # nothing before the approval
        await click(owner, card, button(card, approve=True), OWNER)
        told = await eventually(lambda: [t for t in host_notes(stack, "main") if "'poet' was created" in t], timeout=60)
    assert "answers local chat poet-chat" in told[0]
    assert (stack.home / "groups" / "poet" / "CLAUDE.md").read_text() == MARKER
    async with Terminal(stack, "poet-chat") as chat:
        answer = await chat.ask("hello poet", timeout=180)
    assert (answer.agent_group, answer.text) == ("poet", "poet here, with my memory")


async def test_a_denied_new_agent_is_never_made(thinking: Stack) -> None:
    stack = thinking
    async with Terminal(stack, "terminal2") as owner:
        await owner.send("please make a spy")
        card = await card_for(owner, timeout=120)
        await click(owner, card, button(card, approve=False), OWNER)
        told = await eventually(lambda: [t for t in host_notes(stack, "main") if "'spy' was denied" in t], timeout=60)
    assert "nothing was created" in told[0]
    assert "spy" not in await groups(stack)
    assert not (stack.home / "groups" / "spy").exists()
    wirings = await control.ask(config.load(stack.home), api.WIRINGS_LIST, api.WiringList(channel="local"))
    assert not [w for w in wirings if w.chat_id == "spy-chat"]
