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
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

APP_SECRET = "fake-app-secret-0123456789abcdef"
VERIFY_TOKEN = "fake-verify-token"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
WABA_ID = "102290129340398"
_WAMIDS = itertools.count(1)
# "Status messages webhook reference": a business's message is sent, delivered to the device, read (displayed
# in the person's WhatsApp client), or failed, with `errors`. Read implies delivered: when a message is read as
# it arrives (the person has the chat open), Meta sends "read" and no "delivered" at all.
STATUSES = ("sent", "delivered", "read", "failed")


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def envelope(value: dict[str, Any], field_name: str = "messages") -> dict[str, Any]:
    """One change of the WhatsApp Business Account, as Meta wraps every webhook."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": PHONE_NUMBER_ID},
                            **value,
                        },
                        "field": field_name,
                    }
                ],
            }
        ],
    }


@dataclass
class WebhookSender:
    """Posts deliveries to `url` (the front door's /hooks/whatsapp) the way Meta's servers do."""

    url: str
    app_secret: str = APP_SECRET

    def wamid(self) -> str:
        """A message id no other sender in this process gave (Meta's are unique; a repeat would be a duplicate)."""
        return f"wamid.HBgL{next(_WAMIDS):012d}FQIAEhgUM0E="

    def text(self, wa_id: str, body: str, *, name: str = "Ada", context: str = "", msg_id: str = "") -> dict[str, Any]:
        message: dict[str, Any] = {
            "from": wa_id,
            "id": msg_id or self.wamid(),
            "timestamp": str(int(time.time())),
            "type": "text",
            "text": {"body": body},
        }
        if context:
            message["context"] = {"from": DISPLAY_NUMBER, "id": context}
        return envelope({"contacts": [{"profile": {"name": name}, "wa_id": wa_id}], "messages": [message]})

    def status(
        self,
        wamid: str,
        recipient: str,
        status: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        at: int | None = None,
    ) -> dict[str, Any]:
        if status not in STATUSES or (status == "failed") != bool(errors):
            raise ValueError(
                f"Meta posts no status {status!r} with errors={errors!r} (Status messages webhook reference)"
            )
        entry: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(at or int(time.time())),
            "recipient_id": recipient,
        }
        if errors:
            entry["errors"] = errors
        return envelope({"statuses": [entry]})

    async def post(
        self, payload: dict[str, Any] | bytes, *, signature: str = "right", client: httpx.AsyncClient | None = None
    ) -> httpx.Response:
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
            return await client.get(
                self.url, params={"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": challenge}
            )

    async def oversized(self, size: int, *, declared: bool) -> tuple[int, int]:
        """Start a signed-looking POST of `size` bytes and send its body only while the server reads:
        (status, bytes of the body sent before the answer). With `declared`, a Content-Length says the size;
        without, the body comes chunked."""
        parts = urlsplit(self.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        head = [
            f"POST {parts.path} HTTP/1.1",
            f"host: {parts.netloc}",
            "content-type: application/json",
            "x-hub-signature-256: sha256=" + "0" * 64,
        ]
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


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def rebatched(payload: dict[str, Any]) -> bytes:
    """The same notification in another batch: other bytes (so another front-door key), the same message ids."""
    return json.dumps(payload, indent=1).encode()


class MetaRetries:
    """Meta's side of webhook delivery: a notification that was not answered 200 (an error, a timeout, a
    connection that died) is sent again with decreasing frequency, for up to 7 days, and a notification
    may be sent more than once (the Cloud API's "Webhooks" page: "retries" and "duplicate notifications").
    Here the backoff starts at 0.1 s and stops growing at 2 s, so a test does not wait for hours.

    A delivery can be held mid-body (`hold`): its head and all but the last byte of its body are written,
    then it waits for the event, so it is in flight by construction when the endpoint is killed."""

    FIRST_BACKOFF, MOST_BACKOFF = 0.1, 2.0

    def __init__(self, sender: WebhookSender, client: httpx.AsyncClient) -> None:
        self.sender, self.client = sender, client
        self.answered: dict[bytes, int] = {}  # body -> how many times it was answered 200
        self.failed = 0  # attempts that were not answered 200
        self.held = 0  # held deliveries whose partial body is written

    async def deliver(self, body: bytes, *, hold: asyncio.Event | None = None) -> None:
        """Posted until the endpoint answers 200 (the first try held back by `hold`, if given)."""
        backoff = self.FIRST_BACKOFF
        while not await self._attempt(body, hold):
            hold = None
            self.failed += 1
            await asyncio.sleep(backoff)  # Meta's retry pace; the outcome does not depend on it
            backoff = min(self.MOST_BACKOFF, backoff * 2)

    async def _attempt(self, body: bytes, hold: asyncio.Event | None) -> bool:
        headers = {
            "content-type": "application/json",
            "user-agent": "facebookexternalua",
            "x-hub-signature-256": sign(self.sender.app_secret, body),
        }
        content: bytes | AsyncIterator[bytes] = body
        if hold is not None:
            headers["content-length"] = str(len(body))
            content = self._held_body(body, hold)
        try:
            answer = await self.client.post(self.sender.url, content=content, headers=headers)
        except httpx.HTTPError:
            return False  # the connection died or timed out: no 200, so Meta tries again
        if answer.status_code != 200:
            return False
        self.answered[body] = self.answered.get(body, 0) + 1
        return True

    async def _held_body(self, body: bytes, hold: asyncio.Event) -> AsyncIterator[bytes]:
        yield body[:-1]
        self.held += 1  # httpx asks for the next piece once it has written this one
        await hold.wait()
        yield body[-1:]


# --- the Graph API, as strict as Meta's where a bridge can go wrong ----------------------------------------

TOKEN = "EAAFakeWhatsAppTokenForTestsOnly0123456789"
WINDOW = 24 * 3600.0  # "Customer service windows"


@dataclass
class GraphError:
    """A fault to inject: the next call of its kind answers this ("Error codes": error.code, error.message)."""

    status: int
    code: int
    message: str = "injected"
    retry_after: int | None = None


@dataclass
class SentMessage:
    wamid: str
    to: str
    payload: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.payload["type"])

    @property
    def text(self) -> str:
        if self.type == "text":
            return str(self.payload["text"]["body"])
        if self.type == "interactive":
            return str(self.payload["interactive"]["body"]["text"])
        return ""


class _Refused(Exception):
    def __init__(self, status: int, code: int, message: str, details: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


class FakeGraph:
    """The Cloud API endpoints a bridge uses: POST /<phone>/messages, POST /<phone>/media, GET /<media id>
    (then the download URL it names), GET /<phone>. Each rule cites the page of the WhatsApp Cloud API
    docs it comes from. Users "write" through `user_writes`, which posts a signed webhook to the door and
    opens their 24-hour window, as Meta would."""

    def __init__(
        self, sender: WebhookSender | None = None, *, token: str = TOKEN, phone_number_id: str = PHONE_NUMBER_ID
    ) -> None:
        self.sender = sender
        self.token = token
        self.phone_number_id = phone_number_id
        self.sent: list[SentMessage] = []
        self.undelivered: list[SentMessage] = []  # accepted outside the 24-hour window, then failed
        self._tasks: set[asyncio.Future[int]] = set()
        # Meta does not order its webhooks against its API answers. When set, a send refused outside the
        # window has its "failed" status posted (and stored by the front door) first, then this is awaited,
        # and only then is the send answered.
        self.before_answer: Callable[[], Awaitable[None]] | None = None
        self._late: asyncio.Future[int] | None = None
        # The ids the next sends are given, first first: a test names a message before it is sent.
        self.wamids: list[str] = []
        self.media: dict[str, tuple[bytes, str, str]] = {}  # id -> (bytes, mime, filename)
        self.last_inbound: dict[str, float] = {}
        self.faults: dict[str, list[GraphError]] = {}
        self.calls: list[tuple[str, str]] = []
        self.url = ""
        self._ids = itertools.count(1)
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: Any = None

    # --- the world ---

    async def user_writes(
        self, wa_id: str, text: str = "", *, name: str = "Ada", context: str = "", payload: dict[str, Any] | None = None
    ) -> tuple[str, int]:
        """A person sends a message: (its wamid, the front door's answer)."""
        assert self.sender is not None
        body = payload or self.sender.text(wa_id, text, name=name, context=context)
        self.last_inbound[wa_id] = time.time()
        wamid = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        return wamid, (await self.sender.post(body)).status_code

    async def user_sends_image(
        self, wa_id: str, data: bytes, mime: str = "image/png", caption: str = ""
    ) -> tuple[str, int]:
        media_id = self.add_media(data, mime)
        assert self.sender is not None
        wamid = self.sender.wamid()
        message = {
            "from": wa_id,
            "id": wamid,
            "timestamp": str(int(time.time())),
            "type": "image",
            "image": {
                "id": media_id,
                "mime_type": mime,
                "sha256": hashlib.sha256(data).hexdigest(),
                **({"caption": caption} if caption else {}),
            },
        }
        body = envelope({"contacts": [{"profile": {"name": "Ada"}, "wa_id": wa_id}], "messages": [message]})
        return await self.user_writes(wa_id, payload=body)

    async def user_presses(self, wa_id: str, sent: SentMessage, index: int) -> tuple[str, int]:
        """A tap on a reply button (or a list row) of a message the bot sent ("Webhooks: interactive")."""
        assert self.sender is not None
        inter = sent.payload["interactive"]
        if inter["type"] == "button":
            choice = inter["action"]["buttons"][index]["reply"]
            reply = {"type": "button_reply", "button_reply": {"id": choice["id"], "title": choice["title"]}}
        else:
            row = inter["action"]["sections"][0]["rows"][index]
            reply = {"type": "list_reply", "list_reply": {"id": row["id"], "title": row["title"]}}
        wamid = self.sender.wamid()
        message = {
            "from": wa_id,
            "id": wamid,
            "timestamp": str(int(time.time())),
            "type": "interactive",
            "context": {"from": DISPLAY_NUMBER, "id": sent.wamid},
            "interactive": reply,
        }
        body = envelope({"contacts": [{"profile": {"name": "Ada"}, "wa_id": wa_id}], "messages": [message]})
        return await self.user_writes(wa_id, payload=body)

    async def status(self, sent: SentMessage, status: str, *, errors: list[dict[str, Any]] | None = None) -> int:
        assert self.sender is not None
        return (await self.sender.post(self.sender.status(sent.wamid, sent.to, status, errors=errors))).status_code

    def age_window(self, wa_id: str, hours: float) -> None:
        """The person's last message was `hours` ago (on Meta's side; the bridge keeps its own record)."""
        self.last_inbound[wa_id] = time.time() - hours * 3600

    def add_media(self, data: bytes, mime: str, filename: str = "") -> str:
        media_id = str(900000000000000 + next(self._ids))
        self.media[media_id] = (data, mime, filename)
        return media_id

    def inject(self, kind: str, *faults: GraphError) -> None:
        """kind: "messages", "media" (upload) or "get"."""
        self.faults.setdefault(kind, []).extend(faults)

    def to(self, wa_id: str) -> list[SentMessage]:
        return [m for m in self.sent if m.to == wa_id]

    # --- HTTP ---

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeGraph:
        import socket

        import uvicorn

        self._loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self._app, lifespan="off", log_config=None, access_log=False, http="h11", interface="asgi3", ws="none"
        )
        config.load()
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup(sockets=[sock])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            await self._server.shutdown(sockets=[self._sock])

    def start_in_thread(self) -> FakeGraph:
        from tests.fakes.threaded import ThreadedServer

        ThreadedServer._serve_in_thread(self, "127.0.0.1", 0, "fake-graph")  # type: ignore[arg-type]
        return self

    def stop_thread(self) -> None:
        from tests.fakes.threaded import ThreadedServer

        ThreadedServer.stop_thread(self)  # type: ignore[arg-type]

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status, content, ctype, extra = 200, b"", "application/json", []
        try:
            result = self._route(scope["method"], scope["path"], headers, body)
            late, self._late = self._late, None
            if late is not None and self.before_answer is not None:
                await late
                await self.before_answer()
            if isinstance(result, bytes):
                content, ctype = result, "application/octet-stream"
            else:
                content = json.dumps(result).encode()
        except _Refused as exc:
            status = exc.status
            error: dict[str, Any] = {
                "message": exc.message,
                "type": "OAuthException",
                "code": exc.code,
                "fbtrace_id": "AbCdEfFake",
            }
            if exc.details:
                error["error_data"] = {"messaging_product": "whatsapp", "details": exc.details}
            content = json.dumps({"error": error}).encode()
        except GraphErrorRaised as fault:
            status = fault.error.status
            content = json.dumps(
                {
                    "error": {
                        "message": fault.error.message,
                        "type": "OAuthException",
                        "code": fault.error.code,
                        "fbtrace_id": "AbCdEfFake",
                    }
                }
            ).encode()
            if fault.error.retry_after is not None:
                extra.append((b"retry-after", str(fault.error.retry_after).encode()))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(content)).encode()), *extra],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any] | bytes:
        # "Authentication": every call carries the access token as a bearer token; a wrong one is code 190.
        if headers.get("authorization") != f"Bearer {self.token}":
            raise _Refused(401, 190, "Invalid OAuth access token - Cannot parse access token")
        parts = [p for p in path.split("/") if p]
        self.calls.append((method, path))
        if parts and parts[0] == "download" and len(parts) == 2 and method == "GET":
            self._fault("get")
            if parts[1] not in self.media:
                raise _Refused(404, 100, "media not found")
            return self.media[parts[1]][0]
        if len(parts) < 2 or not re.fullmatch(r"v\d+\.\d+", parts[0]):
            raise _Refused(400, 2500, "Unknown path components: the URL needs a Graph version (v21.0)")
        rest = parts[1:]
        if rest == [self.phone_number_id] and method == "GET":
            return {
                "verified_name": "Clawden Test",
                "display_phone_number": f"+{DISPLAY_NUMBER}",
                "id": self.phone_number_id,
                "quality_rating": "GREEN",
            }
        if rest == [self.phone_number_id, "messages"] and method == "POST":
            self._fault("messages")
            return self._send(json.loads(body or b"{}"))
        if rest == [self.phone_number_id, "media"] and method == "POST":
            self._fault("media")
            return self._upload(headers.get("content-type", ""), body)
        if len(rest) == 1 and rest[0] in self.media and method == "GET":
            self._fault("get")
            data, mime, _ = self.media[rest[0]]
            return {
                "messaging_product": "whatsapp",
                "url": f"{self.url}/download/{rest[0]}",
                "mime_type": mime,
                "sha256": hashlib.sha256(data).hexdigest(),
                "file_size": len(data),
                "id": rest[0],
            }
        raise _Refused(400, 100, f"Unsupported {method} request to {path}")

    def _fault(self, kind: str) -> None:
        queue = self.faults.get(kind)
        if queue:
            raise GraphErrorRaised(queue.pop(0))

    def _send(self, payload: dict[str, Any]) -> dict[str, Any]:
        check_message(payload, self.media)
        to = str(payload["to"])
        wamid = self.wamids.pop(0) if self.wamids else f"wamid.HBgLFake{next(self._ids):010d}="
        # "Customer service windows": outside 24 h of the person's last message only templates may go. Meta
        # accepts the call all the same and reports the failure in a status webhook ("failed", 131047).
        if payload["type"] != "template" and time.time() - self.last_inbound.get(to, 0.0) > WINDOW:
            late = SentMessage(wamid, to, payload)
            self.undelivered.append(late)
            if self.sender is not None:
                self._late = asyncio.ensure_future(
                    self.status(
                        late,
                        "failed",
                        errors=[
                            {
                                "code": 131047,
                                "title": "Re-engagement message",
                                "message": "Re-engagement message",
                                "error_data": {
                                    "details": "Message failed to send because more than 24 hours have passed "
                                    "since the customer last replied to this number."
                                },
                            }
                        ],
                    )
                )
                self._tasks.add(self._late)
        else:
            self.sent.append(SentMessage(wamid, to, payload))
        return {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": wamid}]}

    def _upload(self, content_type: str, body: bytes) -> dict[str, Any]:
        """ "Media: upload": multipart/form-data with `file`, `type` and messaging_product=whatsapp."""
        import email.parser
        import email.policy

        if not content_type.startswith("multipart/form-data"):
            raise _Refused(400, 100, "Param file must be a file upload (multipart/form-data)")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"content-type: {content_type}\r\n\r\n".encode() + body
        )
        fields: dict[str, tuple[bytes, str, str]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True)
            fields[str(name)] = (
                data if isinstance(data, bytes) else b"",
                part.get_content_type(),
                str(part.get_filename() or ""),
            )
        if fields.get("messaging_product", (b"",))[0] != b"whatsapp":
            raise _Refused(400, 100, "The parameter messaging_product is required.")
        if "file" not in fields or "type" not in fields:
            raise _Refused(400, 100, "The parameters file and type are required.")
        data, mime, filename = fields["file"]
        return {"id": self.add_media(data, fields["type"][0].decode() or mime, filename)}


