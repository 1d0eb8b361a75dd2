"""`clawden chat` shows a card as numbered choices, and a typed number presses that button."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pty
import select
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO, get_args

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from clawden import setup
from clawden.bus import ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.ctl.common import PING, Pong
from clawden.bus.ctl.router import CHATS_LIST, Chat
from clawden.chat import RUNNER_COMMANDS, TerminalChat, chat
from tests.conftest import NatsServer
from tests.eventually import eventually

ROUTE = ev.Route(channel="local", chat_id="terminal")
CARD = ev.Card(
    title="Allow GitHub?",
    body="GET api.github.com/user",
    buttons=(ev.Button(id="approve", label="Approve"), ev.Button(id="deny", label="Deny")),
)


def card_message(id: str = "approval:ap-1") -> ev.OutboundMessage:
    return ev.OutboundMessage(id=id, route=ROUTE, text="The agent asks:", card=CARD, agent_group="main")


def test_a_card_prints_as_numbered_choices() -> None:
    shown = TerminalChat("terminal", "ada").show(card_message(), "m1")
    assert shown == (
        "main> The agent asks:\n\nAllow GitHub?\n\nGET api.github.com/user\n"
        "    [1] Approve   [2] Deny   (type a number to choose)"
    )


def test_once_says_how_to_decide_a_card_since_nothing_can_be_typed_there() -> None:
    """`--once` reads no keyboard: "type a number" would ask for what cannot be done."""
    once = TerminalChat("terminal", "ada", once=True)
    approval = once.show(card_message("ap-1"), "m1")
    question = ev.Card(title="Which?", buttons=(ev.Button(id="a", label="A"), ev.Button(id="b", label="B")))
    asked = once.show(ev.OutboundMessage(id="ap-2", route=ROUTE, text="Which?", card=question), "m2")

    assert approval.endswith(
        "[1] Approve   [2] Deny   (decide with `clawden approvals approve ap-1` or `clawden approvals deny ap-1`)"
    ), approval
    assert asked.endswith("[1] A   [2] B   (answer with `clawden approvals answer ap-2 <number>`)"), asked


def test_typing_a_choice_presses_that_button_once() -> None:
    terminal = TerminalChat("terminal", "ada")
    terminal.show(card_message(), "m1")
    action = terminal.line(" 2 ")
    assert isinstance(action, ev.InboundAction)
    assert (action.card_id, action.button_id, action.message_id, action.sender.id) == (
        "approval:ap-1",
        "deny",
        "m1",
        "local:ada",
    )
    again = terminal.line("2")
    assert isinstance(again, ev.InboundMessage) and again.text == "2"


def test_a_number_out_of_range_or_without_a_card_is_just_chat() -> None:
    terminal = TerminalChat("terminal", "ada")
    assert isinstance(terminal.line("1"), ev.InboundMessage)
    terminal.show(card_message(), "m1")
    assert isinstance(terminal.line("3"), ev.InboundMessage)
    assert isinstance(terminal.line("1"), ev.InboundAction)


def test_a_card_edited_elsewhere_no_longer_takes_numbers() -> None:
    terminal = TerminalChat("terminal", "ada")
    terminal.show(card_message(), "m1")
    shown = terminal.show(ev.OutboundEdit(id="e1", route=ROUTE, target_message_id="m1", text="Approved by Bob"), "m1")
    assert shown == "clawden> (edited) Approved by Bob"
    assert isinstance(terminal.line("1"), ev.InboundMessage)


@pytest.fixture
async def router(nc: Client) -> AsyncIterator[None]:
    """A router that answers its ping, which `clawden chat` asks first; these tests play the router's part in the
    conversation on the bus themselves."""

    async def pong(msg: Msg) -> None:
        await msg.respond(
            msgspec.json.encode(Pong(service="router", pid=os.getpid(), uptime=1.0, ready=True, stats={}))
        )

    sub = await nc.subscribe(PING.at("router").subject, cb=pong)
    await nc.flush()
    yield
    await sub.unsubscribe()


async def start_terminal(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> tuple[JetStreamContext, asyncio.Task[int], TextIO, int, io.StringIO]:
    """`clawden chat` on a pipe for stdin, listening: its stream, task, stdin, the pipe's write end, output."""
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=nats_server.url))
    js = nc.jetstream()
    await ensure_streams(js)
    read_fd, write_fd = os.pipe()
    stdin, out = os.fdopen(read_fd), io.StringIO()
    session = asyncio.create_task(chat(cfg, chat_id="terminal", timeout=1, stdin=stdin, stdout=out))
    for _ in range(100):  # the terminal's consumer exists once `chat` is listening
        try:
            await js.consumer_info("CLAWDEN_OUTBOUND", "channel-local-terminal")
            break
        except Exception:
            await asyncio.sleep(0.05)
    return js, session, stdin, write_fd, out


