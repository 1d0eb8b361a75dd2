"""Connecting to NATS, publishing with a natural dedupe key, and the durable consume loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import AuthorizationError, NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck
from nats.js.errors import NoStreamResponseError

from clawden.backoff import backoff
from clawden.bus import events
from clawden.bus.pull import Puller, renew_all
from clawden.bus.streams import Consumer, ensure_consumer

log = logging.getLogger("clawden.bus")
E = TypeVar("E")


def inbox_prefix(name: str) -> str:
    """Replies to `name` arrive under this prefix only: with per-service NATS permissions, no other
    identity may subscribe to it (natsauth.py)."""
    return f"_INBOX_{name.replace('@', '_')}"


def server_list(url: str | Sequence[str]) -> list[str]:
    """One server, a cluster's servers comma-separated (`Config.nats_url`), or a list: each once, in order."""
    given = url.split(",") if isinstance(url, str) else url
    return list(dict.fromkeys(u.strip() for u in given if u.strip()))


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Trust only the cluster's own CA (`clawden cluster init` writes it), not the system's roots."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Watcher(Protocol):
    """Told, after the log line, that the connection was lost (not by its own close or drain) or is back."""

    async def lost(self) -> None: ...

    async def back(self) -> None: ...


async def _tell(watcher: Watcher | None, *, lost: bool) -> None:
    if watcher is None:
        return
    try:
        await (watcher.lost() if lost else watcher.back())
    except Exception as exc:  # it must not stop the reconnecting, as a raising callback would (nats.py#204)
        log.error("a connection watcher failed: %r", exc)


async def connect(
    url: str | Sequence[str],
    name: str,
    *,
    ca_file: str = "",
    watcher: Watcher | None = None,
    first_tries: int = 0,
    **options: Any,
) -> Client:
    """Connect with reconnect-forever, a private inbox prefix, and callbacks that never raise.

    `url` is one server or a cluster's servers (a list, or comma-separated): every one goes to the client,
    which moves to another when the one it uses goes away. `ca_file` turns on TLS toward servers whose
    certificates that CA signed (a cluster off loopback).

    A server that is not up yet is waited for; one that refuses our credentials is not: that
    raises `AuthorizationError` at once instead of retrying forever. `first_tries` bounds the wait
    for the first connect only (a command that says at once that NATS is not running): after that
    many failed tries it raises nats-py's `NoServersError`, and once connected it reconnects forever.

    `watcher` is told of each loss and return through the same callbacks (a client that shows them, `clawden chat`).
    """
    servers = server_list(url)
    url = ",".join(servers)
    nc = Client()
    refused, given_up = asyncio.Event(), asyncio.Event()
    failed = 0  # tries that did not connect (nats-py reports each to error_cb)

    # Logging never raises (handler errors go to handleError), which matters: a raising callback
    # stops nats-py from reconnecting (nats.py#204).
    async def on_error(exc: Exception) -> None:
        nonlocal failed
        log.warning("nats error: %s", exc)
        if nc.is_connected:
            return
        if "authorization violation" in str(exc).lower():
            refused.set()
        failed += 1
        if failed == first_tries:
            given_up.set()

    async def on_disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats disconnected from %s", url)
            await _tell(watcher, lost=True)

    async def on_reconnected() -> None:
        log.info("nats reconnected")
        renew_all(nc)
        await _tell(watcher, lost=False)

    async def on_closed() -> None:
        log.debug("nats connection closed")

    settings: dict[str, Any] = {
        "servers": servers,
        # With a cluster, the order given is a preference list only (every client on the first server
        # would put all the load on one node); nats-py also learns the others from the servers.
        "dont_randomize": len(servers) == 1,
        "name": f"clawden-{name}",
        "inbox_prefix": inbox_prefix(name).encode(),
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "closed_cb": on_closed,
    }
    if ca_file:
        settings["tls"] = tls_context(ca_file)
    if await _first_connect(nc, settings | options, stop_on=(refused, given_up)):
        return nc
    if refused.is_set():
        raise AuthorizationError(f"NATS at {url} refused the credentials of {name!r}")
    raise NoServersError