class GraphErrorRaised(Exception):
    def __init__(self, error: GraphError) -> None:
        super().__init__(error.message)
        self.error = error


MESSAGE_TYPES = ("text", "image", "document", "audio", "video", "reaction", "interactive", "template", "sticker")


def check_message(p: dict[str, Any], media: dict[str, Any]) -> None:
    """The rules of "Messages" (the send endpoint's reference) a bridge can break."""
    if p.get("messaging_product") != "whatsapp":
        raise _Refused(400, 100, "The parameter messaging_product is required.")
    if not re.fullmatch(r"\d{6,15}", str(p.get("to", ""))):
        raise _Refused(400, 131009, "Parameter value is not valid", "to must be a phone number (wa_id)")
    kind = p.get("type", "text")
    if kind not in MESSAGE_TYPES or not isinstance(p.get(kind), dict):
        raise _Refused(400, 100, f"Param type must be one of {MESSAGE_TYPES}, with an object of that name")
    obj = p[kind]
    if kind == "text" and not 1 <= len(str(obj.get("body", ""))) <= 4096:  # "Text messages": 4096 characters
        raise _Refused(400, 100, "Param text['body'] must be between 1 and 4096 characters long.")
    if kind in ("image", "document", "audio", "video", "sticker") and str(obj.get("id", "")) not in media:
        raise _Refused(400, 131053, "Media upload error", "no media with this id was uploaded")
    if kind == "reaction" and not obj.get("message_id"):
        raise _Refused(400, 100, "Param reaction['message_id'] is required.")
    if kind == "interactive":
        check_interactive(obj)