async def test_clawden_chat_turns_a_typed_number_into_a_button_press_on_the_bus(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None
) -> None:
    js, session, stdin, write_fd, out = await start_terminal(tmp_path, nats_server, nc)
    await publish(js, subjects.outbound("local", ROUTE.chat_id), card_message(), msg_id="approval:ap-1")
    await eventually(lambda: "[2] Deny" in out.getvalue(), 10, lambda: out.getvalue())
    inbound = await js.subscribe(subjects.inbound("local"))
    os.write(write_fd, b"2\n")
    os.close(write_fd)
    event = ev.decode((await inbound.next_msg(timeout=10)).data)
    assert isinstance(event, ev.InboundAction) and event.button_id == "deny" and event.card_id == "approval:ap-1"
    await asyncio.wait_for(session, 15)
    stdin.close()


async def test_the_terminal_shows_its_chats_replies_from_every_lane_in_order(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None
) -> None:
    js, session, stdin, write_fd, out = await start_terminal(tmp_path, nats_server, nc)
    other = ev.Route(
        channel="local",
        chat_id=next(c for c in map(str, range(100)) if subjects.lane(c) != subjects.lane(ROUTE.chat_id)),
    )
    sends = [
        (subjects.outbound("local", ROUTE.chat_id), ROUTE, "one"),
        (subjects.outbound("local", ROUTE.chat_id), ROUTE, "two"),
        (subjects.outbound("local", other.chat_id), other, "not mine"),
        (subjects.outbound("local", ROUTE.chat_id), ROUTE, "three"),
    ]
    for i, (subject, route, text) in enumerate(sends):
        await publish(js, subject, ev.OutboundMessage(id=f"m{i}", route=route, text=text), msg_id=f"m{i}")
    await eventually(lambda: "three" in out.getvalue(), 10, lambda: out.getvalue())
    os.close(write_fd)
    await asyncio.wait_for(session, 15)
    stdin.close()
    assert [line.split("> ", 1)[1] for line in out.getvalue().splitlines()] == ["one", "two", "three"]


async def test_help_lists_the_commands_and_exit_leaves_without_sending_what_follows(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None
) -> None:
    js, session, stdin, write_fd, out = await start_terminal(tmp_path, nats_server, nc)
    inbound = await js.subscribe(subjects.inbound("local"))
    os.write(write_fd, b"/help\n/exit\nnever sent\n")

    await asyncio.wait_for(session, 15)
    os.close(write_fd)
    stdin.close()

    assert "/exit    leave (also /quit, or Ctrl-D)" in out.getvalue()
    # Every command the agent runner answers (the bus's list of them), each with what it does.
    for word in filter(None, get_args(ev.WakeCommand)):
        assert f"  /{word} " in out.getvalue(), (word, out.getvalue())
    with pytest.raises(nats.errors.TimeoutError):
        await inbound.next_msg(timeout=1)


def test_help_says_what_each_command_the_agent_runner_answers_does() -> None:
    """/help lists the bus's commands (`ev.WakeCommand`); a new one needs its line here."""
    assert set(RUNNER_COMMANDS) == set(get_args(ev.WakeCommand)) - {""}


@pytest.mark.parametrize(
    ("name", "warning"),
    [
        ("kitchn", "no chat kitchn yet; did you mean kitchen? (starting a new chat kitchn)\n"),
        ("kitchen", ""),
        ("garden", ""),
        ("termnal", "no chat termnal yet; did you mean terminal? (starting a new chat termnal)\n"),
    ],
)
async def test_a_chat_name_close_to_an_existing_one_is_warned_of_and_still_opened(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,
    capsys: pytest.CaptureFixture[str],
    name: str,
    warning: str,
) -> None:
    kitchen = Chat(
        channel="local", chat_id="kitchen", name="terminal", is_group=False, policy="inherit", denied=False,
        wired=["main"], created_at=1.0,
    )  # fmt: skip

    async def chats(msg: Msg) -> None:
        await msg.respond(msgspec.json.encode([kitchen]))

    sub = await nc.subscribe(CHATS_LIST.subject, cb=chats)
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=nats_server.url))
    await ensure_streams(nc.jetstream())
    inbound = await nc.jetstream().subscribe(subjects.inbound("local"))
    session = asyncio.create_task(chat(cfg, chat_id=name, once="hi", timeout=0.5, stdout=io.StringIO()))
    sent = ev.decode((await inbound.next_msg(timeout=15)).data)
    await asyncio.wait_for(session, 15)
    await sub.unsubscribe()

    assert isinstance(sent, ev.InboundMessage) and sent.route.chat_id == name
    assert capsys.readouterr().err.replace("(no reply within 0s)\n", "") == warning


