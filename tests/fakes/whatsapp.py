"""WhatsApp Cloud API as Meta runs it, for tests: webhooks signed like Meta's, sent to the front door.

`WebhookSender` builds the JSON Meta posts ("Webhooks Reference: messages" on the WhatsApp Cloud API
docs: `object`, `entry[].changes[].value` with `metadata`, `contacts`, `messages` or `statuses`),
signs it as "Webhooks: Getting Started / Validate payloads" says (X-Hub-Signature-256: sha256=<HMAC-
SHA256 of the raw body keyed by the app secret>), and can break that on purpose: unsigned, wrongly
signed, sent twice, statuses out of order, oversized (with or without a Content-Length).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

APP_SECRET = "fake-app-secret-0123456789abcdef"
VERIFY_TOKEN = "fake-verify-token"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
WABA_ID = "102290129340398"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def envelope(value: dict[str, Any], field_name: str = "messages") -> dict[str, Any]:
    """One change of the WhatsApp Business Account, as Meta wraps every webhook."""
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "changes": [{"value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": PHONE_NUMBER_ID},
                **value}, "field": field_name}]}]}


@dataclass
class WebhookSender:
    """Posts deliveries to `url` (the front door's /hooks/whatsapp) the way Meta's servers do."""

    url: str
    app_secret: str = APP_SECRET
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def wamid(self) -> str:
        return f"wamid.HBgL{next(self._ids):012d}FQIAEhgUM0E="

    def text(self, wa_id: str, body: str, *, name: str = "Ada", context: str = "",
             msg_id: str = "") -> dict[str, Any]:
        message: dict[str, Any] = {"from": wa_id, "id": msg_id or self.wamid(), "timestamp": str(int(time.time())),
                                   "type": "text", "text": {"body": body}}
        if context:
            message["context"] = {"from": DISPLAY_NUMBER, "id": context}
        return envelope({"contacts": [{"profile": {"name": name}, "wa_id": wa_id}], "messages": [message]})

    def status(self, wamid: str, recipient: str, status: str, *, errors: list[dict[str, Any]] | None = None,
               at: int | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(at or int(time.time())),
                                 "recipient_id": recipient}
        if errors:
            entry["errors"] = errors
        return envelope({"statuses": [entry]})

    async def post(self, payload: dict[str, Any] | bytes, *, signature: str = "right",
                   client: httpx.AsyncClient | None = None) -> httpx.Response:
        """signature: "right" (Meta's), "none" (no header), "wrong" (another secret's)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        headers = {"content-type": "application/json", "user-agent": "facebookexternalua"}
        if signature == "right":
            headers["x-hub-signature-256"] = sign(self.app_secret, body)
        elif signature == "wrong":
            headers["x-hub-signature-256"] = sign(self.app_secret + "-not", body)
        if client is not None:
            return await client.post(self.url, content=body, headers=headers)
        async with httpx.AsyncClient(timeout=10) as own:
            return await own.post(self.url, content=body, headers=headers)

    async def handshake(self, token: str, challenge: str = "1158201444") -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(self.url, params={"hub.mode": "subscribe", "hub.verify_token": token,
                                                      "hub.challenge": challenge})

    async def oversized(self, size: int, *, declared: bool) -> tuple[int, int]:
        """Start a signed-looking POST of `size` bytes and send its body only while the server reads:
        (status, bytes of the body sent before the answer). With `declared`, a Content-Length says the size;
        without, the body comes chunked."""
        parts = urlsplit(self.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        head = [f"POST {parts.path} HTTP/1.1", f"host: {parts.netloc}", "content-type: application/json",
                "x-hub-signature-256: sha256=" + "0" * 64]
        head.append(f"content-length: {size}" if declared else "transfer-encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        answer = asyncio.ensure_future(reader.readline())
        sent, chunk = 0, b"x" * 65536
        try:
            while sent < size and not answer.done():
                piece = chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk)
                writer.write(piece)
                try:
                    await asyncio.wait_for(writer.drain(), 2)
                except (TimeoutError, ConnectionError):
                    break  # the server stopped reading: what a refusal without reading looks like
                sent += len(chunk)
            status_line = await asyncio.wait_for(answer, 10)
        finally:
            writer.close()
        return int(status_line.split()[1]), sent
