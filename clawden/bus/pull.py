"""Pulling a JetStream consumer that hands over whatever has arrived, at once.

nats-py's `fetch(batch=N)` holds a lone message until the batch fills or its timeout passes (up to a
second here), so an idle router would add that to a reply. This keeps one pull request open and
returns messages as they land: one at a time when quiet, hundreds per batch under a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from clawden.bus.streams import Consumer, given_up

log = logging.getLogger("clawden.bus")

# Status codes JetStream sends on a pull request's inbox: the request is over (no messages, timed
# out, or refused, e.g. max ack pending); 100 is an idle heartbeat.
_REQUEST_OVER = {"404", "408", "409"}

# Each connection's open pulls, so a reconnect renews them all (`renew_all`); weak, so a dropped pull is forgotten.
_pulls: weakref.WeakKeyDictionary[Client, weakref.WeakSet[Puller]] = weakref.WeakKeyDictionary()


def renew_all(nc: Client) -> None:
    """The connection is back: every pull request it had went with the old one, so each is made again now instead
    of at its expiry (a consumer would otherwise sit idle for up to `expires` after a NATS restart)."""
    for puller in list(_pulls.get(nc, ())):
        puller.renew()


class Puller:
    def __init__(self, nc: Client, consumer: Consumer, *, batch: int, expires: float = 5.0) -> None:
        self.nc = nc
        self.consumer = consumer
        self.batch = batch
        self.expires = expires
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._given_up_sub: Subscription | None = None
        self.given_up = 0  # messages JetStream gave up on after max_deliver deliveries (each logged)
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        self._outstanding = 0  # messages the open request may still bring
        self._deadline = 0.0

    async def start(self) -> None:
        """Subscribe the inbox; the durable must exist already (`bind` or `ensure_consumer`)."""
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        self._given_up_sub = await self.nc.subscribe(given_up(self.consumer), cb=self._on_given_up)
        _pulls.setdefault(self.nc, weakref.WeakSet()).add(self)

    async def stop(self) -> None:
        _pulls.get(self.nc, weakref.WeakSet()).discard(self)
        for sub in (self._sub, self._given_up_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _on_given_up(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq, deliveries = int(advisory["stream_seq"]), int(advisory["deliveries"])
        except (ValueError, KeyError, TypeError):
            seq, deliveries = 0, 0
        self.given_up += 1
        log.error(
            "%s gave up on message %d of %s after %d deliveries: it is not handled, and is left in the stream",
            self.consumer.durable,
            seq,
            self.consumer.stream,
            deliveries,
            extra={"durable": self.consumer.durable, "stream_seq": seq},
        )

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None:
            if status in _REQUEST_OVER:
                self._outstanding = 0
                self._arrived.set()
            return
        self._buffer.append(msg)
        self._outstanding -= 1
        self._arrived.set()

    def renew(self) -> None:
        """The open request is gone (the connection to the server was lost and is back): the next `next` makes a new
        one at once instead of at the old one's expiry, and one waiting now returns to make it. A request the server
        still holds (only the connection blinked) may then bring a second batch; `next` keeps it for later."""
        self._outstanding = 0
        self._arrived.set()

    async def _request(self) -> None:
        self._outstanding = self.batch
        # A request lost with a reconnect is renewed at once by `renew_all` (a connection from `bus.connect`), else
        # after its expiry.
        self._deadline = time.monotonic() + self.expires + 1.0
        request = {"batch": self.batch, "expires": int(self.expires * 1e9)}
        await self.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.consumer.stream}.{self.consumer.durable}",
            json.dumps(request).encode(),
            reply=self._inbox,
        )

    async def next(self, timeout: float = 1.0) -> list[Msg]:
        """What has arrived (at most `batch`), waiting up to `timeout` for the first; [] if none came."""
        if not self._buffer:
            if self._outstanding <= 0 or time.monotonic() > self._deadline:
                await self._request()
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        taken, self._buffer = self._buffer[: self.batch], self._buffer[self.batch :]
        return taken