def check_interactive(obj: dict[str, Any]) -> None:
    """ "Interactive reply buttons messages" and "Interactive list messages"."""
    body = str((obj.get("body") or {}).get("text", ""))
    if not 1 <= len(body) <= 1024:
        raise _Refused(400, 131009, "Parameter value is not valid", "body.text must be 1 to 1024 characters")
    action = obj.get("action") or {}
    if obj.get("type") == "button":
        buttons = action.get("buttons") or []
        titles = [str(b["reply"]["title"]) for b in buttons]
        if not 1 <= len(buttons) <= 3:
            raise _Refused(400, 131009, "Parameter value is not valid", "buttons: between 1 and 3")
        if any(not 1 <= len(t) <= 20 for t in titles) or len(set(titles)) != len(titles):
            raise _Refused(400, 131009, "Parameter value is not valid", "button titles: 1 to 20 characters, unique")
        if any(not 1 <= len(str(b["reply"]["id"])) <= 256 for b in buttons):
            raise _Refused(400, 131009, "Parameter value is not valid", "button ids: 1 to 256 characters")
    elif obj.get("type") == "list":
        rows = [r for s in action.get("sections") or [] for r in s.get("rows") or []]
        if not 1 <= len(rows) <= 10 or not 1 <= len(str(action.get("button", ""))) <= 20:
            raise _Refused(400, 131009, "Parameter value is not valid", "a list has 1 to 10 rows, a 20-char button")
        if any(not 1 <= len(str(r["title"])) <= 24 or len(str(r.get("description", ""))) > 72 for r in rows):
            raise _Refused(400, 131009, "Parameter value is not valid", "row titles 1-24, descriptions 72")
    else:
        raise _Refused(400, 131009, "Parameter value is not valid", "interactive.type: button or list")
