"""Many chats, few slots: one container per session, a fair queue under the cap, broken sessions isolated."""

from __future__ import annotations

import os
import signal

import pytest

from clawden import control
from clawden.bus.ctl import Nothing
from clawden.bus.ctl.common import PING
from clawden.config import load
from tests.chaos.chaos import answer
from tests.e2e.harness import Stack, Terminal, service_pid
from tests.eventually import eventually
from tests.fakes.anthropic import Hang

pytestmark = pytest.mark.docker


STACK_OPTIONS = {"runner": "max_containers = 1\nqueue_notice_after = 1"}


async def runner_counters(stack: Stack) -> dict[str, int]:
    cfg = load(stack.home, {"CLAWDEN_NATS_URL": stack.nats_url})
    return dict((await control.ask(cfg, PING.at("runner"), Nothing())).stats["runner"])


async def test_a_burst_of_messages_to_a_new_chat_starts_one_container(stack: Stack) -> None:
    started = (await runner_counters(stack))["started"]
    async with Terminal(stack, "burst") as term:
        for i in range(5):
            await term.send(f"burst {i}")
        replies = [await term.reply(timeout=90)]
        session = replies[0].session_id
        await stack.wait_until_idle(session)
        replies += term.unread
    assert (await runner_counters(stack))["started"] == started + 1
    # Everything sent before the agent woke arrives in its first turn(s), each message seen once.
    seen = " ".join(r.text for r in replies)
    assert all(f"burst {i}" in seen for i in range(5))
    assert len([c for c in stack.containers() if c.labels["dev.clawden.session"] == session]) == 1


async def hold_the_only_slot(stack: Stack, chat: Terminal, text: str) -> None:
    """`chat`'s container takes the only slot and keeps it: its turn on `text` is held by the model until
    `stack.fake.release()`. Returns once the model holds it: only then may other chats come."""
    await stack.wait_until_idle((await chat.ask(f"hello before {text}", timeout=90)).session_id)
    stack.fake.script(Hang())
    await chat.send(text)
    await eventually(
        lambda: any(text in str(r.body.get("messages", [])) for r in stack.fake.messages_requests()), timeout=60
    )


async def test_chats_beyond_the_cap_wait_their_turn_are_told_and_all_get_answered(stack: Stack) -> None:
    async with Terminal(stack, "cap-a") as a, Terminal(stack, "cap-b") as b, Terminal(stack, "cap-c") as c:
        await hold_the_only_slot(stack, a, "a keeps the only slot busy")
        await b.send("hello from b")
        await c.send("hello from c")
        told_b, told_c = await b.reply(timeout=30), await c.reply(timeout=30)
        assert "busy with other conversations" in told_b.text
        assert "busy with other conversations" in told_c.text
        stack.fake.release()
        assert "a keeps the only slot busy" in (await a.reply(timeout=60)).text
        assert "hello from b" in (await b.reply(timeout=90)).text
        assert "hello from c" in (await c.reply(timeout=90)).text
        assert len(stack.containers()) == 1


async def test_a_chat_kept_waiting_is_told_once_for_the_same_message_across_a_runner_restart(stack: Stack) -> None:
    """The runner that told the chat it waits is killed; the one `clawden up` starts finds the chat still waiting for
    the same message and would say so again: the notice is keyed by that message, so the chat reads it once."""
    async with Terminal(stack, "holder") as holder, Terminal(stack, "patient") as patient:
        await hold_the_only_slot(stack, holder, "the holder keeps the only slot busy")
        await patient.send("hello from the patient")
        assert "busy with other conversations" in (await patient.reply(timeout=30)).text
        old = await service_pid(stack, "runner")
        os.kill(old, signal.SIGKILL)
        assert await service_pid(stack, "runner") != old  # `clawden up` started another

        async def told_again() -> bool:
            return (await runner_counters(stack)).get("queue_notices", 0) >= 1

        await eventually(told_again, timeout=60)  # the new runner has decided to tell the waiting chat
        stack.fake.release()
        assert "keeps the only slot busy" in (await answer(holder, 90)).text
        said = await patient.reply(timeout=90)
        assert "hello from the patient" in said.text, f"told twice: {said.text!r}"


async def test_a_chat_that_writes_again_at_once_gives_the_only_slot_to_one_that_waits(stack: Stack) -> None:
    """A chat that sends its next message the moment it is answered (an agent talking to another, a script) leaves
    its container never idle. Once another chat has waited past the notice, that container finishes its turn and
    leaves (`core.to_drain`); the talker queues behind the waiter and goes on after it."""
    async with Terminal(stack, "talker") as talker, Terminal(stack, "waiter") as waiter:
        await hold_the_only_slot(stack, talker, "talker 0")
        await waiter.send("hello from the waiter")
        assert "busy with other conversations" in (await waiter.reply(timeout=30)).text
        stack.fake.release()
        said = 0
        while not waiter.unread and said < 8:
            assert f"talker {said}" in (await answer(talker, 90)).text
            said += 1
            await talker.send(f"talker {said}")
        assert "hello from the waiter" in (await answer(waiter, 90)).text
        assert said < 8, "the talker kept the only slot for eight turns while another chat waited"
        assert f"talker {said}" in (await answer(talker, 90)).text  # and the talker goes on after it


async def test_a_session_with_a_corrupt_database_does_not_hold_up_another(stack: Stack) -> None:
    async with Terminal(stack, "broken") as broken, Terminal(stack, "healthy") as healthy:
        session = (await broken.ask("before the damage", timeout=90)).session_id
        await stack.wait_until_idle(session)
        for c in stack.containers():
            c.remove(force=True)
        (stack.home / "sessions" / "main" / session / "outbound.db").write_bytes(b"\x00garbage" * 512)
        await broken.send("after the damage")
        told = await broken.reply(timeout=30)
        assert "storage is damaged" in told.text
        answer = await healthy.ask("are you fine?", timeout=90)
        assert "are you fine?" in answer.text
