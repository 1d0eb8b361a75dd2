"""The front door as a plain ASGI app: route, limit, read the body within bounds, verify, hand off.

Nothing is parsed before the platform's proof is checked, and nothing is answered 200 before the
hand-off (`Publish`, JetStream in the service) has the delivery: a 503 makes the platform retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from clawden.bus import webhooks
from services.webhooks import verify
from services.webhooks.limits import RateLimit

log = logging.getLogger("clawden.webhooks")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
PREFIX = "/hooks/"


class HandOffFailed(Exception):
    """The delivery could not be stored (NATS away, JetStream slow): the platform must retry."""


# channel, delivery, Nats-Msg-Id -> True when it was new, False for a duplicate; raises HandOffFailed.
Publish = Callable[[str, webhooks.WebhookDelivery, str], Awaitable[bool]]


@dataclass(frozen=True)
class Route:
    channel: str
    scheme: str
    secret: bytes  # Meta: the app secret
    verify_token: str


@dataclass(frozen=True)
class Limits:
    max_body: int = 1 << 20
    rate: float = 50.0
    burst: int = 200
    body_timeout: float = 10.0
    forwarded_for: bool = False


@dataclass
class Counters:
    accepted: int = 0
    duplicates: int = 0
    refused: int = 0  # 400/401/403/404/405/408/413/429
    unavailable: int = 0  # 503: the hand-off failed
    by_channel: dict[str, int] = field(default_factory=dict)


class TooLarge(Exception):
    pass


class FrontDoor:
    def __init__(
        self, routes: dict[str, Route], publish: Publish, limits: Limits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.routes = routes
        self.publish = publish
        self.limits = limits
        self.rate = RateLimit(limits.rate, limits.burst)
        self.clock = clock
        self.counters = Counters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        status, body, headers = await self._handle(scope, receive)
        if status == 200:
            pass
        elif status == 503:
            self.counters.unavailable += 1
        else:
            self.counters.refused += 1
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        source = self._source(scope)
        wait = self.rate.take(source, self.clock())
        if wait > 0:
            log.warning(
                "webhook from %s refused: over %.0f requests/s", source, self.limits.rate, extra={"source": source}
            )
            return 429, b"too many requests\n", [(b"retry-after", str(max(1, round(wait))).encode())]
        path: str = scope["path"]
        channel, _, rest = path.removeprefix(PREFIX).partition("/") if path.startswith(PREFIX) else ("", "", "")
        route = self.routes.get(channel)
        if route is None:
            log.warning("webhook for %s from %s refused: no such route", path[:200], source, extra={"source": source})
            return 404, b"no such webhook\n", []
        if scope["method"] == "GET":
            return self._handshake(route, scope, source)
        if scope["method"] != "POST":
            return 405, b"method not allowed\n", [(b"allow", b"GET, POST")]
        return await self._delivery(route, rest, scope, receive, source)

    def _source(self, scope: Scope) -> str:
        if self.limits.forwarded_for:
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    return str(value.decode("latin-1").rsplit(",", 1)[-1].strip())
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    def _handshake(self, route: Route, scope: Scope, source: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        status, text = verify.meta_handshake(query, route.verify_token)
        if status == 200:
            log.info(
                "%s webhook subscription verified (from %s)",
                route.channel,
                source,
                extra={"channel": route.channel, "source": source},
            )
            return 200, text.encode(), []
        log.warning(
            "%s webhook handshake from %s refused: %s",
            route.channel,
            source,
            text,
            extra={"channel": route.channel, "source": source},
        )
        return status, text.encode() + b"\n", []

    async def _delivery(
        self, route: Route, rest: str, scope: Scope, receive: Receive, source: str
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

        def refuse(status: int, reason: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
            log.warning(
                "%s webhook from %s refused (%d): %s",
                route.channel,
                source,
                status,
                reason,
                extra={"channel": route.channel, "source": source},
            )
            return status, reason.encode() + b"\n", []

        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limits.max_body):
            return refuse(
                413 if length.isdigit() else 400,
                f"body of {length[:20]} bytes is over the limit of {self.limits.max_body}"
                if length.isdigit()
                else "bad Content-Length",
            )
        signature = headers.get(verify.SIGNATURE_HEADER)
        if not signature:  # unsigned: refused before its body is read
            return refuse(401, "no X-Hub-Signature-256 header")
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await self._read_body(receive)
        except TooLarge:
            return refuse(413, f"body over the limit of {self.limits.max_body} bytes")
        except TimeoutError:
            return refuse(408, f"body not received within {self.limits.body_timeout:.0f}s")
        refusal = verify.check_meta_signature(route.secret, body, signature)
        if refusal is not None:
            return refuse(refusal.status, refusal.reason)
        try:  # signed by the platform, yet not what it sends: keep it from the bridge all the same
            msgspec.json.decode(body, type=dict[str, Any])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return refuse(400, "body is not a JSON object")
        return await self._hand_off(route, rest, body)

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise TimeoutError  # gone mid-body: treated as a client that never finished
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body:
                raise TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _hand_off(self, route: Route, rest: str, body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        delivery = webhooks.WebhookDelivery(channel=route.channel, path=rest, received_at=time.time(), body=body)
        msg_id = webhooks.msg_id(route.channel, body)
        try:
            new = await self.publish(route.channel, delivery, msg_id)
        except HandOffFailed as exc:
            log.error(
                "%s webhook not stored, answered 503 so the platform retries: %s",
                route.channel,
                exc,
                extra={"channel": route.channel},
            )
            return 503, b"try again later\n", [(b"retry-after", b"5")]
        if new:
            self.counters.accepted += 1
            self.counters.by_channel[route.channel] = self.counters.by_channel.get(route.channel, 0) + 1
        else:
            self.counters.duplicates += 1
        return 200, b"ok\n", []
