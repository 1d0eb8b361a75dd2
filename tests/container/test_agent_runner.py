"""The in-container agent runner, run as a host process against the fake Anthropic API.

Real pieces: the runner, the Claude Code CLI the SDK bundles, the session SQLite pair and the
doorbell sockets. Only the model is fake.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from clawden import sessiondb
from clawden.natsserver import free_port
from tests.eventually import eventually_sync
from tests.fakes.anthropic import Error, FakeAnthropic, Hang, Text, ToolCall, start_in_thread

REPO = Path(__file__).resolve().parents[2]
ROUTING = sessiondb.Routing("telegram", "chat-42")
SEND = "mcp__clawden__send_message"
DEADLINE = 30.0
T = TypeVar("T")


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    server = start_in_thread()
    yield server
    server.release()
    server.stop_thread()


class Session:
    """A session folder as the host runner keeps it, plus its end of the doorbells."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "session"
        self.group = root / "group"
        self.home = root / "home"
        for d in (self.dir, self.group, self.home):
            d.mkdir(parents=True)
        (self.group / "CLAUDE.md").write_text("You are Clawden's test agent.\n")
        sessiondb.ensure_inbound(self.dir)
        sessiondb.ensure_outbound(self.dir)
        sessiondb.set_routing(self.dir, ROUTING)
        self.host_bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.host_bell.bind(str(self.dir / sessiondb.HOST_BELL))
        self.rings = 0
        self._n = 0

    def send(self, text: str, sender: str = "Alice") -> int:
        self._n += 1
        return self._insert(
            sessiondb.InboundMessage(
                id=f"m{self._n}",
                kind="chat",
                content={"text": text},
                routing=ROUTING,
                sender_id="u1",
                sender_name=sender,
            )
        )

    def task(self, prompt: str, script: str, task_id: str = "t-0123456789ab") -> int:
        """A scheduled run, as the host writes it from the scheduler's wake."""
        self._n += 1
        return self._insert(
            sessiondb.InboundMessage(
                id=f"task:{task_id}:2026-11-22T08:00:0{self._n}Z",
                kind="task",
                content={"text": prompt, "script": script},
                routing=ROUTING,
            )
        )

    def _insert(self, msg: sessiondb.InboundMessage) -> int:
        seq, _ = sessiondb.insert_inbound(self.dir, msg, outbound_max_seq=sessiondb.outbound_max_seq(self.dir))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bell, contextlib.suppress(OSError):
            bell.sendto(b"", str(self.dir / sessiondb.AGENT_BELL))  # nobody listening yet is fine
        return seq

    def wait(self, check: Callable[[], T | None], deadline: float = DEADLINE) -> T:
        """Poll `check` each time the host bell rings (or every 0.5 s) until it returns a value."""
        end = time.monotonic() + deadline
        while True:
            value = check()
            if value is not None:
                return value
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; outbound={self.outbound()} acks={self.acks()}")
            self.host_bell.settimeout(min(0.5, remaining))
            try:
                self.host_bell.recv(16)
                self.rings += 1
            except TimeoutError:
                pass

    def outbound(self) -> list[sessiondb.OutboundMessage]:
        return sessiondb.read_new_outbound(self.dir)  # every row: this host never marks any published

    def acks(self) -> dict[int, str]:
        with sessiondb.opened(self.dir / sessiondb.OUTBOUND, readonly=True) as conn:
            return {int(r[0]): str(r[1]) for r in conn.execute("SELECT seq, status FROM processing_ack")}

    def reply_to(self, seq: int) -> sessiondb.OutboundMessage:
        """Wait until `seq` is acked completed or failed and return the reply it got."""
        self.wait(lambda: self.acks().get(seq) if self.acks().get(seq) in ("completed", "failed") else None)
        replies = [m for m in self.outbound() if m.in_reply_to == seq]
        assert len(replies) == 1, replies
        return replies[0]

    def close(self) -> None:
        self.host_bell.close()


class AgentProcess:
    def __init__(self, session: Session, env: dict[str, str]) -> None:
        self.session = session
        self.log = session.dir.parent / "agent.log"
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clawden_agent"], env=env, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        bell = session.dir / sessiondb.AGENT_BELL
        try:
            session.wait(lambda: True if bell.exists() else None, deadline=10)
        except BaseException:
            self.kill()  # a runner that never came up must not leak its process and log file
            raise

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            for pid in self.children():  # Claude Code too, as when a container goes
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log_file.close()

    def children(self) -> list[int]:
        out: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            out += [int(p) for p in (task / "children").read_text().split()]
        return out


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    s = Session(tmp_path)
    yield s
    s.close()


