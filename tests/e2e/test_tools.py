"""Each of the agent's tools through the real Claude Code CLI in a real container, driven by the
scripted fake model; what each tool does is checked where it lands: on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from tests.e2e.harness import Stack, Terminal
from tests.fakes.anthropic import Text, ToolCall

pytestmark = pytest.mark.docker


class Tap:
    """Everything published under clawden.>, decoded."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    async def on_msg(self, msg: Msg) -> None:
        if not msg.subject.startswith(("clawden.ctl", "clawden.event")):
            with contextlib.suppress(Exception):  # receipts and the like we do not look at
                self.events.append(ev.decode(msg.data))

    async def first(self, event_type: type[Any], timeout: float = 30, **fields: object) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if isinstance(e, event_type) and all(getattr(e, k) == v for k, v in fields.items()):
                    return e
            assert time.monotonic() < deadline, f"no {event_type.__name__} with {fields} in {self.events[-5:]}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def tap(stack: Stack) -> AsyncIterator[Tap]:
    t = Tap()
    nc = await stack.connect()
    await nc.subscribe("clawden.>", cb=t.on_msg)
    yield t
    await nc.close()


@pytest.fixture
async def term(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[Terminal]:
    async with Terminal(stack, request.node.name[:40].replace("[", "-").replace("]", "")) as t:
        # A first turn starts the container; later turns are the tool calls under test.
        await stack.wait_until_idle((await t.ask("hello", timeout=90)).session_id)
        yield t


def tool_results(stack: Stack) -> list[str]:
    out = []
    for r in stack.fake.messages_requests(with_tools=True):
        for m in r.body.get("messages", []):
            for block in m.get("content", []) if isinstance(m.get("content"), list) else []:
                if block.get("type") == "tool_result":
                    content = block.get("content")
                    text = (
                        content
                        if isinstance(content, str)
                        else " ".join(c.get("text", "") for c in content or [] if isinstance(c, dict))
                    )
                    out.append(("ERROR " if block.get("is_error") else "") + text)
    return out


async def run_tool(stack: Stack, term: Terminal, name: str, args: dict[str, Any], *before: Any) -> str:
    """One turn in which the model calls `name`; returns what the tool told the model."""
    seen = len(tool_results(stack))
    stack.fake.script(*before, ToolCall(name, args), Text("ok"))
    await term.send(f"please use {name}")
    deadline = time.monotonic() + 60
    while True:
        results = tool_results(stack)[seen:]
        fresh = [r for r in results if r not in tool_results(stack)[:seen]]
        if len(fresh) > len(before):
            return fresh[-1]
        assert time.monotonic() < deadline, f"{name} never returned"
        await asyncio.sleep(0.05)


async def test_send_message_to_an_unknown_destination_is_an_error_the_model_reads(stack: Stack, term: Terminal) -> None:
    result = await run_tool(stack, term, "send_message", {"text": "hi", "to": "mum"})
    assert result.startswith("ERROR") and "Unknown destination 'mum'" in result


async def test_send_file_publishes_the_file_from_the_outbox(stack: Stack, term: Terminal, tap: Tap) -> None:
    write = ToolCall("Write", {"file_path": "/workspace/agent/report.txt", "content": "quarterly numbers\n"})
    result = await run_tool(stack, term, "send_file", {"path": "report.txt", "text": "here it is"}, write)
    assert "report.txt sent as #" in result
    sent = await tap.first(ev.OutboundMessage, text="here it is")
    [path] = sent.files
    assert await asyncio.to_thread(Path(path).read_text) == "quarterly numbers\n"


async def test_send_file_refuses_a_link_out_of_the_agents_folders(stack: Stack, term: Terminal) -> None:
    link = ToolCall("Bash", {"command": "ln -sf /etc/passwd /workspace/agent/pw"})
    result = await run_tool(stack, term, "send_file", {"path": "pw"}, link)
    assert result.startswith("ERROR") and "outside the folders" in result


async def test_edit_message_edits_a_delivered_message_by_seq(stack: Stack, term: Terminal, tap: Tap) -> None:
    reply = await term.ask("say something I can edit")
    await stack.wait_until_idle(reply.session_id)
    folder = stack.home / "sessions" / "main" / reply.session_id
    deadline = time.monotonic() + 10
    while sessiondb.platform_message_id(folder, reply.seq) is None:  # the receipt is on its way
        assert time.monotonic() < deadline, "the terminal's receipt never reached the session"
        await asyncio.sleep(0.05)
    result = await run_tool(stack, term, "edit_message", {"seq": reply.seq, "text": "better words"})
    assert result == f"#{reply.seq} edited"
    edit = await tap.first(ev.OutboundEdit, text="better words")
    assert edit.target_message_id == f"term-{reply.seq}"


async def test_add_reaction_to_the_users_message(stack: Stack, term: Terminal, tap: Tap) -> None:
    sent = await term.send("react to this")
    reply = await term.reply()
    await stack.wait_until_idle(reply.session_id)
    folder = stack.home / "sessions" / "main" / reply.session_id
    with sessiondb.opened(folder / sessiondb.INBOUND, readonly=True) as conn:
        [(user_seq,)] = conn.execute("SELECT seq FROM messages_in WHERE id = ?", (f"{sent.key}:main",)).fetchall()
    result = await run_tool(stack, term, "add_reaction", {"seq": user_seq, "emoji": "👍"})
    assert "reacted 👍" in result
    reaction = await tap.first(ev.OutboundReaction, emoji="👍")
    assert reaction.target_message_id == sent.message_id


async def test_send_card_renders_buttons(stack: Stack, term: Terminal, tap: Tap) -> None:
    result = await run_tool(
        stack, term, "send_card", {"title": "Lunch?", "body": "Pick one", "buttons": ["Pizza", "Salad"]}
    )
    assert "card sent as #" in result
    card = (await tap.first(ev.OutboundMessage, text="Pick one")).card
    assert card.title == "Lunch?" and [b.label for b in card.buttons] == ["Pizza", "Salad"]


async def test_ask_user_question_waits_for_the_answer(stack: Stack, term: Terminal, tap: Tap) -> None:
    seen = len(tool_results(stack))
    stack.fake.script(
        ToolCall("ask_user_question", {"question": "Tea or coffee?", "options": ["Tea", "Coffee"], "timeout": 60}),
        Text("ok"),
    )
    await term.send("ask me something")
    asked = await tap.first(ev.ApprovalRequest, kind="question")
    assert asked.card.body == "Tea or coffee?" and asked.route.chat_id == term.chat_id
    nc = await stack.connect()
    try:
        decision = ev.ApprovalDecision(id=asked.id, decision="answered", value="2", decided_by="local:tester")
        await publish(nc.jetstream(), subjects.approval_decision(asked.id), decision, msg_id=f"d:{asked.id}")
    finally:
        await nc.close()
    deadline = time.monotonic() + 30
    while not any("The user chose: Coffee" in r for r in tool_results(stack)[seen:]):
        assert time.monotonic() < deadline, tool_results(stack)[seen:]
        await asyncio.sleep(0.05)


PRECHECK = "test -s news.txt && echo '{\"wakeAgent\": true}' || echo '{\"wakeAgent\": false}'"


@pytest.mark.parametrize(
    ("tool", "args", "op"),
    [
        (
            "schedule_task",
            {"prompt": "news digest", "schedule": "0 8 * * 1", "timezone": "Europe/Berlin", "script": PRECHECK},
            "create",
        ),
        ("update_task", {"task_id": "t-0123456789ab", "schedule": "0 9 * * 1"}, "update"),
        ("pause_task", {"task_id": "t-0123456789ab"}, "pause"),
        ("resume_task", {"task_id": "t-0123456789ab"}, "resume"),
        ("cancel_task", {"task_id": "t-0123456789ab"}, "cancel"),
    ],
)
async def test_task_tools_send_task_operations_to_the_scheduler(
    stack: Stack, term: Terminal, tap: Tap, tool: str, args: dict[str, Any], op: str
) -> None:
    result = await run_tool(stack, term, tool, args)
    assert "on its way to the scheduler" in result
    task = await tap.first(ev.TaskOp, op=op)
    assert task.agent_group == "main" and task.route is not None and task.route.chat_id == term.chat_id
    if op == "create":
        assert (task.prompt, task.schedule, task.timezone) == ("news digest", "0 8 * * 1", "Europe/Berlin")
        assert task.script == PRECHECK
        assert task.task_id is not None and task.task_id.startswith("t-")


async def test_list_tasks_answers_from_the_scheduler(stack: Stack, term: Terminal) -> None:
    created = await run_tool(stack, term, "schedule_task", {"prompt": "water the plants", "schedule": "0 18 * * *"})
    assert "on its way" in created
    deadline = time.monotonic() + 30
    while True:  # the create travels durably; the listing reflects it once the scheduler applied it
        listing = await run_tool(stack, term, "list_tasks", {})
        if "water the plants" in listing:
            break
        assert time.monotonic() < deadline, listing
    assert not listing.startswith("ERROR")
    assert await run_tool(stack, term, "list_tasks", {"status": "cancelled"}) == "No cancelled tasks."


async def test_a_bad_task_id_is_an_error_the_model_reads(stack: Stack, term: Terminal) -> None:
    result = await run_tool(stack, term, "pause_task", {"task_id": "../../etc"})
    assert result.startswith("ERROR") and "is not a task id" in result


async def test_clear_starts_a_fresh_conversation(stack: Stack, term: Terminal) -> None:
    await stack.wait_until_idle((await term.ask("remember the word pelican")).session_id)
    cleared = await term.ask("/clear")
    assert cleared.text.startswith("Cleared.")
    seen = len(stack.fake.messages_requests(with_tools=True))
    await term.ask("what was the word?")
    fresh = stack.fake.messages_requests(with_tools=True)[seen:]
    assert fresh and not any("pelican" in str(r.body["messages"]) for r in fresh)


async def test_a_send_the_platform_refused_is_shown_to_the_agent(stack: Stack, term: Terminal) -> None:
    reply = await term.ask("send me something")
    await stack.wait_until_idle(reply.session_id)
    nc = await stack.connect()
    try:
        refused = ev.DeliveryReceipt(
            outbound_id=f"{reply.id}-refused",
            route=reply.route,
            ok=False,
            session_id=reply.session_id,
            seq=reply.seq,
            error="bot was blocked by the user",
        )
        await publish(nc.jetstream(), subjects.receipt("local"), refused, msg_id=f"refused:{reply.id}")
    finally:
        await nc.close()
    folder = stack.home / "sessions" / "main" / reply.session_id
    deadline = time.monotonic() + 10
    while not sessiondb.failed_deliveries(folder):
        assert time.monotonic() < deadline, "the failed receipt never reached the session"
        await asyncio.sleep(0.05)
    seen = len(stack.fake.messages_requests(with_tools=True))
    await term.ask("did my last message arrive?")
    prompt = str(stack.fake.messages_requests(with_tools=True)[seen].body["messages"])
    assert f'<delivery-failed seq="{reply.seq}">bot was blocked by the user' in prompt


async def test_a_file_a_bridge_fetched_lands_in_the_inbox_and_the_prompt(stack: Stack, term: Terminal) -> None:
    import msgspec

    from clawden.chat import inbound_event

    fetched = stack.home / "data" / "channels" / "local" / "files" / "note.txt"
    fetched.parent.mkdir(parents=True, exist_ok=True)
    fetched.write_text("buy oat milk\n")
    elsewhere = stack.home / "keys" / "anthropic"  # a message cannot make the runner copy this
    event = msgspec.structs.replace(
        inbound_event(term.chat_id, "me", "see attached"),
        attachments=(
            ev.Attachment(name="note.txt", mime="text/plain", size=13, url=fetched.as_uri()),
            ev.Attachment(name="key", mime="text/plain", size=10, url=elsewhere.as_uri()),
            # The bridge could not fetch this one, and says why.
            ev.Attachment(name="film.mp4", mime="video/mp4", size=99, error="it was too large to fetch"),
        ),
    )
    seen = len(stack.fake.messages_requests(with_tools=True))
    assert term.js is not None
    await publish(term.js, subjects.inbound("local"), event, msg_id=event.key)
    reply = await term.reply()
    prompt = str(stack.fake.messages_requests(with_tools=True)[seen].body["messages"])
    assert "[attachment note.txt (text/plain, 13 bytes) at /workspace/session/inbox/" in prompt
    assert (
        "[attachment key (text/plain, 10 bytes) (not saved: it is not a file a bridge on this host fetched)]" in prompt
    )
    assert "[attachment film.mp4 (video/mp4, 99 bytes) (not saved: it was too large to fetch)]" in prompt
    inbox = stack.home / "sessions" / "main" / reply.session_id / "inbox"
    assert [p.read_text() for p in inbox.rglob("*") if p.is_file()] == ["buy oat milk\n"]


HOOK = {
    "hooks": {
        event: [{"matcher": "*", "hooks": [{"type": "command", "command": "touch /workspace/agent/PWNED"}]}]
        for event in ("PreToolUse", "PostToolUse", "UserPromptSubmit", "SessionStart")
    }
}


async def test_a_hook_the_agent_plants_never_runs_after_clear_or_in_another_chat(stack: Stack, term: Terminal) -> None:
    settings = json.dumps(HOOK).replace("'", "")
    plant = "; ".join(
        f"mkdir -p {d} && echo '{settings}' > {d}/{name}"
        for d, name in (
            ("/workspace/agent/.claude", "settings.json"),
            ("/workspace/agent/.claude", "settings.local.json"),
            ("$HOME/.claude", "settings.json"),
        )
    )
    result = await run_tool(stack, term, "Bash", {"command": plant + "; echo planted", "description": "plant"})
    assert "Read-only file system" in result  # the group's .claude is the owner's, mounted read-only
    assert (await term.reply()).text == "ok"

    cleared = await term.ask("/clear")
    assert cleared.text.startswith("Cleared.")
    after_clear = await term.ask("a fresh conversation")
    async with Terminal(stack, "another-chat-of-main") as other:
        elsewhere = await other.ask("another chat, same group", timeout=90)

    assert "a fresh conversation" in after_clear.text and "another chat, same group" in elsewhere.text
    group = stack.home / "groups" / "main"
    assert not (group / "PWNED").exists()
    assert not (group / ".claude" / "settings.json").exists()


async def test_two_chats_of_one_group_do_not_share_a_claude_home(stack: Stack, term: Terminal) -> None:
    async with Terminal(stack, "second-chat-of-main") as other:
        await other.ask("hello from a second chat", timeout=90)
        homes = {
            c.labels["dev.clawden.session"]: next(
                m["Source"] for m in c.attrs["Mounts"] if m["Destination"] == "/home/agent"
            )
            for c in stack.containers()
            if c.labels.get("dev.clawden.agent-group") == "main"
        }

    assert len(homes) >= 2 and len(set(homes.values())) == len(homes)
    assert all(Path(h).name == session for session, h in homes.items())
