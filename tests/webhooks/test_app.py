"""The front door's ASGI app alone: how much of an oversized body it pulls, counted exactly at `receive`."""

from __future__ import annotations

from typing import Any

from clawden.bus import webhooks
from services.webhooks.app import FrontDoor, Limits, Message, Route

CHUNK = 65536


class Body:
    """An ASGI `receive` handing out `size` bytes in 64 KiB pieces, counting what the app pulled."""

    def __init__(self, size: int) -> None:
        self.size, self.pulled = size, 0

    async def __call__(self) -> Message:
        piece = min(CHUNK, self.size - self.pulled)
        self.pulled += piece
        return {"type": "http.request", "body": b"x" * piece, "more_body": self.pulled < self.size}


async def post(size: int, *, declared: bool) -> tuple[int, Body]:
    async def publish(channel: str, delivery: webhooks.WebhookDelivery, msg_id: str) -> bool:
        raise AssertionError("an oversized body must never be handed off")

    door = FrontDoor({"whatsapp": Route("whatsapp", "meta", b"secret", "token")}, publish, Limits())
    headers = [(b"x-hub-signature-256", b"sha256=" + b"0" * 64)]
    if declared:
        headers.append((b"content-length", str(size).encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/hooks/whatsapp/",
        "headers": headers,
        "client": ("127.0.0.1", 1),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: Message) -> None:
        sent.append(dict(message))

    body = Body(size)
    await door(scope, body, send)
    return sent[0]["status"], body


async def test_a_declared_oversized_body_is_refused_before_any_of_it_is_read() -> None:
    status, body = await post(10 << 20, declared=True)
    assert (status, body.pulled) == (413, 0)


async def test_an_undeclared_oversized_body_is_read_only_to_the_limit() -> None:
    status, body = await post(10 << 20, declared=False)
    assert status == 413
    assert Limits().max_body < body.pulled <= Limits().max_body + CHUNK


async def test_a_body_at_the_limit_is_read_whole() -> None:
    status, body = await post(Limits().max_body, declared=False)
    assert status == 401  # read to its end, then refused on its (wrong) signature, not its size
    assert body.pulled == Limits().max_body
