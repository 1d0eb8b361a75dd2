"""Agents that talk to each other, end to end: the whole stack (`clawden up`), real agent containers with the
real Claude Code, the fake model choosing each agent's `send_message` by what its prompt says. Agent `main`
asks agent `writer` through a destination and tells the person writer's answer; an A<->B loop stops at the
hop limit, with the reason in `clawden dropped`, the router's log and the sending agent's next prompt."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from clawden import config, control
from clawden.bus.ctl import router as api
from tests.e2e.harness import Stack, Terminal
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

Brain = Callable[[str], Reply]


def clawden(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clawden", *args], env=stack.env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def think(stack: Stack, brain: Brain) -> None:
    """Each agent turn's first model call goes to `brain` with the prompt's text; once a tool answered, the
    agent is done, unless a message came meanwhile (Claude Code hands it over mid-turn, as on a busy machine): that
    goes to `brain` too. Chosen by content, not by order, since two agents ask the model at once."""

    def reply(body: dict[str, Any]) -> Reply:
        if not body.get("tools") or is_compaction(body):
            return default_reply(body)
        said = last_user_text(body)
        if is_tool_result_turn(last_user_turn(body)) and "from=" not in said:
            return Text("done")
        return brain(said)

    stack.fake.responder = reply


def inbound_rows(stack: Stack, group: str) -> list[tuple[str, str]]:
    """(sender, text) of every message in every session of `group`, as its agent read them."""
    rows: list[tuple[str, str]] = []
    for db in sorted((stack.home / "sessions" / group).glob("*/inbound.db")):
        with sqlite3.connect(db) as conn:
            for sender, content in conn.execute("SELECT sender_id, content FROM messages_in ORDER BY seq"):
                rows.append((sender or "", json.loads(content).get("text", "")))
    return rows


@pytest.fixture(scope="module")
def wired(stack: Stack) -> Stack:
    clawden(stack, "groups", "create", "writer")
    assert "main may now send to writer" in clawden(stack, "destinations", "add", "main", "--agent", "writer")
    clawden(stack, "destinations", "add", "writer", "--agent", "main")
    listed = clawden(stack, "destinations", "list")
    assert "agent" in listed and "writer" in listed
    return stack


async def test_agent_a_asks_agent_b_and_tells_the_person_bs_answer(wired: Stack) -> None:
    def brain(prompt: str) -> Reply:
        if 'from="agent main"' in prompt:  # writer, asked by main: answers in its own chat
            return ToolCall("send_message", {"text": "Title: The Quiet Harbour"})
        if 'from="agent writer"' in prompt:  # main, with writer's answer: tells the person
            return ToolCall("send_message", {"text": "writer suggests " + prompt.split("Title: ")[1].split("<")[0]})
        return ToolCall("send_message", {"to": "writer", "text": "Suggest a title for a sea story"})

    think(wired, brain)
    async with Terminal(wired, "harbour") as term:
        await term.send("get me a title from the writer")
        # Asking the writer answers nobody here: the turn's closing words reach the person first.
        assert (await term.reply(timeout=180)).text == "done"
        answer = await term.reply(timeout=180)
    assert answer.text == "writer suggests The Quiet Harbour"
    assert ("agent:main", "Suggest a title for a sea story") in inbound_rows(wired, "writer")
    assert ("agent:writer", "Title: The Quiet Harbour") in inbound_rows(wired, "main")


async def test_an_a_b_loop_stops_at_the_hop_limit(wired: Stack) -> None:
    def brain(prompt: str) -> Reply:
        if 'from="agent main"' in prompt:  # writer answers main, every time
            return ToolCall("send_message", {"text": "pong"})
        if "how did it go" in prompt:  # the person, after the loop: main answers them
            return ToolCall("send_message", {"text": "it stopped"})
        return ToolCall("send_message", {"to": "writer", "text": "ping"})  # main asks writer, every time

    think(wired, brain)
    cfg = config.load(wired.home)
    async with Terminal(wired, "loop") as term:
        await term.send("start the loop")

        async def dropped() -> list[api.Dropped]:
            return await control.ask(cfg, api.DROPPED_LIST, api.DroppedList(channel="agent"))

        [drop] = await eventually(dropped, timeout=240, message="the loop was never cut")
    assert drop.sender_id == "agent:main"
    assert "hop limit 4 reached (5 agent-to-agent sends in a row): main -> writer" in drop.reason
    writer_heard = [text for sender, text in inbound_rows(wired, "writer") if sender == "agent:main" and text == "ping"]
    main_heard = [text for sender, text in inbound_rows(wired, "main") if sender == "agent:writer" and text == "pong"]
    assert (len(writer_heard), len(main_heard)) == (2, 2)  # hops 1 and 3 into writer, 2 and 4 back into main
    log = "".join(p.read_text() for p in (wired.home / "logs").glob("*.log"))
    assert "dropped: hop limit 4 reached" in log
    # The sending agent reads why in its next prompt, as for any send a platform refused.
    async with Terminal(wired, "loop") as term:
        assert (await term.ask("how did it go?", timeout=120)).text == "it stopped"
    [asked] = [r for r in wired.fake.messages_requests(with_tools=True) if "how did it go" in json.dumps(r.body)][:1]
    assert "<delivery-failed" in json.dumps(asked.body) and "hop limit 4 reached" in json.dumps(asked.body)
