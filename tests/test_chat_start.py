"""`clawden chat` starting while Clawden goes away: the moment between the router's answer to its ping and the set-up
of its replies' durable. It waits for Clawden and sets up then; a set-up that fails with Clawden there ends in one
line."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from clawden import chat as chat_mod
from clawden import natsserver, setup
from clawden.bus import Consumer, bind, ensure_streams, publish_stored, subjects
from clawden.bus import events as ev
from clawden.bus.pull import Puller
from clawden.chat import BACK, LOST, chat, terminal_outbound
from clawden.config import Config
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.test_chat import ROUTE, chat_home, router  # noqa: F401 - `router` is a fixture


def home_on(tmp_path: Path, nats_server: NatsServer) -> Config:
    cfg = setup.init(tmp_path / "home")
    return msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=nats_server.url))


async def test_a_chat_whose_clawden_goes_as_it_starts_waits_for_it_and_gets_its_answer(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`clawden up` killed just after the router answered the chat's ping, before its durable is set up, and started
    again only once that set-up has failed on the dead connection. The chat used to die there with a traceback."""
    cfg = home_on(tmp_path, nats_server)
    js = nc.jetstream()
    await ensure_streams(js)
    inbound = await js.subscribe(subjects.inbound("local"))
    said: list[str] = []

    def err() -> str:
        said.append(capsys.readouterr().err)
        return "".join(said)

    tries = 0

    async def set_up_as_clawden_goes(js: JetStreamContext, consumer: Consumer, *, batch: int = 16) -> Puller:
        nonlocal tries
        tries += 1
        if tries > 1:
            return await bind(js, consumer, batch=batch)
        nats_server.proc.kill()
        await asyncio.to_thread(nats_server.proc.wait)
        await eventually(lambda: LOST in err(), 10, err)  # the chat knows, before it tries
        try:
            return await bind(js, consumer, batch=batch)
        finally:
            nats_server.proc = await asyncio.to_thread(natsserver.start, nats_server.port, nats_server.store)

    monkeypatch.setattr(chat_mod, "bind", set_up_as_clawden_goes)
    out = io.StringIO()
    session = asyncio.create_task(chat(cfg, once="hello", timeout=20, stdout=out))
    received = asyncio.ensure_future(inbound.next_msg(timeout=30))
    await asyncio.wait({received, session}, return_when=asyncio.FIRST_COMPLETED)
    assert not session.done(), f"the chat ended at its start: {session.result()}"  # result() raises what killed it
    sent = ev.decode((await received).data)
    assert isinstance(sent, ev.InboundMessage) and sent.text == "hello"
    answer = ev.OutboundMessage(id="s-1:answer", route=ROUTE, text="hi there", answering=sent.message_id)
    await publish_stored(js, subjects.outbound("local", ROUTE.chat_id), answer, msg_id=answer.id)

    assert await asyncio.wait_for(session, 30) == 0
    assert out.getvalue() == "clawden> hi there\n"
    assert err() == f"{LOST}\n{BACK}\n" and tries == 2, (err(), tries)


async def test_a_chat_whose_replies_cannot_be_set_up_says_so_in_one_line(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,  # noqa: F811
) -> None:
    """Clawden there, and the set-up refused: here the terminal's durable was made by something else with a policy the
    server will not change. The chat ends in one line naming the cause, not a traceback."""
    env, _ = await chat_home(tmp_path, nats_server, nc)
    theirs = terminal_outbound("terminal")
    config = ConsumerConfig(
        durable_name=theirs.durable, deliver_policy=DeliverPolicy.ALL, filter_subject=theirs.filter_subject
    )
    await nc.jetstream().add_consumer(theirs.stream, config)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clawden",
        "chat",
        "--once",
        "hello",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)

    assert proc.returncode == 1 and out == b"", (proc.returncode, out, err)
    lines = err.decode().splitlines()
    assert lines == [
        "clawden: Clawden did not set up this chat's replies (deliver policy can not be updated);"
        " `clawden status` shows whether it runs well"
    ], err
