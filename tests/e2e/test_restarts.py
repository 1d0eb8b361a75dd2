"""Crashes and idleness with the whole system running: no message lost, no reply sent twice."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.e2e.harness import Stack, Terminal, service_pid
from tests.fakes.anthropic import Hang, Text, ToolCall

pytestmark = pytest.mark.docker
IDLE_TIMEOUT = 3
HANG_TIMEOUT = 4


STACK_OPTIONS = {"idle_timeout": IDLE_TIMEOUT, "runner": f"hang_timeout = {HANG_TIMEOUT}\nmax_tries = 2"}


async def wait_for_request_containing(stack: Stack, text: str, after: int) -> None:
    deadline = time.monotonic() + 30
    while not any(text in str(r.body) for r in stack.fake.requests[after:]):
        assert time.monotonic() < deadline, f"the model never saw {text!r}"
        await asyncio.sleep(0.05)


async def test_a_runner_killed_mid_turn_is_restarted_and_the_reply_arrives_once(stack: Stack) -> None:
    async with Terminal(stack, "runner-crash") as term:
        await stack.wait_until_idle((await term.ask("hello", timeout=90)).session_id)
        old_pid = await service_pid(stack, "runner")
        stack.fake.script(Hang())
        seen = len(stack.fake.requests)
        await term.send("answer me across a runner crash")
        await wait_for_request_containing(stack, "across a runner crash", seen)
        os.kill(old_pid, signal.SIGKILL)
        assert await service_pid(stack, "runner") != old_pid  # `clawden up` brought it back
        stack.fake.release()
        reply = await term.reply(timeout=60)
        assert "across a runner crash" in reply.text
        with pytest.raises(TimeoutError):  # and only once
            await term.reply(timeout=3)


async def test_a_router_killed_between_messages_loses_nothing(stack: Stack) -> None:
    async with Terminal(stack, "router-crash") as term:
        await term.ask("first", timeout=90)
        old_pid = await service_pid(stack, "router")
        os.kill(old_pid, signal.SIGKILL)
        await term.send("sent while the router is down")  # JetStream holds it
        reply = await term.reply(timeout=60)
        assert "sent while the router is down" in reply.text
        assert await service_pid(stack, "router") != old_pid


async def test_an_idle_container_is_stopped_and_the_next_message_starts_one(stack: Stack) -> None:
    async with Terminal(stack, "idle") as term:
        first = await term.ask("hi", timeout=90)
        ours = [c for c in stack.containers() if c.labels["dev.clawden.session"] == first.session_id]
        assert len(ours) == 1
        deadline = time.monotonic() + IDLE_TIMEOUT + 15
        while any(c.labels["dev.clawden.session"] == first.session_id for c in stack.containers()):
            assert time.monotonic() < deadline, "the idle container was never stopped"
            await asyncio.sleep(0.5)
        again = await term.ask("still there?", timeout=90)
        assert "still there?" in again.text and again.session_id == first.session_id


async def test_a_declared_long_bash_call_is_neither_idleness_nor_a_hang(stack: Stack) -> None:
    async with Terminal(stack, "long-turn") as term:
        await stack.wait_until_idle((await term.ask("hi", timeout=90)).session_id)
        # Silent for longer than both the idle and the hang timeout, but declared up front.
        stack.fake.script(
            ToolCall("Bash", {"command": f"sleep {HANG_TIMEOUT + 4}", "timeout": 60_000}),
            ToolCall("send_message", {"text": "done sleeping"}),
            Text("ok"),
        )
        await term.send("run the long job")
        reply = await term.reply(timeout=60)
        assert reply.text == "done sleeping"
        with pytest.raises(TimeoutError):  # no "I got stuck" notice either
            await term.reply(timeout=2)


async def test_a_silent_container_is_stopped_its_user_told_and_the_message_failed_after_its_tries(stack: Stack) -> None:
    async with Terminal(stack, "hang") as term:
        await stack.wait_until_idle((await term.ask("hi", timeout=90)).session_id)
        stack.fake.script(Hang(), Hang())  # both tries hang at the model, so no heartbeat comes
        await term.send("this never finishes")
        first = await term.reply(timeout=30)
        assert "I got stuck" in first.text
        second = await term.reply(timeout=60)
        assert "I got stuck" in second.text
        final = await term.reply(timeout=60)
        assert "couldn't answer that" in final.text and "got stuck every time" in final.text
        stack.fake.release()
        after = await term.ask("and now?", timeout=90)
        assert "and now?" in after.text
