"""The real Telegram bridge process (`clawden run channel@telegram`) against the fake Bot API, and a bus
client that publishes outbound events and reads what the bridge published."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar, Self

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from clawden import setup
from clawden.bus import connect, ensure_streams, publish, subjects
from clawden.bus import events as ev
from services.channels.bridge import Bridge, BridgeStats, Inbound
from services.channels.service import _listen_forever
from services.channels.state import BridgeState
from tests.fakes.telegram import FakeTelegram

OutboundEvent = ev.OutboundMessage | ev.OutboundEdit | ev.OutboundReaction | ev.Typing


class ChannelProcess:
    """One bridge process (`clawden run channel@<channel>`), its settings and credentials given as the
    `CLAWDEN_<CHANNEL>_*` variables a unit would get; start() waits until it is READY (systemd notify),
    like the supervisor does."""

    channel: ClassVar[str]

    def __init__(self, home: Path, nats_url: str, **settings: str) -> None:
        self.home = home
        self.nats_url = nats_url
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "logs" / f"{self.channel}-bridge.log"
        self._mark = 0
        setup.init(home)

    def credentials(self) -> dict[str, str]:
        """The variables that point the bridge at its server and log it in."""
        return {}

    def env(self) -> dict[str, str]:
        env = dict(os.environ, CLAWDEN_HOME=str(self.home), CLAWDEN_NATS_URL=self.nats_url, **self.credentials())
        env.update({f"CLAWDEN_{self.channel.upper()}_{k.upper()}": v for k, v in self.settings.items()})
        env.pop("NOTIFY_SOCKET", None)
        return env

    def spawn(self, env: dict[str, str] | None = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clawden", "run", f"channel@{self.channel}"],
                env=env or self.env(),
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def ready(self) -> bool:
        return f"channel@{self.channel} ready" in self.output()[self._mark :]

    def not_ready(self) -> str:
        return f"the {self.channel} bridge did not get ready:\n{self.output()}"

    def start(self, *, wait: bool = True, env: dict[str, str] | None = None) -> Self:
        self.spawn(env)
        if wait:
            wait_for(self.ready, 30, self.not_ready)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def mark(self) -> None:
        """Later readiness checks look only at output after this point (for restarts)."""
        self._mark = len(self.output())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.mark()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class BridgeProcess(ChannelProcess):
    """The Telegram bridge against the fake Bot API."""

    channel = "telegram"

    def __init__(self, home: Path, nats_url: str, fake: FakeTelegram, **settings: str) -> None:
        self.fake = fake
        super().__init__(home, nats_url, **({"poll_timeout": "2", "poll_grace": "2"} | settings))

    def credentials(self) -> dict[str, str]:
        return {"CLAWDEN_TELEGRAM_TOKEN": self.fake.token, "CLAWDEN_TELEGRAM_API_URL": self.fake.url}


@contextlib.asynccontextmanager
async def listening(bridge: Bridge, js: JetStreamContext, home: Path) -> AsyncIterator[tuple[Inbound, BridgeStats]]:
    """A bridge's listener run in this process as the bridge's process runs it (`_listen_forever`), for a test that
    changes what a process is not told from outside, such as `deaf_after`."""
    state = await BridgeState.open(home / f"{bridge.name}.db")
    stats = BridgeStats()
    stopping = asyncio.Event()
    inbound = Inbound(js, bridge.name, state, home / "files", stats)
    inbound.bridge = bridge  # the bridge whose `fetch_file` fetches what people send
    listener = asyncio.create_task(_listen_forever(bridge, inbound, stopping, stats))
    try:
        yield inbound, stats
    finally:
        stopping.set()
        await asyncio.wait_for(listener, 10)
        await bridge.close()
        await state.close()


def wait_for(condition: Callable[[], bool], timeout: float, message: Callable[[], str] | str = "timed out") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(0.05)


async def until(condition: Callable[[], bool], timeout: float, message: Callable[[], str] | str = "timed out") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        await asyncio.sleep(0.05)


class Bus:
    """The bus side of a test on one channel's subjects: publishes outbound events, reads inbound events and
    receipts (with headers)."""

    channel: ClassVar[str] = "telegram"

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()

    @classmethod
    async def open(cls, url: str) -> Self:
        bus = cls(await connect(url, "test-bus"))
        await ensure_streams(bus.js)
        return bus

    async def close(self) -> None:
        await self.nc.close()

    async def send(
        self,
        chat_id: int | str,
        text: str,
        *,
        id: str,
        card: ev.Card | None = None,
        reply_to: str | None = None,
        files: tuple[str, ...] = (),
        thread_id: str | None = None,
        seq: int = 0,
        session_id: str = "",
    ) -> ev.OutboundMessage:
        event = ev.OutboundMessage(
            id=id,
            route=ev.Route(channel=self.channel, chat_id=str(chat_id), thread_id=thread_id),
            text=text,
            card=card,
            reply_to=reply_to,
            files=files,
            seq=seq,
            session_id=session_id,
        )
        await publish(self.js, subjects.outbound(self.channel, str(chat_id)), event, msg_id=event.id)
        return event

    async def publish(self, event: OutboundEvent, msg_id: str) -> None:
        """To the chat's lane."""
        await publish(self.js, subjects.outbound(self.channel, event.route.chat_id), event, msg_id=msg_id)

    async def stored(self, subject: str) -> list[tuple[dict[str, str], Any]]:
        """Every message JetStream holds on `subject`, oldest first, decoded, with its headers."""
        stream = "CLAWDEN_INBOUND" if ".inbound." in subject else "CLAWDEN_RECEIPTS"
        info = await self.js.stream_info(stream)
        if not info.state.messages:
            return []
        sub = await self.js.pull_subscribe(
            subject, stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0)
        )
        out: list[tuple[dict[str, str], Any]] = []
        try:
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=0.5)
                except TimeoutError:
                    break
                for m in msgs:
                    out.append((dict(m.headers or {}), ev.decode(m.data)))
                    await m.ack()
        finally:
            await sub.unsubscribe()
        return out

    async def inbound(self) -> list[Any]:
        return [e for _, e in await self.stored(subjects.inbound(self.channel))]

    async def receipts(self) -> list[ev.DeliveryReceipt]:
        return [e for _, e in await self.stored(subjects.receipt(self.channel))]

    async def wait_receipts(self, count: int, timeout: float = 30, final: bool = True) -> list[ev.DeliveryReceipt]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in await self.receipts() if r.final == final]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} receipts arrived: {found[-3:]}")
            await asyncio.sleep(0.2)
