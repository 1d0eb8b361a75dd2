"""The agent runner under a placement fence (issue 25 item 3), as a host process against the fake model: once
its session is moved to another runner (a later epoch in the folder's fence), it writes nothing more into the
session folder and exits by itself, idle or mid-turn. Without CLAWDEN_RUNNER (an older runner) it is unfenced."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from clawden import sessiondb
from clawden.sessiondb import Fence
from tests.container.test_agent_runner import AgentProcess, Session, agent_env, fake, session, start_agent
from tests.fakes.anthropic import FakeAnthropic, Hang

__all__ = ["fake", "session", "start_agent"]  # the fixtures, shared with the agent runner's own tests
EXIT_SECONDS = 60  # a bound on waiting for the exit, never a measure of speed


def rows(session: Session) -> tuple[list[sessiondb.OutboundMessage], dict[int, str], str | None]:
    return session.outbound(), session.acks(), sessiondb.get_state(session.dir, sessiondb.CONVERSATION_KEY)


def test_an_idle_container_whose_session_moved_exits_by_itself_and_writes_nothing(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    sessiondb.claim(session.dir, 1, "a")  # the runner that starts it holds epoch 1
    agent = start_agent(CLAWDEN_RUNNER="a", CLAWDEN_EPOCH="1")
    first = session.send("hello")
    assert "hello" in session.reply_to(first).content["text"]  # fenced at its own epoch, it works as ever
    before = rows(session)

    sessiondb.claim(session.dir, 2, "b")  # the router moved the session to runner b
    later = session.send("a message for runner b's container")

    assert agent.proc.wait(EXIT_SECONDS) == 0  # its idle poll found the fence: a clean exit
    assert rows(session) == before and later not in session.acks()  # not even a claim on the new message
    assert sessiondb.fence(session.dir) == Fence(2, "b")
    assert "moved to runner b at epoch 2: this container writes nothing more" in agent.log.read_text()


def test_a_container_mid_turn_when_its_session_moved_sends_nothing_of_it(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    sessiondb.claim(session.dir, 1, "a")
    agent = start_agent(CLAWDEN_RUNNER="a", CLAWDEN_EPOCH="1")
    fake.script(Hang())
    seq = session.send("a long job")
    session.wait(lambda: True if fake.messages_requests(with_tools=True) else None)  # the model has it
    before = rows(session)
    assert before[1] == {seq: "processing"}

    sessiondb.claim(session.dir, 2, "b")
    fake.release()  # the model answers with a send_message: the stale container must not write it

    assert agent.proc.wait(EXIT_SECONDS) == 0
    assert rows(session) == before  # no reply row, the claim left for the new owner's container to clear
    assert "moved to runner b at epoch 2" in agent.log.read_text()


def test_a_container_started_after_its_session_moved_touches_nothing(session: Session, fake: FakeAnthropic) -> None:
    sessiondb.claim(session.dir, 2, "b")
    session.send("for b")
    sessiondb.ack(session.dir, [2], "processing")  # b's container has it
    before = rows(session)

    log = session.dir.parent / "stale-agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clawden_agent"],
            env=agent_env(session, fake, CLAWDEN_RUNNER="a", CLAWDEN_EPOCH="1"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            assert proc.wait(EXIT_SECONDS) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rows(session) == before  # b's claim not cleared (clear_processing refused)
    assert not fake.requests  # never reached the model
    assert not (session.dir / sessiondb.AGENT_BELL).exists()  # nor took b's container's doorbell
    assert "moved to runner b at epoch 2" in log.read_text()


def test_without_a_runner_in_its_environment_the_container_is_unfenced(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    sessiondb.claim(session.dir, 2, "b")  # a fence it cannot know it is held to: an older runner started it
    start_agent()
    seq = session.send("hello")
    assert "hello" in session.reply_to(seq).content["text"]
