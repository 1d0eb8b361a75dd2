"""`clawden chat` outlives a restart of `clawden up` (its NATS server with it): it says once that Clawden went and
once that it is back, a line typed meanwhile reaches the stream once, and `--once` still gets its answer."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from clawden import natsserver, setup
from clawden.bus import ensure_streams, publish_stored, subjects
from clawden.bus import events as ev
from clawden.chat import BACK, LOST, chat
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.test_chat import ROUTE, Pty, chat_home, router  # noqa: F401 - `router` is a fixture

# As long as `clawden up` was away when the chat used to die: the old chat gave up after three reconnect tries
# (about two seconds), so this is the outage itself, not a wait for something to happen.
OUTAGE = 4.0


async def killed_and_back(nats_server: NatsServer, *, meanwhile: float = OUTAGE) -> None:
    """`clawden up` SIGKILLed with its NATS server, and started again on the same port and store."""
    nats_server.proc.kill()
    await asyncio.to_thread(nats_server.proc.wait)
    await asyncio.sleep(meanwhile)
    nats_server.proc = await asyncio.to_thread(natsserver.start, nats_server.port, nats_server.store)


async def stored_texts(nc: Client) -> list[str]:
    """Every chat message the inbound stream holds, in order."""
    js = nc.jetstream()
    info = await js.stream_info("CLAWDEN_INBOUND")
    texts = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        event = ev.decode((await js.get_msg("CLAWDEN_INBOUND", seq)).data or b"")
        assert isinstance(event, ev.InboundMessage)
        texts.append(event.text)
    return texts


async def chat_left_by_clawden(tmp_path: Path, nats_server: NatsServer, nc: Client) -> Pty:
    """An open chat in a terminal whose NATS server was then killed, once it said Clawden went."""
    env, _ = await chat_home(tmp_path, nats_server, nc)
    term = Pty({**env, "TERM": "xterm"})
    await asyncio.to_thread(term.wait_for, b"you> ")
    nats_server.proc.kill()
    await asyncio.to_thread(nats_server.proc.wait)
    await asyncio.to_thread(term.wait_for, LOST.encode())
    return term


async def test_an_open_chat_says_when_clawden_goes_and_comes_back_and_sends_what_was_typed_meanwhile_once(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,  # noqa: F811
) -> None:
    term = await chat_left_by_clawden(tmp_path, nats_server, nc)
    try:
        await asyncio.sleep(OUTAGE)
        term.write(b"typed while away\r")
        await asyncio.to_thread(term.wait_for, b"this is sent when it is back")
        nats_server.proc = await asyncio.to_thread(natsserver.start, nats_server.port, nats_server.store)
        await asyncio.to_thread(term.wait_for, f"{BACK}\r\nyou> ".encode())
        await eventually(lambda: _holds(nc, ["typed while away"]), 20)

        term.write(b"typed after\r")
        await eventually(lambda: _holds(nc, ["typed while away", "typed after"]), 20)
        term.write(b"/exit\r")
        assert await asyncio.to_thread(term.exit_code) == 0
    finally:
        await asyncio.to_thread(term.close)

    assert await stored_texts(nc) == ["typed while away", "typed after"]  # each once, though tried many times
    assert term.seen.count(LOST.encode()) == 1 and term.seen.count(f"{BACK}\r\nyou> ".encode()) == 1, term.seen
    assert b"Traceback" not in term.seen and b"not sent" not in term.seen, term.seen


async def _holds(nc: Client, texts: list[str]) -> bool:
    return await stored_texts(nc) == texts


async def test_once_prints_its_answer_when_it_comes_after_clawden_was_restarted(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`clawden chat --once 'slow one'` while `clawden up` is SIGKILLed and started again: the turn runs again and
    its answer lands in the terminal's durable after the restart, and `--once` prints it. It used to stay silent
    until its timeout, its connection closed for good."""
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=nats_server.url))
    js = nc.jetstream()
    await ensure_streams(js)
    inbound = await js.subscribe(subjects.inbound("local"))
    out = io.StringIO()
    session = asyncio.create_task(chat(cfg, once="slow one", timeout=20, stdout=out))
    sent = ev.decode((await inbound.next_msg(timeout=15)).data)
    assert isinstance(sent, ev.InboundMessage) and sent.text == "slow one"
    await inbound.unsubscribe()

    await killed_and_back(nats_server)
    answer = ev.OutboundMessage(id="s-1:answer", route=ROUTE, text="the slow answer", answering=sent.message_id)
    await publish_stored(js, subjects.outbound("local", ROUTE.chat_id), answer, msg_id=answer.id)

    assert await asyncio.wait_for(session, 30) == 0
    assert out.getvalue() == "clawden> the slow answer\n"
    err = capsys.readouterr().err
    assert err == f"{LOST}\n{BACK}\n", err


class GoneStderr(io.StringIO):
    """The stderr of `clawden chat --once ... 2>&1 | head -1` once `head` has left."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_once_gets_its_answer_after_a_restart_though_its_lost_and_back_lines_cannot_be_written(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chat hears of the restart through the callbacks it connects with, which never raise: a line it cannot
    write is not the connection's end. It used to chain its lines onto nats-py's private callbacks itself, where the
    failed write stopped the reconnecting (nats.py#204) and the answer never came."""
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=nats_server.url))
    js = nc.jetstream()
    await ensure_streams(js)
    inbound = await js.subscribe(subjects.inbound("local"))
    monkeypatch.setattr(sys, "stderr", GoneStderr())
    out = io.StringIO()
    session = asyncio.create_task(chat(cfg, once="slow one", timeout=15, stdout=out))
    sent = ev.decode((await inbound.next_msg(timeout=15)).data)
    assert isinstance(sent, ev.InboundMessage)

    await killed_and_back(nats_server, meanwhile=0.0)
    answer = ev.OutboundMessage(id="s-1:answer", route=ROUTE, text="the slow answer", answering=sent.message_id)
    await publish_stored(js, subjects.outbound("local", ROUTE.chat_id), answer, msg_id=answer.id)

    assert await asyncio.wait_for(session, 30) == 0
    assert out.getvalue() == "clawden> the slow answer\n"


async def test_ctrl_c_while_a_typed_line_waits_for_clawden_says_it_was_not_sent(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,  # noqa: F811
) -> None:
    term = await chat_left_by_clawden(tmp_path, nats_server, nc)
    try:
        await asyncio.sleep(OUTAGE)
        term.write(b"never sent\r")
        await asyncio.to_thread(term.wait_for, b"this is sent when it is back")

        term.write(b"\x03")
        assert await asyncio.to_thread(term.exit_code) == 130
    finally:
        await asyncio.to_thread(term.close)

    assert term.seen.endswith(b"(not sent: Clawden was away)\r\n\x1b[?2004l") and b"Traceback" not in term.seen, (
        term.seen
    )


async def test_ctrl_d_while_clawden_is_away_leaves_quietly(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,  # noqa: F811
) -> None:
    term = await chat_left_by_clawden(tmp_path, nats_server, nc)
    try:
        await asyncio.sleep(OUTAGE)

        term.write(b"\x04")
        assert await asyncio.to_thread(term.exit_code) == 0
    finally:
        await asyncio.to_thread(term.close)

    assert b"Traceback" not in term.seen, term.seen