def agent_env(session: Session, fake: FakeAnthropic, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE", "CLAWDEN_"))}
    # Anything that tries to leave loopback through a proxy lands on the fake and shows up in
    # its request log, where the tests below would see it.
    return {
        **base,
        "PYTHONPATH": f"{REPO / 'container'}{os.pathsep}{REPO}",
        "HOME": str(session.home),
        "CLAWDEN_SESSION_DIR": str(session.dir),
        "CLAWDEN_GROUP_DIR": str(session.group),
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "HTTPS_PROXY": fake.url,
        "HTTP_PROXY": fake.url,
        "NO_PROXY": "127.0.0.1,localhost",
        **extra,
    }


@pytest.fixture
def start_agent(session: Session, fake: FakeAnthropic) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(**extra: str) -> AgentProcess:
        agent = AgentProcess(session, agent_env(session, fake, **extra))
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()
        if agent.proc.returncode not in (0, None, -signal.SIGKILL):
            sys.stderr.write(agent.log.read_text())


def conversation(body: Any) -> str:
    """Every string in a request's messages, so a test can look for what the model was shown."""

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    return "\n".join(walk(body.get("messages") if isinstance(body, dict) else None))


def only_api_traffic(fake: FakeAnthropic) -> None:
    assert {(r.method, r.path) for r in fake.requests} <= {
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"),
    }, [r.target for r in fake.requests]


# --- tests -------------------------------------------------------------------------------------------


def test_message_gets_the_agents_reply_a_completed_ack_and_a_host_ring(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent()

    seq = session.send("hello there")
    reply = session.reply_to(seq)

    assert reply.kind == "chat" and reply.seq % 2 == 1 and reply.seq > seq
    assert reply.content["text"].startswith(f'echo: <message seq="{seq}" from="Alice" time=')
    assert reply.content["text"].endswith(">hello there</message>")
    assert reply.routing == ROUTING
    assert session.acks() == {seq: "completed"}
    assert session.rings >= 1
    assert (session.dir / ".heartbeat").exists()
    turn = fake.messages_requests(with_tools=True)
    assert SEND in [t["name"] for t in turn[0].body["tools"]]  # loaded up front, not behind tool search
    assert len(turn) == 2  # the send_message call, then the end of the turn after its result
    only_api_traffic(fake)


def test_second_message_continues_the_same_conversation(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent()
    first = session.reply_to(session.send("my name is Bob"))

    second_seq = session.send("what is my name?")
    second = session.reply_to(second_seq)

    assert "what is my name?" in second.content["text"]
    last = fake.messages_requests(with_tools=True)[-1].body
    assert "my name is Bob" in conversation(last) and first.content["text"][:40] in conversation(last)


def test_restarted_runner_resumes_the_stored_conversation(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    session.reply_to(session.send("remember the number 7341"))
    stored = sessiondb.get_state(session.dir, "claude_session_id")
    assert stored
    assert agent.terminate() == 0  # SIGTERM is a clean exit
    assert not (session.dir / sessiondb.AGENT_BELL).exists()

    start_agent()
    seq = session.send("which number?")
    session.reply_to(seq)

    last = fake.messages_requests(with_tools=True)[-1].body
    assert "remember the number 7341" in conversation(last) and "which number?" in conversation(last)
    assert sessiondb.get_state(session.dir, "claude_session_id") == stored


def test_api_error_becomes_a_failure_reply_and_the_next_message_still_works(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent()
    fake.script(Error(403, "the fake refuses this one"))  # 403: Claude Code does not retry it

    bad = session.send("this one fails")
    failure = session.reply_to(bad)
    good = session.send("and this one works")
    reply = session.reply_to(good)

    assert failure.content["text"].startswith("Sorry — the agent failed: ")
    assert failure.content.get("says") == "error" and "says" not in reply.content  # the chat hears it as an error
    assert "the fake refuses this one" in failure.content["text"]
    assert session.acks() == {bad: "failed", good: "completed"}
    assert reply.content["text"].startswith("echo: ") and "and this one works" in reply.content["text"]


def test_a_model_api_that_keeps_failing_is_told_to_the_chat_once_and_the_answer_still_comes(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    """Claude Code retries a failing model call with backoff, for minutes in all; the chat heard nothing meanwhile.
    At its third try in a row the chat gets a notice (Claude Code's own `api_retry` event, no timer), which answers
    nothing: the message's reply still comes, and only it is recorded as the answer."""
    start_agent()
    fake.script(*[Error(529, "Overloaded", type="overloaded_error")] * 3)

    seq = session.send("are you there?")
    reply = session.reply_to(seq)

    notices = [m for m in session.outbound() if m.content.get("says") == "notice"]
    assert len(notices) == 1, [m.content for m in session.outbound()]
    [notice] = notices
    assert notice.content["text"] == "The model's API is not answering (529 overloaded); I keep trying, up to 10 times."
    assert notice.in_reply_to is None and reply.content["text"].startswith("echo: ")
    with sessiondb.opened(session.dir / sessiondb.OUTBOUND, readonly=True) as conn:
        answering = {int(r[0]) for r in conn.execute("SELECT out_seq FROM answered")}
    assert notice.seq not in answering and reply.seq in answering


KEY_FIX = (
    "the owner can set the right one with `clawden secrets add anthropic --type anthropic --replace`"
    " (`clawden doctor` checks it)"
)


def test_a_refused_model_key_is_told_to_the_chat_at_the_first_retry_with_the_owners_fix(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    """Claude Code retries a 401 like an outage, for minutes; the chat hears at once that the key is refused and
    what the owner runs, once, and not that the API is not answering. A key mended meanwhile still answers."""
    start_agent()
    fake.script(*[Error(401, "invalid x-api-key")] * 3)

    seq = session.send("are you there?")
    reply = session.reply_to(seq)

    notices = [m.content["text"] for m in session.outbound() if m.content.get("says") == "notice"]
    assert notices == [f"The model API refused the model key (401 authentication_failed): {KEY_FIX}."]
    assert reply.content["text"].startswith("echo: ")


def test_a_message_failed_by_a_refused_model_key_names_the_owners_fix(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    """When the tries run out, the failure says the key was refused and how to set it, where Claude Code's own text
    ("Fix external API key") names nothing an owner of Clawden can do."""
    start_agent(CLAUDE_CODE_MAX_RETRIES="1")  # the tries run out at once, not after minutes of backoff
    fake.script(*[Error(401, "invalid x-api-key")] * 2)

    failure = session.reply_to(session.send("hello?"))

    text = failure.content["text"]
    assert failure.content.get("says") == "error"
    assert text.startswith("Sorry — the agent failed: the model API refused the model key ("), text
    assert text.endswith(f"): {KEY_FIX}"), text


def test_a_message_claude_code_died_on_is_sent_again_once_then_fails(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    session.reply_to(session.send("warm up"))

    def kill_claude_code_mid_request(requests: int) -> None:
        session.wait(lambda: True if len(fake.messages_requests(with_tools=True)) == requests else None)
        for pid in agent.children():
            os.kill(pid, signal.SIGKILL)

    fake.script(Hang(), Hang())
    stuck = session.send("this one is stuck")
    kill_claude_code_mid_request(3)  # it had not answered: sent again to a fresh Claude Code
    kill_claude_code_mid_request(4)  # again: this message may be what kills it, so it fails
    failure = session.reply_to(stuck)
    fake.release()
    reply = session.reply_to(session.send("are you back?"))

    assert failure.content["text"].startswith("Sorry — the agent failed: Claude Code exited unexpectedly")
    assert session.acks()[stuck] == "failed"
    assert "are you back?" in reply.content["text"]
    assert "warm up" in conversation(fake.messages_requests(with_tools=True)[-1].body)  # resumed


def test_a_message_claude_code_died_on_once_gets_its_answer_from_the_next(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    fake.script(Hang())
    seq = session.send("answer me despite the crash")
    session.wait(lambda: True if fake.messages_requests(with_tools=True) else None)

    for pid in agent.children():
        os.kill(pid, signal.SIGKILL)
    reply = session.reply_to(seq)

    assert reply.content["text"].startswith("echo: ") and "answer me despite the crash" in reply.content["text"]
    assert session.acks() == {seq: "completed"}


def test_final_text_is_sent_when_the_agent_does_not_use_send_message(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent()
    fake.script(Text("A plain answer."))

    reply = session.reply_to(session.send("answer without the tool"))

    assert reply.content["text"] == "A plain answer."


def test_a_pre_check_script_that_says_no_skips_the_model_and_one_that_says_yes_hands_it_its_data(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    (session.group / "inbox").mkdir()
    check = (
        'n=$(ls inbox | wc -l); [ "$n" -eq 0 ] && echo \'{"wakeAgent": false}\' && exit 0; '
        'echo "{\\"wakeAgent\\": true, \\"data\\": \\"$n new letters\\"}"'
    )
    start_agent()
    quiet = session.task("summarise the inbox", check)
    session.wait(lambda: True if session.acks().get(quiet) == "completed" else None)
    assert fake.messages_requests(with_tools=True) == [] and session.outbound() == []

    (session.group / "inbox" / "letter").write_text("hello")
    reply = session.reply_to(session.task("summarise the inbox", check))
    assert "summarise the inbox\n<script-output>1 new letters</script-output></task>" in reply.content["text"]


def test_a_broken_pre_check_script_skips_the_run_and_the_chat_hears_once(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent()
    first, again = session.task("news", "curl-that-does-not-exist"), session.task("news", "curl-that-does-not-exist")
    session.wait(lambda: True if {session.acks().get(s) for s in (first, again)} == {"completed"} else None)
    (notice,) = session.outbound()
    assert notice.content["text"].startswith(
        "⚠️ The pre-check script of task t-0123456789ab failed (it exited "
        "with 127: bash: line 1: curl-that-does-not-exist: command not found)"
    )
    assert fake.messages_requests(with_tools=True) == []
    fixed = session.task("news", "echo '{\"wakeAgent\": true}'")
    assert "<task" in session.reply_to(fixed).content["text"]


def test_claims_left_by_a_dead_container_are_run_again(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    seq = session.send("sent while no agent was up")
    sessiondb.ack(session.dir, [seq], "processing")

    start_agent()
    reply = session.reply_to(seq)

    assert "sent while no agent was up" in reply.content["text"]


def test_gateway_mode_reaches_the_api_only_through_the_relay(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    gateway = tmp_path / "gw.sock"
    fake.call(fake.listen_unix(str(gateway)))
    port = free_port()
    start_agent(
        CLAWDEN_GATEWAY_SOCKET=str(gateway),
        CLAWDEN_RELAY_PORT=str(port),
        ANTHROPIC_BASE_URL="http://192.0.2.1:9",
        ANTHROPIC_API_KEY="sk-must-not-leak",
    )

    reply = session.reply_to(session.send("through the gateway"))

    assert "through the gateway" in reply.content["text"]
    api = fake.messages_requests()
    assert api and all(r.headers["x-api-key"] == "clawden-managed" for r in api)
    assert all(r.headers["host"] == f"127.0.0.1:{port}" for r in api)
    only_api_traffic(fake)


def test_sigterm_mid_turn_exits_and_the_message_runs_again_in_the_next_container(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    fake.script(Hang())
    seq = session.send("interrupted by a restart")
    session.wait(lambda: True if fake.messages_requests(with_tools=True) else None)

    started = time.monotonic()
    assert agent.terminate() == 0
    stop_seconds = time.monotonic() - started
    assert session.acks() == {seq: "processing"}
    conversation_id = sessiondb.get_state(session.dir, "claude_session_id")
    assert conversation_id  # stored when Claude Code named it, before any result
    fake.release()
    start_agent()
    reply = session.reply_to(seq)

    assert stop_seconds < 10
    assert "interrupted by a restart" in reply.content["text"]
    assert session.acks() == {seq: "completed"}
    assert sessiondb.get_state(session.dir, "claude_session_id") == conversation_id


def test_a_container_asked_to_leave_before_it_gave_claude_code_anything_answers_what_waits_then_stops(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    """The runner's drain (SIGUSR1) reaching a container that has not yet sent a turn: leaving at once would spend
    its start on nothing and send its chat back to the queue, to be told once more that it waits."""
    seq = session.send("answer me before you go")
    agent = start_agent()
    # While Claude Code starts: the drain handler is set by then, and the agent has read nothing yet.
    eventually_sync(agent.children, 30, "Claude Code did not start")
    agent.proc.send_signal(signal.SIGUSR1)

    assert "answer me before you go" in session.reply_to(seq).content["text"]
    assert agent.proc.wait(timeout=30) == 0
    assert session.acks() == {seq: "completed"}


def test_a_message_sent_during_a_turn_is_fed_into_it(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    fake.script(
        Hang(then=ToolCall("send_message", {"text": "answer one"})),
        ToolCall("send_message", {"text": "answer two"}),
        Text("done"),
    )
    first = session.send("first question")
    session.wait(
        lambda: (
            True
            if any("first question" in conversation(r.body) for r in fake.messages_requests(with_tools=True))
            else None
        )
    )
    seen = len(fake.messages_requests(with_tools=True))
    second = session.send("second question")
    # Taken by the running turn (not left for the next one) while the model still thinks about the first.
    session.wait(lambda: True if session.acks().get(second) == "processing" else None)
    assert session.acks()[first] == "processing"
    fake.release()
    session.wait(lambda: True if {session.acks().get(first), session.acks().get(second)} == {"completed"} else None)
    assert [m.content["text"] for m in session.outbound()] == ["answer one", "answer two"]
    # The model was shown the second question before its turn on the first one was over.
    later = fake.messages_requests(with_tools=True)[seen:]
    assert any("second question" in conversation(r.body) for r in later)
    assert f"claude code took #[{second}] into the conversation" in agent.log.read_text()


# --- every message gets exactly its own reply, whatever the timing -----------------------------------

MESSAGE_SEQ = re.compile(r'<message seq="(\d+)"')


def answered(reply: sessiondb.OutboundMessage) -> set[int]:
    """The messages a reply echoes (the fake echoes every prompt of the turn it answers)."""
    return {int(s) for s in MESSAGE_SEQ.findall(reply.content["text"])}


def assert_each_message_answered_once(session: Session, seqs: list[int]) -> None:
    session.wait(lambda: True if all(session.acks().get(s) == "completed" for s in seqs) else None, deadline=120)
    replies = [m for m in session.outbound() if m.kind == "chat"]
    covered = [s for r in replies for s in answered(r)]
    assert sorted(covered) == sorted(seqs), [(r.in_reply_to, r.content["text"][:200]) for r in replies]
    for reply in replies:  # marked as answering the newest message it answers, never another
        assert reply.in_reply_to == max(answered(reply)), (reply.in_reply_to, reply.content["text"][:200])


@contextlib.contextmanager
def cpu_starved() -> Iterator[None]:
    """Busy processes on every core, as a loaded home server has."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 2))]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.mark.parametrize("follow_ups", [1, 3, 10])
@pytest.mark.parametrize("starved", [False, True], ids=["idle", "cpu-starved"])
def test_messages_sent_while_a_turn_runs_each_get_exactly_one_correctly_marked_reply(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess], follow_ups: int, starved: bool
) -> None:
    start_agent()
    session.reply_to(session.send("warm up"))
    fake.script(Hang(delay=0.2))  # the first question's turn is slow
    with cpu_starved() if starved else contextlib.nullcontext():
        seqs = [session.send("question 0")]
        # Held by the fake (a release before the request arrives would not release it).
        session.wait(
            lambda: (
                True
                if any("question 0" in conversation(r.body) for r in fake.messages_requests(with_tools=True))
                else None
            ),
            deadline=120,
        )
        for i in range(1, follow_ups + 1):
            seqs.append(session.send(f"question {i}"))
            if i == follow_ups // 2:
                fake.release()  # the rest arrive while Claude Code answers the first ones
        fake.release()
        assert_each_message_answered_once(session, [2, *seqs])


def test_a_turn_claude_code_starts_on_its_own_is_not_taken_for_the_next_messages_answer(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    flag = tmp_path / "background-done"
    start_agent()
    fake.script(
        ToolCall(
            "Bash",
            {
                "command": f"sleep 1; touch {flag}; echo background-finished",
                "run_in_background": True,
                "description": "a background job",
            },
        ),
        ToolCall("send_message", {"text": "started it"}),
        Text("ok"),
        # When the job ends, Claude Code starts a turn of its own to report it.
        Text("The background job finished."),
    )
    first = session.send("start a background job")
    assert session.reply_to(first).content["text"] == "started it"
    session.wait(
        lambda: (
            True
            if any(
                m.content["text"] == "The background job finished." and m.in_reply_to is None
                for m in session.outbound()
            )
            else None
        )
    )

    second = session.send("and now?")
    reply = session.reply_to(second)

    assert "and now?" in reply.content["text"] and reply.in_reply_to == second
    assert len([m for m in session.outbound() if m.in_reply_to == first]) == 1


def test_a_container_killed_between_two_results_answers_the_rest_once_after_restart(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    first = session.send("first")
    session.reply_to(first)
    fake.script(Hang())
    second = session.send("second")
    session.wait(lambda: True if len(fake.messages_requests(with_tools=True)) == 3 else None)
    agent.kill()  # the whole container goes: runner and Claude Code

    fake.release()
    start_agent()
    reply = session.reply_to(second)

    assert "second" in reply.content["text"]
    assert [m.in_reply_to for m in session.outbound()] == [first, second]
    assert session.acks() == {first: "completed", second: "completed"}


@pytest.mark.parametrize("answer", ["send_message", "final text"])
def test_a_container_killed_after_it_answered_does_not_answer_again_when_the_next_message_comes(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess], answer: str
) -> None:
    """Its answer went out before its turn's result was recorded, and the person wrote again: the next
    container must not run the answered message again, alone (a second answer) or with the new one (the
    old answer folded into the new one's reply)."""
    agent = start_agent()
    if answer == "send_message":
        fake.script(ToolCall("send_message", {"text": "answer one"}), Hang())
    else:  # the reply is written from the result, and the container dies before the ack that follows it
        fake.script(Text("answer one"))
    first = session.send("first")
    session.wait(lambda: True if [m for m in session.outbound() if m.in_reply_to == first] else None)
    if answer == "send_message":
        session.wait(lambda: True if len(fake.messages_requests(with_tools=True)) == 2 else None)
    else:  # the ack is what a host would see; drop it as if the container died a moment earlier
        session.wait(lambda: True if session.acks().get(first) == "completed" else None)
    agent.kill()
    if answer == "final text":
        with sessiondb.opened(session.dir / sessiondb.OUTBOUND) as conn:
            conn.execute("UPDATE processing_ack SET status = 'processing' WHERE seq = ?", (first,))
    fake.release()
    second = session.send("second")
    start_agent()
    reply = session.reply_to(second)

    assert "second" in reply.content["text"] and "first" not in reply.content["text"]
    rows = session.outbound()
    assert [m.in_reply_to for m in rows] == [first, second] and rows[0].content["text"] == "answer one"
    assert session.acks() == {first: "completed", second: "completed"}


def test_a_runaway_agent_is_stopped_at_the_turn_limit_and_the_chat_is_told(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent(CLAWDEN_MAX_TURNS="3")
    fake.script(*[ToolCall("Bash", {"command": f"echo step {i}", "description": "again"}) for i in range(10)])

    seq = session.send("loop forever")
    notice = session.reply_to(seq)
    fake.forget_script()

    assert notice.content["text"] == ("Sorry — the agent failed: it took more than 3 steps, the limit for one message")
    assert session.acks()[seq] == "failed"
    assert len(fake.messages_requests(with_tools=True)) <= 4
    assert "echo: " in session.reply_to(session.send("still there?")).content["text"]


def test_global_memory_reaches_the_model(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    shared = tmp_path / "global"
    shared.mkdir()
    (shared / "CLAUDE.md").write_text("The household's wifi is called PINEAPPLE-7.\n")
    start_agent(CLAWDEN_GLOBAL_DIR=str(shared))

    session.reply_to(session.send("what is the wifi called?"))

    request = json.dumps(fake.messages_requests(with_tools=True)[0].body)
    assert "PINEAPPLE-7" in request and "You are Clawden's test agent." in request


def test_cost_reports_each_message_from_the_models_usage(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent()
    first = session.send("one")
    session.reply_to(first)
    second = session.send("two")
    session.reply_to(second)

    costs = {seq: sessiondb.cost(session.dir, [seq]) for seq in (first, second)}
    requests = fake.messages_requests(with_tools=True)
    usage = [r for r in requests if r.body.get("stream") or True]
    assert all(c.usd > 0 for c in costs.values())
    assert costs[first].input_tokens + costs[second].input_tokens == sum(
        max(1, len(json.dumps(r.body)) // 4) for r in usage
    )  # the fake's input_tokens, turn by turn

    session._n += 1
    seq, _ = sessiondb.insert_inbound(
        session.dir,
        sessiondb.InboundMessage(
            id="m-cost", kind="chat", content={"text": "/cost", "command": "cost"}, routing=ROUTING, sender_id="u1"
        ),
        outbound_max_seq=sessiondb.outbound_max_seq(session.dir),
    )
    doorbell_ring(session)
    text = session.reply_to(seq).content["text"]
    total = costs[first].usd + costs[second].usd
    assert text.startswith(f"This chat has cost ${total:.4f} over 2 messages")
    assert f"The last one, #{second}, cost ${costs[second].usd:.4f}" in text
    assert len(fake.messages_requests(with_tools=True)) == len(requests)  # no model call for /cost


def doorbell_ring(session: Session) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bell, contextlib.suppress(OSError):
        bell.sendto(b"", str(session.dir / sessiondb.AGENT_BELL))


def test_a_conversation_that_is_gone_starts_fresh_with_one_notice(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    session.reply_to(session.send("remember 7341"))
    assert agent.terminate() == 0
    shutil.rmtree(session.home / ".claude" / "projects")  # the stored conversation is lost

    start_agent()
    seq = session.send("which number?")
    reply = session.reply_to(seq)

    notices = [m for m in session.outbound() if m.in_reply_to is None]
    assert [n.content["text"] for n in notices] == [
        "I could not reopen our earlier conversation, so I started a fresh one. My memory file is still here; "
        "anything said only in the chat before now I no longer remember."
    ]
    assert "which number?" in reply.content["text"]
    assert "remember 7341" not in conversation(fake.messages_requests(with_tools=True)[-1].body)


def test_a_conversation_too_long_for_the_model_is_compacted_by_claude_code_without_a_notice(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent()
    session.reply_to(session.send("a long history"))
    fake.overflow_when("a long history")  # the history no longer fits, nor does a summary of it

    seq = session.send("one more")
    reply = session.reply_to(seq)

    assert "one more" in reply.content["text"] and session.acks()[seq] == "completed"
    assert [m for m in session.outbound() if m.in_reply_to is None] == []


def test_a_conversation_claude_code_cannot_shrink_starts_fresh_and_answers_there_with_one_notice(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent()
    session.reply_to(session.send("a long history"))
    stuck = sessiondb.get_state(session.dir, sessiondb.CONVERSATION_KEY)
    assert stuck
    fake.overflow_when(stuck)  # every request of that conversation (it names itself) is refused

    seq = session.send("one more")
    reply = session.reply_to(seq)

    assert "one more" in reply.content["text"] and session.acks()[seq] == "completed"
    notices = [m.content["text"] for m in session.outbound() if m.in_reply_to is None]
    assert notices == [
        "Our conversation grew too long for the model, so I started a fresh one and answered "
        "your message in it. My memory file is still here."
    ]
    assert sessiondb.get_state(session.dir, sessiondb.CONVERSATION_KEY) != stuck
    assert "a long history" not in conversation(fake.messages_requests(with_tools=True)[-1].body)


def test_an_at_path_in_a_message_is_text_not_a_file_to_read(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    secret = tmp_path / "private.txt"
    secret.write_text("TOP-SECRET-CONTENTS")
    start_agent()

    session.reply_to(session.send(f"look at @{secret}"))

    assert "TOP-SECRET-CONTENTS" not in json.dumps([r.body for r in fake.messages_requests()])


def test_a_turn_past_its_time_budget_is_stopped_and_the_chat_is_told(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent(CLAWDEN_TURN_BUDGET="10")
    fake.script(ToolCall("Bash", {"command": "echo working", "description": "step"}), Hang())

    seq = session.send("take forever")
    notice = session.reply_to(seq)
    fake.release()

    assert notice.content["text"] == (
        "Sorry — the agent failed: it worked on this for more than 10 seconds, the limit for one message"
    )
    assert session.acks()[seq] == "failed"
    assert "echo: " in session.reply_to(session.send("still there?")).content["text"]


ASK = ToolCall("ask_user_question", {"question": "Which one?", "options": ["tea", "coffee"], "timeout": 60})


def asked(session: Session, fake: FakeAnthropic) -> tuple[int, sessiondb.OutboundMessage]:
    """A message whose turn asks the person a question, and that question's row, once the agent waits on it."""
    fake.script(ASK)
    seq = session.send("ask me something")
    return seq, session.wait(lambda: next((m for m in session.outbound() if m.kind == "question"), None))


def answered_on_the_rerun(session: Session, fake: FakeAnthropic, seq: int, question: sessiondb.OutboundMessage) -> None:
    """The turn, run again, asks again and takes the click on the first card: one card, one answer, completed."""
    session.wait(lambda: True if fake.pending_script < 3 else None)  # the rerun has asked
    sessiondb.respond(session.dir, question.content["request_id"], {"answer": "tea"})  # a click on the first card
    session.wait(lambda: session.acks().get(seq) if session.acks().get(seq) in ("completed", "failed") else None)
    assert session.acks()[seq] == "completed"
    rows = [(m.kind, m.content.get("text")) for m in session.outbound() if m.in_reply_to == seq]
    assert rows == [("question", None), ("chat", "tea it is")]  # one card, not a second


RERUN = (ASK, ToolCall("send_message", {"text": "tea it is"}), Text("done"))


def test_a_question_asked_again_after_its_container_died_is_the_same_card_and_takes_its_answer(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    seq, question = asked(session, fake)
    agent.kill()  # while it waits for the person: the turn runs again in the next container, and asks again
    fake.script(*RERUN)
    start_agent()
    answered_on_the_rerun(session, fake, seq, question)


def test_a_question_claude_code_died_waiting_on_is_asked_again_and_takes_its_answer(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    """Claude Code dying while the agent waits on the person is not the message's fault: the turn runs again and
    asks again (the same card), and the person's click reaches it, rather than the message failing under it."""
    agent = start_agent()
    seq, question = asked(session, fake)
    fake.script(*RERUN)
    for pid in agent.children():
        os.kill(pid, signal.SIGKILL)
    answered_on_the_rerun(session, fake, seq, question)


def test_a_question_a_restart_stopped_the_wait_for_is_asked_again_and_takes_its_answer(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    """Asking is not answering: a container stopped on purpose (SIGTERM: a restart, a shutdown) while its agent waits
    for the person leaves the message owed, not completed, and the click on the card reaches the next container."""
    agent = start_agent()
    seq, question = asked(session, fake)
    assert agent.terminate() == 0
    assert session.acks() == {seq: "processing"}
    fake.script(*RERUN)
    start_agent()
    answered_on_the_rerun(session, fake, seq, question)


def test_a_message_sent_to_another_destination_does_not_answer_the_person(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    ops = sessiondb.Routing("telegram", "ops-chat")
    sessiondb.set_destinations(session.dir, {"ops": ("Ops", ops)})
    start_agent()
    fake.script(ToolCall("send_message", {"text": "the boiler is leaking", "to": "ops"}), Text("Done, I told ops."))

    seq = session.send("tell ops the boiler leaks")
    session.wait(lambda: session.acks().get(seq) if session.acks().get(seq) in ("completed", "failed") else None)

    rows = [(m.routing, m.content["text"]) for m in session.outbound() if m.in_reply_to == seq]
    assert rows == [(ops, "the boiler is leaking"), (ROUTING, "Done, I told ops.")]


THINK = ToolCall("Bash", {"command": "echo thinking", "description": "think"})


def working_on(session: Session, fake: FakeAnthropic, agent: AgentProcess, seq: int) -> None:
    """Wait until Claude Code has taken #seq into the conversation and waits on the model's second step for it."""
    session.wait(
        lambda: (
            True
            if f"took #[{seq}] into" in agent.log.read_text() and len(fake.messages_requests(with_tools=True)) == 2
            else None
        )
    )


def test_a_broken_pre_check_during_a_turn_leaves_that_turns_replies_and_claim_alone(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    fake.script(THINK, Hang(then=ToolCall("send_message", {"text": "here is your answer"})), Text("done"))
    seq = session.send("a question that takes a while")
    working_on(session, fake, agent, seq)

    task = session.task("news", "curl-that-does-not-exist")  # its notice is written while Claude Code works on #seq
    session.wait(lambda: True if session.acks().get(task) == "completed" else None)
    fake.release()
    session.wait(lambda: True if session.acks().get(seq) == "completed" else None)

    rows = {m.content["text"].split(" (")[0]: m.in_reply_to for m in session.outbound()}
    assert rows == {"here is your answer": seq, "⚠️ The pre-check script of task t-0123456789ab failed": task}


def test_a_broken_pre_checks_notice_is_not_the_answer_to_the_message_in_flight(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    """The container dies after the notice, before the agent answered: the message runs again in the next one."""
    agent = start_agent()
    fake.script(THINK, Hang())
    seq = session.send("a question that takes a while")
    working_on(session, fake, agent, seq)
    task = session.task("news", "curl-that-does-not-exist")
    session.wait(lambda: True if session.acks().get(task) == "completed" else None)
    agent.kill()

    fake.release()
    start_agent()
    reply = session.reply_to(seq)

    assert "a question that takes a while" in reply.content["text"]


def test_a_question_asked_again_after_its_time_ran_out_is_not_waited_on_again(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    ask = ToolCall("ask_user_question", {"question": "Which one?", "options": ["tea", "coffee"], "timeout": 3600})
    fake.script(ask)
    seq = session.send("ask me something")
    question = session.wait(lambda: next((m for m in session.outbound() if m.kind == "question"), None))
    agent.kill()
    # The container stays dead past the question's hour (the time is moved back rather than waited), and the runner
    # that has the session now knows the card expired long ago: nobody will ever write its answer.
    with sqlite3.connect(session.dir / sessiondb.OUTBOUND) as conn:
        conn.execute("UPDATE messages_out SET created_at = created_at - 3700 WHERE id = ?", (question.id,))

    fake.script(ask, ToolCall("send_message", {"text": "I'll pick tea, then"}), Text("done"))
    start_agent()
    session.wait(lambda: session.acks().get(seq) if session.acks().get(seq) in ("completed", "failed") else None)

    assert session.acks()[seq] == "completed"
    results = [
        r for r in fake.messages_requests(with_tools=True) if "No answer within 3600 seconds" in conversation(r.body)
    ]
    assert results, "the rerun's question was answered by its timeout"
    rows = [(m.kind, m.content.get("text")) for m in session.outbound() if m.in_reply_to == seq]
    assert rows == [("question", None), ("chat", "I'll pick tea, then")]


def test_waiting_for_a_persons_answer_does_not_count_against_the_time_budget(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent(CLAWDEN_TURN_BUDGET="5")
    fake.script(
        ToolCall("ask_user_question", {"question": "Which one?", "options": ["tea", "coffee"], "timeout": 60}),
        ToolCall("send_message", {"text": "tea it is"}),
        Text("done"),
    )
    seq = session.send("ask me something")
    question = session.wait(lambda: next((m for m in session.outbound() if m.kind == "question"), None))

    time.sleep(8)  # the person takes longer than the whole budget to answer
    sessiondb.respond(session.dir, question.content["request_id"], {"answer": "tea"})
    session.wait(lambda: session.acks().get(seq) if session.acks().get(seq) in ("completed", "failed") else None)

    assert session.acks()[seq] == "completed"
    assert [m.content["text"] for m in session.outbound() if m.kind == "chat"] == ["tea it is"]