async def test_a_new_chat_is_opened_without_a_word_when_the_router_does_not_list_chats(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=nats_server.url))
    await ensure_streams(nc.jetstream())
    inbound = await nc.jetstream().subscribe(subjects.inbound("local"))
    session = asyncio.create_task(chat(cfg, chat_id="kitchn", once="hi", timeout=0.5, stdout=io.StringIO()))
    sent = ev.decode((await inbound.next_msg(timeout=15)).data)
    await asyncio.wait_for(session, 15)

    assert isinstance(sent, ev.InboundMessage) and sent.route.chat_id == "kitchn"
    assert capsys.readouterr().err == "(no reply within 0s)\n"


async def test_a_reply_delivered_twice_is_shown_once(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None
) -> None:
    js, session, stdin, write_fd, out = await start_terminal(tmp_path, nats_server, nc)
    reply = ev.OutboundMessage(id="s-1:reply:2:send:0", route=ROUTE, text="only once")
    # As JetStream redelivers a message whose ack was lost (a NATS restart between print and ack).
    await publish(js, subjects.outbound("local", ROUTE.chat_id), reply, msg_id="first-delivery")
    await publish(js, subjects.outbound("local", ROUTE.chat_id), reply, msg_id="second-delivery")
    await publish(
        js,
        subjects.outbound("local", ROUTE.chat_id),
        ev.OutboundMessage(id="s-1:reply:4:send:0", route=ROUTE, text="the next one"),
        msg_id="third",
    )
    await eventually(lambda: "the next one" in out.getvalue(), 10, lambda: out.getvalue())
    os.close(write_fd)
    await asyncio.wait_for(session, 15)
    stdin.close()

    assert out.getvalue().count("only once") == 1


async def chat_once(
    tmp_path: Path, nats_server: NatsServer, nc: Client, out: TextIO
) -> tuple[JetStreamContext, JetStreamContext.PushSubscription, asyncio.Task[int]]:
    """`clawden chat --once hello` on a new home: its stream, what it publishes (as read), and its task."""
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=nats_server.url))
    js = nc.jetstream()
    await ensure_streams(js)
    inbound = await js.subscribe(subjects.inbound("local"))
    return js, inbound, asyncio.create_task(chat(cfg, chat_id="terminal", once="hello", timeout=30, stdout=out))


@pytest.mark.parametrize(("last", "code"), [("reply", 0), ("error", 1)])
async def test_once_waits_past_a_notice_and_exits_non_zero_when_the_message_will_not_be_answered(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None, last: str, code: int
) -> None:
    out = io.StringIO()
    js, inbound, session = await chat_once(tmp_path, nats_server, nc, out)
    sent = ev.decode((await inbound.next_msg(timeout=15)).data)
    assert isinstance(sent, ev.InboundMessage) and sent.text == "hello"

    for i, (kind, text) in enumerate((("notice", "I'm busy; your turn comes"), (last, "the answer"))):
        await publish(
            js,
            subjects.outbound("local", ROUTE.chat_id),
            ev.OutboundMessage(id=f"s-1:{i}", route=ROUTE, text=text, kind=kind),  # type: ignore[arg-type]
            msg_id=f"s-1:{i}",
        )

    assert await asyncio.wait_for(session, 15) == code
    assert "I'm busy; your turn comes" in out.getvalue() and "the answer" in out.getvalue()