async def _first_connect(nc: Client, settings: dict[str, Any], *, stop_on: tuple[asyncio.Event, ...]) -> bool:
    """`nc.connect`; False when one of `stop_on` was set first, and the tries were stopped and `nc` closed."""
    connecting = asyncio.ensure_future(nc.connect(**settings))
    stops = [asyncio.ensure_future(event.wait()) for event in stop_on]
    try:
        await asyncio.wait({connecting, *stops}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for stop in stops:
            stop.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            await nc.close()
    if connecting.cancelled():
        return False
    connecting.result()  # raises what a connect without retries raised
    return True


async def publish(
    js: JetStreamContext, subject: str, event: events.Event, *, msg_id: str, timeout: float = 5.0
) -> PubAck:
    """Publish durably; the natural `msg_id` makes a retry or replay a no-op inside the window."""
    return await js.publish(subject, events.encode(event), timeout=timeout, headers={Header.MSG_ID: msg_id})


async def publish_stored(
    js: JetStreamContext,
    subject: str,
    event: events.Event,
    *,
    msg_id: str,
    within: float = 60.0,
    per_try: float = 5.0,
) -> PubAck:
    """`publish`, asked again while NATS is away (a restart) or the stream has no leader to answer (a cluster
    electing one after losing a node: nats-py says NoStreamResponseError) until it is stored or `within` seconds
    have gone: for a person's typed line and the like, which has no redelivery to fall back on. The natural
    `msg_id` makes every try after the one that was stored a no-op, so nothing is lost and nothing is stored
    twice."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await publish(js, subject, event, msg_id=msg_id, timeout=per_try)
        except (NatsTimeoutError, NoRespondersError, NoStreamResponseError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # a pace while the server comes back; the msg_id keeps it exactly once


Handler = Callable[[E, Msg], Awaitable[None]]


def stored_at(msg: Msg, fallback: float) -> float:
    """When a JetStream message reached the bus, as the server stamped it (a sender's own time could say anything);
    `fallback` for a message that carries no stamp."""
    stamped = msg.metadata.timestamp
    return stamped.timestamp() if stamped else fallback


async def nak(msg: Msg) -> None:
    """Have `msg` redelivered after a backoff that grows with its deliveries (1 s, 2 s … 30 s); a nak that
    cannot be sent (NATS away) leaves the redelivery to the consumer's AckWait."""
    with contextlib.suppress(Exception):
        await msg.nak(delay=backoff(msg.metadata.num_delivered, base=0.5, cap=30.0))


@dataclass
class ConsumeStats:
    handled: int = 0
    failed: int = 0
    poisoned: int = 0
    last_error: str = ""
    extra: dict[str, int] = field(default_factory=dict)


class Retry(Exception):
    """Raised by a handler to have the message redelivered after `delay` seconds."""

    def __init__(self, reason: str, delay: float = 1.0) -> None:
        super().__init__(reason)
        self.delay = delay


async def bind(js: JetStreamContext, consumer: Consumer, *, batch: int = 16) -> Puller:
    """Create or update the durable, then open a pull on it; do this before telling systemd READY."""
    await ensure_consumer(js, consumer)
    puller = Puller(js._nc, consumer, batch=batch)  # nats-py offers no public accessor for it
    await puller.start()
    return puller


async def consume_batches(
    puller: Puller,
    handle: Callable[[list[Msg]], Awaitable[None]],
    *,
    stopping: asyncio.Event,
    until_idle: float | None = None,
) -> None:
    """The consume loop: fetch what has arrived and hand it over as one batch, until `stopping` is set;
    the batch in hand is finished first, then the pull is closed. With `until_idle`, return instead once
    a pull brings nothing for that long, and leave the pull open for the loop that follows (a startup
    drain). `handle` acks, naks or terminates each message itself."""
    try:
        while not stopping.is_set():
            asked = time.monotonic()
            try:
                msgs = await puller.next(timeout=1.0 if until_idle is None else until_idle)
            except Exception as exc:
                if stopping.is_set():
                    break
                log.warning("pull failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                if until_idle is not None:
                    return
                if time.monotonic() - asked < 0.05:
                    await asyncio.sleep(0.1)  # the server refused the pull at once (e.g. max ack pending)
                continue
            await handle(msgs)
    except BaseException:
        await puller.stop()
        raise
    await puller.stop()


async def consume(
    puller: Puller,
    kind: type[E] | msgspec.json.Decoder[E],
    handler: Handler[E],
    *,
    stopping: asyncio.Event,
    stats: ConsumeStats | None = None,
    concurrency: int = 1,
    until_idle: float | None = None,
) -> None:
    """Fetch, decode, handle, ack, in `consume_batches`'s loop (`until_idle` as there); in-flight work
    finishes first.

    The handler acks nothing itself: it returns once its effect is committed and we ack. A payload
    that does not decode is logged with its JSON path and terminated (redelivery cannot fix it).
    A handler's `Retry` is waited out holding the delivery (`_Handling.hold`).
    `kind` is an event type, or the decoder of a union of them (`events.INBOUND_DECODER`).
    """
    decoder = kind if isinstance(kind, msgspec.json.Decoder) else events.decoder_for(kind)
    handling = _Handling(puller, decoder, handler, stopping, stats or ConsumeStats(), concurrency)
    try:
        await consume_batches(puller, handling.batch, stopping=stopping, until_idle=until_idle)
    finally:
        await handling.close()


class _Handling(Generic[E]):
    def __init__(
        self,
        puller: Puller,
        decoder: msgspec.json.Decoder[E],
        handler: Handler[E],
        stopping: asyncio.Event,
        stats: ConsumeStats,
        concurrency: int,
    ) -> None:
        self.decoder = decoder
        self.handler = handler
        self.stopping = stopping
        self.stats = stats
        self.concurrency = concurrency
        self.limit = asyncio.Semaphore(concurrency)
        self.keepalive = max(0.5, puller.consumer.ack_wait / 3)  # well inside the ack wait
        self.pending: set[asyncio.Task[None]] = set()
        self.held: set[asyncio.Task[None]] = set()
        self.handing_back = asyncio.Event()

    async def batch(self, msgs: list[Msg]) -> None:
        if self.concurrency == 1:
            for msg in msgs:
                await self.handle(msg)
            return
        for msg in msgs:
            self._spawn(self.pending, self.handle(msg))

    async def close(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        self.handing_back.set()  # a stop, or the end of a startup drain: the loop after it takes them
        if self.held:
            await asyncio.gather(*self.held, return_exceptions=True)

    @staticmethod
    def _spawn(tasks: set[asyncio.Task[None]], work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def handle(self, msg: Msg) -> None:
        async with self.limit:
            try:
                event = self.decoder.decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self.stats.poisoned += 1
                self.stats.last_error = str(exc)
                log.error("dropping malformed message on %s: %s", msg.subject, exc)
                await msg.term()
                return
            await self.run(event, msg, 1)

    async def run(self, event: E, msg: Msg, attempt: int) -> None:
        try:
            await self.handler(event, msg)
        except Retry as exc:
            self.stats.failed += 1
            self.stats.last_error = str(exc)
            if attempt & (attempt - 1) == 0:  # the 1st, 2nd, 4th, 8th… wait: a long one is said, not flooded
                log.warning("retrying message on %s in %.1fs (wait %d): %s", msg.subject, exc.delay, attempt, exc)
            if self.handing_back.is_set() or self.stopping.is_set():  # to a twin, the next start or the next loop
                with contextlib.suppress(Exception):
                    await msg.nak(delay=exc.delay)
                return
            self._spawn(self.held, self.hold(event, msg, exc.delay, attempt + 1))
            return
        except Exception as exc:
            self.stats.failed += 1
            self.stats.last_error = repr(exc)
            log.exception("handler failed on %s (delivery %d)", msg.subject, msg.metadata.num_delivered)
            await nak(msg)
            return
        await msg.ack()
        self.stats.handled += 1

    async def hold(self, event: E, msg: Msg, delay: float, attempt: int) -> None:
        """A `Retry` waits here, its delivery kept alive, not as a redelivery: JetStream's max_deliver then counts
        only failures and deliveries nobody finished (a crash), and waiting out an absent vault or a locked
        folder for as long as it takes loses nothing. The loop's end hands it back with the wait that is left."""
        until = time.monotonic() + delay
        while (left := until - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.handing_back.wait(), min(left, self.keepalive))
            if self.handing_back.is_set():
                with contextlib.suppress(Exception):
                    await msg.nak(delay=max(0.0, until - time.monotonic()))
                return
            with contextlib.suppress(Exception):  # NATS away: the delivery may lapse, and comes again
                await msg.in_progress()
        async with self.limit:
            await self.run(event, msg, attempt)
