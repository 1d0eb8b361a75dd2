"""End to end: `clawden up` (NATS, vault, router, runner as real processes), a real container with the
real Claude Code CLI, and the fake model standing in for the Anthropic API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawden.bus import events as ev
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.eventually import eventually
from tests.fakes.anthropic import Error, Hang

pytestmark = pytest.mark.docker


def all_text(stack: Stack) -> str:
    return str([r.body for r in stack.fake.messages_requests(with_tools=True)])


def test_a_line_typed_in_the_terminal_is_answered_by_the_agent(stack: Stack) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "clawden", "chat", "--once", "what is on today?", "--timeout", "90"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("main> echo: ")
    assert "what is on today?" in out.stdout
    # The model saw the user's words and got the real key from the vault.
    agent_calls = stack.fake.messages_requests(with_tools=True)
    assert agent_calls and "what is on today?" in all_text(stack)
    assert {r.headers.get("x-api-key") for r in agent_calls} == {stack.key}


def test_the_real_key_is_nowhere_in_the_container(stack: Stack) -> None:
    [container] = stack.containers()
    env = container.attrs["Config"]["Env"]
    assert "ANTHROPIC_API_KEY=clawden-managed" in env
    assert not any(stack.key in e for e in env)
    found = container.exec_run(
        [
            "sh",
            "-c",
            f"cat /proc/1/environ /proc/self/environ; grep -rl -- '{stack.key}' "
            "/workspace /home/agent /tmp /app /etc 2>/dev/null; true",
        ],
        user="1000",
    )
    assert stack.key.encode() not in found.output
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"]


async def test_a_second_message_reuses_the_container_and_the_conversation(stack: Stack) -> None:
    async with Terminal(stack, "reuse") as term:
        first = await term.ask("my name is Ada", timeout=90)
        assert "my name is Ada" in first.text
        containers = {c.labels["dev.clawden.session"]: c.id for c in stack.containers()}
        calls_before = len(stack.fake.messages_requests(with_tools=True))
        second = await term.ask("what is my name?")
        assert "what is my name?" in second.text
        assert second.session_id == first.session_id
        assert {c.labels["dev.clawden.session"]: c.id for c in stack.containers()} == containers
        later = stack.fake.messages_requests(with_tools=True)[calls_before:]
        # Same Claude conversation: the model is shown the first exchange again.
        assert any("my name is Ada" in str(r.body["messages"]) for r in later)


async def test_a_reply_names_the_message_it_answers_so_a_late_one_is_not_taken_for_the_next_answer(
    stack: Stack,
) -> None:
    """What a busy CI shows: the answer to an earlier message is read after a later message is sent. `ask` takes the
    reply that names its own message (`answering`), and the earlier one stays unread for a test that wants it."""
    async with Terminal(stack, "late") as term:
        first = await term.send("the first question")

        def unread_answer() -> ev.OutboundMessage | None:
            return next((r for r in term.unread if r.answering == first.message_id), None)

        late = await eventually(unread_answer, 90, "the first question was never answered")
        await stack.wait_until_idle(late.session_id)

        answer = await term.ask("the second question")

        assert "the second question" in answer.text and "the first question" not in answer.text
        assert list(term.unread) == [late] and "the first question" in late.text
        assert await term.reply() == late


async def test_a_container_killed_mid_turn_is_replaced_and_the_message_answered_once(stack: Stack) -> None:
    async with Terminal(stack, "crash") as term:
        session = (await term.ask("warm up", timeout=90)).session_id
        [container] = [c for c in stack.containers() if c.labels["dev.clawden.session"] == session]
        await stack.wait_until_idle(session)
        stack.fake.script(Hang())
        seen = len(stack.fake.requests)
        await term.send("this one will be interrupted")
        deadline = time.monotonic() + 30
        while not any("interrupted" in str(r.body) for r in stack.fake.requests[seen:]):
            assert time.monotonic() < deadline, "the turn never reached the model"
            await asyncio.sleep(0.05)
        container.kill()
        reply = await term.reply(timeout=60)  # a new container runs the message again
        assert "this one will be interrupted" in reply.text
        with pytest.raises(TimeoutError):
            await term.reply(timeout=3)
        [replacement] = [c for c in stack.containers() if c.labels["dev.clawden.session"] == session]
        assert replacement.id != container.id
        after = await term.ask("are you back?", timeout=90)
        assert "are you back?" in after.text


async def test_a_model_key_the_api_refuses_fails_the_turn_at_once_naming_the_owners_fix(stack: Stack) -> None:
    """The vault marks the model API's 401 to its key `x-should-retry: false`: Claude Code does not try the same key
    again for minutes, and the chat is told at once how the owner sets the right one."""
    async with Terminal(stack, "refused") as term:
        session = (await term.ask("warm up", timeout=90)).session_id
        await stack.wait_until_idle(session)  # the warm-up turn's last model call is over
        seen = len(stack.fake.messages_requests(with_tools=True))
        stack.fake.script(Error(401, "invalid x-api-key"))
        reply = await term.ask("and now?", timeout=90)
        assert reply.kind == "error" and "clawden secrets add anthropic --type anthropic --replace" in reply.text
        assert len(stack.fake.messages_requests(with_tools=True)) == seen + 1  # the refused call, not tried again
        code, report = clawden_status(stack)
        [vault] = [s for s in report["services"] if s["name"] == "vault"]
        assert code == 1 and "refused the anthropic key" in vault["trouble"]
        # The next call the API answers clears it: the stack is healthy again for the tests after this one.
        assert (await term.ask("and again?", timeout=90)).kind != "error"
        code, report = clawden_status(stack)
        assert code == 0, report


def clawden_status(stack: Stack) -> tuple[int, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "clawden", "status", "--json"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.returncode, json.loads(out.stdout)


def processes_with_env(entry: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_clawden_status_lists_every_service(stack: Stack) -> None:
    code, report = clawden_status(stack)
    assert code == 0, report
    assert {"router", "runner", "vault"} <= {s["name"] for s in report["services"]}


def test_ctrl_c_stops_every_service_and_container(tmp_path: Path, docker_client: object, agent_image: str) -> None:
    s = start_stack(tmp_path / "home")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "clawden", "chat", "--once", "hi", "--timeout", "90"],
            env=s.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert len(s.containers()) == 1
        s.proc.send_signal(2)
        assert s.proc.wait(40) == 0
        assert s.containers() == []
        assert processes_with_env(f"CLAWDEN_HOME={s.home}") == []
    finally:
        s.stop()