async def test_once_prints_the_answer_to_its_own_message_not_one_left_from_before(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reply nobody read (an earlier `--once` left after the first of two, a chat closed early) waits in the
    terminal's durable, and a late answer to an earlier message may come while this one waits: each is shown as
    earlier, on stderr, and `--once` waits for the answer to its own message. It used to print the first reply that
    came as the answer, and so stayed one message behind from then on."""
    out = io.StringIO()
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=nats_server.url))
    js = nc.jetstream()
    await ensure_streams(js)
    lane = subjects.outbound("local", ROUTE.chat_id)
    left = ev.OutboundMessage(id="s-1:left", route=ROUTE, text="left from before", answering="m-old")
    await publish(js, lane, left, msg_id=left.id)
    inbound = await js.subscribe(subjects.inbound("local"))
    session = asyncio.create_task(chat(cfg, chat_id="terminal", once="hello", timeout=30, stdout=out))
    sent = ev.decode((await inbound.next_msg(timeout=15)).data)
    assert isinstance(sent, ev.InboundMessage) and sent.text == "hello"

    late = ev.OutboundMessage(id="s-1:late", route=ROUTE, text="late answer to another", answering="m-older")
    await publish(js, lane, late, msg_id=late.id)
    await eventually(lambda: "late answer to another" in capsys.readouterr().err or None, 10)
    assert not session.done()  # still waiting for its own answer
    answer = ev.OutboundMessage(id="s-1:answer", route=ROUTE, text="the answer", answering=sent.message_id)
    await publish(js, lane, answer, msg_id=answer.id)

    assert await asyncio.wait_for(session, 15) == 0
    assert "the answer" in out.getvalue() and "left from before" not in out.getvalue(), out.getvalue()
    assert "late answer" not in out.getvalue(), out.getvalue()


async def test_a_router_that_listens_but_is_slow_to_answer_is_running_so_the_chat_goes_on(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A busy machine: the router's ping waits behind its work. It listens, so it is running: the message is sent
    and answered, where the chat used to end saying the router was not running."""
    pinged = asyncio.Event()

    async def busy(msg: Msg) -> None:
        pinged.set()  # and no answer within the wait

    sub = await nc.subscribe(PING.at("router").subject, cb=busy)
    monkeypatch.setattr("clawden.chat.ROUTER_WAIT", 0.5)
    js, inbound, session = await chat_once(tmp_path, nats_server, nc, io.StringIO())
    sent = ev.decode((await inbound.next_msg(timeout=15)).data)
    assert pinged.is_set() and isinstance(sent, ev.InboundMessage) and sent.text == "hello"
    await publish(
        js,
        subjects.outbound("local", ROUTE.chat_id),
        ev.OutboundMessage(id="s-1:r", route=ROUTE, text="hi"),
        msg_id="s-1:r",
    )
    assert await asyncio.wait_for(session, 15) == 0
    assert "the router is slow to answer" in capsys.readouterr().err
    await sub.unsubscribe()


async def chat_home(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> tuple[dict[str, str], JetStreamContext.PushSubscription]:
    """A new home on the test's NATS: the environment `clawden chat` runs in, and what it publishes, as read."""
    home = tmp_path / "home"
    setup.init(home)
    js = nc.jetstream()
    await ensure_streams(js)
    inbound = await js.subscribe(subjects.inbound("local"))
    return {**os.environ, "CLAWDEN_HOME": str(home), "CLAWDEN_NATS_URL": nats_server.url}, inbound


@pytest.mark.parametrize(
    ("lines", "messages"), [(False, ["first line\nsecond line"]), (True, ["first line", "second line"])]
)
async def test_piped_input_is_one_message_unless_asked_line_by_line(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None, lines: bool, messages: list[str]
) -> None:
    env, inbound = await chat_home(tmp_path, nats_server, nc)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clawden",
        "chat",
        "--timeout",
        "1",
        *(["--lines"] if lines else []),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    await proc.communicate(b"first line\nsecond line\n")

    got = [ev.decode((await inbound.next_msg(timeout=10)).data) for _ in messages]
    assert [m.text for m in got if isinstance(m, ev.InboundMessage)] == messages
    with pytest.raises(nats.errors.TimeoutError):
        await inbound.next_msg(timeout=0.5)


async def test_without_a_router_chat_says_so_in_one_line_with_what_to_run_and_sends_nothing(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> None:
    env, inbound = await chat_home(tmp_path, nats_server, nc)

    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "clawden", "chat", "--once", "hello", "--timeout", "3"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)

    assert proc.returncode == 1 and out == b"", (out, err)
    assert err.decode().splitlines() == [
        "clawden: the router is not running, so nothing would answer here: start Clawden with `clawden up`"
        " (`clawden status` shows what runs)"
    ]
    with pytest.raises(nats.errors.TimeoutError):  # not left waiting in the stream for nobody
        await inbound.next_msg(timeout=0.5)


class Pty:
    """`clawden chat` in a pseudo-terminal, as a person runs it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the chat, with the pty as its terminal
            os.execve(sys.executable, [sys.executable, "-m", "clawden", "chat"], env)
        self.seen = b""

    def wait_for(self, text: bytes, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, self.seen
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:  # the child closed its end
                    assert text in self.seen, self.seen

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.fd)

    def exit_code(self, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            assert time.monotonic() < deadline, self.seen
            with contextlib.suppress(OSError):  # keep the pty drained so the child never blocks on it
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.seen += os.read(self.fd, 4096)


async def test_in_a_terminal_a_paste_is_one_message_a_reply_keeps_the_typed_line_and_ctrl_c_leaves_at_once(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None
) -> None:
    env, inbound = await chat_home(tmp_path, nats_server, nc)
    term = Pty({**env, "TERM": "xterm"})
    try:
        await asyncio.to_thread(term.wait_for, b"you> ")

        term.write(b"\x1b[200~line one\nline two\x1b[201~\r")  # what a terminal sends for a pasted text
        pasted = ev.decode((await inbound.next_msg(timeout=10)).data)
        assert isinstance(pasted, ev.InboundMessage) and pasted.text == "line one\nline two"
        with pytest.raises(nats.errors.TimeoutError):
            await inbound.next_msg(timeout=0.5)

        term.write(b"half typ")
        await asyncio.to_thread(term.wait_for, b"half typ")
        await publish(
            nc.jetstream(),
            subjects.outbound("local", ROUTE.chat_id),
            ev.OutboundMessage(id="r-1", route=ROUTE, text="a reply", agent_group="main"),
            msg_id="r-1",
        )
        await asyncio.to_thread(term.wait_for, b"main> a reply\r\nyou> half typ")

        term.write(b"\x03")  # Ctrl-C, with nothing sent
        assert await asyncio.to_thread(term.exit_code) == 130
        assert b"Traceback" not in term.seen, term.seen[-200:]
        # The shell's prompt then starts a line of its own, not after "you> half typ".
        assert term.seen.endswith(b"half typ\r\n\x1b[?2004l"), term.seen[-200:]
    finally:
        await asyncio.to_thread(term.close)


async def test_once_leaves_as_soon_as_its_reply_is_shown_and_acknowledged(
    tmp_path: Path, nats_server: NatsServer, nc: Client, router: None
) -> None:
    js, inbound, session = await chat_once(tmp_path, nats_server, nc, io.StringIO())
    await inbound.next_msg(timeout=15)

    await publish(
        js,
        subjects.outbound("local", ROUTE.chat_id),
        ev.OutboundMessage(id="s-1:r", route=ROUTE, text="hi"),
        msg_id="s-1:r",
    )
    replied = time.monotonic()
    assert await asyncio.wait_for(session, 15) == 0
    took = time.monotonic() - replied

    info = await js.consumer_info("CLAWDEN_OUTBOUND", "channel-local-terminal")
    assert info.num_ack_pending == 0 and info.num_pending == 0  # acknowledged: never shown again
    assert took < 0.9, took  # no second pull waited out (it was 1.0 s and more)


def test_clawdens_own_cards_and_notices_are_labelled_as_clawdens_not_the_agents() -> None:
    terminal = TerminalChat("terminal", "ada")
    card = msgspec.structs.replace(card_message(), kind="notice")
    assert terminal.show(card, "m1").startswith("clawden> The agent asks:")
    error = ev.OutboundMessage(id="s-1:failed-2", route=ROUTE, text="Sorry", agent_group="main", kind="error")
    assert terminal.show(error, "m2") == "clawden> Sorry"


def test_a_card_whose_text_is_its_own_words_prints_them_once() -> None:
    card = ev.Card(
        title="Let agent main POST api.example.test/pay?",
        body="POST https://api.example.test/pay",
        buttons=(ev.Button(id="approve", label="Approve"), ev.Button(id="deny", label="Deny")),
    )
    approval = ev.OutboundMessage(id="ap-1", route=ROUTE, text=f"{card.title}\n\n{card.body}", card=card, kind="notice")

    shown = TerminalChat("terminal", "ada").show(approval, "m1")

    assert shown.count("Let agent main POST") == 1 and shown.count("https://api.example.test/pay") == 1, shown


def test_a_decided_card_shows_only_its_outcome_not_the_card_again() -> None:
    terminal = TerminalChat("terminal", "ada")
    card = ev.Card(
        title="Allow GitHub?", body="GET api.github.com/user", buttons=(ev.Button(id="approve", label="Approve"),)
    )
    terminal.show(
        ev.OutboundMessage(
            id="ap-1", route=ROUTE, text="Allow GitHub?\n\nGET api.github.com/user", card=card, kind="notice"
        ),
        "m1",
    )
    decided = ev.Card(title=card.title, body=f"{card.body}\n\n✅ Approved by local:ada")

    shown = terminal.show(
        ev.OutboundEdit(
            id="ap-1:approved",
            route=ROUTE,
            target_message_id="m1",
            text=f"{decided.title}\n\n{decided.body}",
            card=decided,
        ),
        "m1",
    )

    assert shown == "clawden> (edited) ✅ Approved by local:ada"
