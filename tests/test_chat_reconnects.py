"""How `clawden chat` connects and comes back: its first connect gives up after a few tries, its connection then
reconnects without limit, a restart during its router ping is said as Clawden's going, and its pull for replies,
lost with the restart, is asked again as soon as Clawden is back."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from clawden import chat as chat_mod
from clawden import natsserver, setup
from clawden.bus import Consumer, bind, ensure_streams, publish_stored, subjects
from clawden.bus import events as ev
from clawden.bus.ctl.common import PING, Pong
from clawden.bus.pull import Puller
from clawden.chat import BACK, LOST, chat
from clawden.control import ControlError
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.test_chat import ROUTE, router  # noqa: F401 - `router` is a fixture
from tests.test_chat_restarts import killed_and_back
from tests.test_chat_start import home_on


async def test_a_chat_started_without_clawden_gives_up_after_its_few_tries_in_one_line(tmp_path: Path) -> None:
    """Nothing listens on the port: the chat says so once its few tries have failed (nats-py's NoServersError), not
    when a wait for the connection runs out; though once in, it would wait for Clawden without limit."""
    cfg = setup.init(tmp_path / "home")
    url = f"nats://127.0.0.1:{natsserver.free_port()}"
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=url))

    with pytest.raises(ControlError) as said:
        await asyncio.wait_for(chat(cfg, once="hello"), 30)

    assert str(said.value).splitlines()[0] == f"cannot reach NATS at {url} (NoServersError)", said.value


async def test_the_chat_asks_nats_py_for_unlimited_reconnects_when_it_connects(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The limit is given to `connect`, where nats-py documents it, not raised afterwards in the client's options,
    which nats-py does not promise to read again at each try."""
    asked: list[object] = []
    connect = Client.connect

    async def connect_seen(self: Client, *args: Any, **options: Any) -> None:
        asked.append(options.get("max_reconnect_attempts"))
        await connect(self, *args, **options)
        asked.append(self.options["max_reconnect_attempts"])

    monkeypatch.setattr(Client, "connect", connect_seen)
    js = nc.jetstream()
    await ensure_streams(js)
    inbound = await js.subscribe(subjects.inbound("local"))
    session = asyncio.create_task(chat(home_on(tmp_path, nats_server), once="hello", timeout=20, stdout=io.StringIO()))
    sent = ev.decode((await inbound.next_msg(timeout=15)).data)
    assert isinstance(sent, ev.InboundMessage)
    answer = ev.OutboundMessage(id="s-1:answer", route=ROUTE, text="hi", answering=sent.message_id)
    await publish_stored(js, subjects.outbound("local", ROUTE.chat_id), answer, msg_id=answer.id)

    assert await asyncio.wait_for(session, 30) == 0
    assert asked == [-1, -1], asked


def pong() -> bytes:
    return msgspec.json.encode(Pong(service="router", pid=os.getpid(), uptime=1.0, ready=True, stats={}))


async def test_clawden_lost_during_the_router_ping_is_said_as_lost_and_back_not_as_a_slow_router(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`clawden up` killed and started again while the chat's ping to the router is on its way: the ping is lost
    with it. The chat says that Clawden went and is back, asks the router again, and goes on to its answer. It used
    to blame the router ("slow to answer") for Clawden's restart."""
    pings: list[Msg] = []
    pinged = asyncio.Event()

    async def router_after_the_first_ping(msg: Msg) -> None:
        pings.append(msg)
        pinged.set()
        if len(pings) > 1:  # the first is lost with the server
            await msg.respond(pong())

    await nc.subscribe(PING.at("router").subject, cb=router_after_the_first_ping)
    js = nc.jetstream()
    await ensure_streams(js)
    said: list[str] = []

    def err() -> str:
        said.append(capsys.readouterr().err)
        return "".join(said)

    out = io.StringIO()
    session = asyncio.create_task(chat(home_on(tmp_path, nats_server), once="hello", timeout=20, stdout=out))
    await asyncio.wait_for(pinged.wait(), 15)
    await killed_and_back(nats_server, meanwhile=0.0)
    sent = await eventually(lambda: last_inbound(js), 30, err)
    answer = ev.OutboundMessage(id="s-1:answer", route=ROUTE, text="hi there", answering=sent.message_id)
    await publish_stored(js, subjects.outbound("local", ROUTE.chat_id), answer, msg_id=answer.id)

    assert await asyncio.wait_for(session, 30) == 0
    assert out.getvalue() == "clawden> hi there\n"
    assert err() == f"{LOST}\n{BACK}\n" and len(pings) == 2, (err(), len(pings))


async def last_inbound(js: JetStreamContext) -> ev.InboundMessage | None:
    """The chat message the inbound stream holds last, once it holds one."""
    try:
        stored = await js.get_last_msg("CLAWDEN_INBOUND", subjects.inbound("local"))
    except Exception:  # none yet, or the server still coming back
        return None
    event = ev.decode(stored.data or b"")
    return event if isinstance(event, ev.InboundMessage) else None


async def test_a_reply_right_after_a_restart_is_shown_at_once_not_when_the_lost_pull_expires(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Client,
    router: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The chat's pull for replies is lost with the server. It is asked again as soon as the chat is back, so a reply
    stored right after the restart is shown then. Here the pull's expiry is made longer than the chat's wait: a pull
    renewed only when it expires (as it used to be, after about six seconds) would leave the chat without its answer."""

    async def bind_long(js: JetStreamContext, consumer: Consumer, *, batch: int = 16) -> Puller:
        puller = await bind(js, consumer, batch=batch)
        puller.expires = 600.0
        return puller

    monkeypatch.setattr(chat_mod, "bind", bind_long)
    js = nc.jetstream()
    await ensure_streams(js)
    inbound = await js.subscribe(subjects.inbound("local"))
    out = io.StringIO()
    session = asyncio.create_task(chat(home_on(tmp_path, nats_server), once="hello", timeout=20, stdout=out))
    sent = ev.decode((await inbound.next_msg(timeout=15)).data)
    assert isinstance(sent, ev.InboundMessage)
    await inbound.unsubscribe()
    said: list[str] = []

    def err() -> str:
        said.append(capsys.readouterr().err)
        return "".join(said)

    await killed_and_back(nats_server, meanwhile=0.0)
    await eventually(lambda: BACK in err(), 15, err)
    answer = ev.OutboundMessage(id="s-1:answer", route=ROUTE, text="the answer", answering=sent.message_id)
    await publish_stored(js, subjects.outbound("local", ROUTE.chat_id), answer, msg_id=answer.id)

    assert await asyncio.wait_for(session, 30) == 0, out.getvalue()
    assert out.getvalue() == "clawden> the answer\n"
