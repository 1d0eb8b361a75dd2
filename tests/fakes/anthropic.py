"""A fake Anthropic Messages API on loopback, speaking the real wire format, for tests and benchmarks.

It answers POST /v1/messages (JSON or `stream: true` SSE), /v1/messages/count_tokens and GET /v1/models
(which checks the key against `api_keys`, as `clawden doctor`'s check through the vault needs), records
every request, plays a per-test script of replies, and otherwise echoes through a tool whose
name ends with `send_message`, so an agent that replies with that tool gets a plausible turn.

    fake = FakeAnthropic(); await fake.start(); fake.script(Text("hi"), Error(400)); ...; await fake.stop()
    python -m tests.fakes.anthropic --port 8765      # prints its URL, runs until killed
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from tests.fakes.threaded import ThreadedServer, serve_from_command_line

DEFAULT_MODEL = "claude-fake-1"
AFTER_TOOL_TEXT = "Done."
AUX_TEXT = "Fake reply"
COMPACTION_ASK = "REMINDER: Do NOT call any tools. Respond with plain text only"
COMPACTION_SUMMARY = "<analysis>The fake read the conversation.</analysis>\n<summary>The conversation so far.</summary>"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


# --- scripted replies ---------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer. `delay` seconds pass before anything is sent."""

    delay: float = field(default=0.0, kw_only=True)


@dataclass
class Text(Reply):
    text: str


@dataclass
class ToolCall(Reply):
    """A tool_use block; `name` may be a suffix of the offered tool (send_message → mcp__x__send_message)."""

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    text: str | None = None  # optional text block before the tool call


@dataclass
class Error(Reply):
    status: int
    message: str = "scripted error"
    type: str | None = None  # defaults from the status (400 → invalid_request_error, ...)


@dataclass
class Hang(Reply):
    """Hold the request open until `FakeAnthropic.release()`, then answer with `then`."""

    then: Reply | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query string
    target: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when it is not JSON
    at: float

    @property
    def has_tools(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("tools"))


# --- the pure part: what to answer --------------------------------------------------------------


def tool_names(body: dict[str, Any]) -> list[str]:
    return [str(t.get("name", "")) for t in body.get("tools") or [] if isinstance(t, dict)]


def last_user_turn(body: dict[str, Any]) -> dict[str, Any] | None:
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return msg
    return None


def _blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    content = msg.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def is_tool_result_turn(msg: dict[str, Any] | None) -> bool:
    return msg is not None and any(b.get("type") == "tool_result" for b in _blocks(msg))


MID_TURN = re.compile(
    r"The user sent a new message while you were working:\n(.*?)\n\nThis is how Claude Code", re.DOTALL
)


def _said(msg: dict[str, Any] | None) -> list[str]:
    texts = [str(b.get("text", "")) for b in _blocks(msg or {}) if b.get("type") == "text"]
    if (msg or {}).get("role") == "system":  # how Claude Code hands over a prompt sent mid-turn
        return [m.group(1).strip() for t in texts for m in MID_TURN.finditer(t)]
    return [t.strip() for t in texts if t.strip() and not t.lstrip().startswith("<system-reminder>")]


def since_last_answer(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages after the model's last turn: the tool results and whatever the user said since."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    return messages[last + 1 :]


def last_user_text(body: dict[str, Any]) -> str:
    """What the user said since the model's last turn, skipping the <system-reminder> blocks Claude Code
    adds. Several prompts Claude Code merged (or handed over mid-turn) come as one line each."""
    said = [t for m in since_last_answer(body) for t in _said(m)]
    if said:
        return "\n".join(said)
    msg = last_user_turn(body)
    texts = [str(b.get("text", "")) for b in _blocks(msg or {}) if b.get("type") == "text"]
    return (texts or [""])[-1].strip()


def is_compaction(body: dict[str, Any]) -> bool:
    """Claude Code asking for a summary of the conversation (to compact it): tools are offered, but
    the request says not to call any, and a real model answers with the summary as plain text."""
    return COMPACTION_ASK in str((last_user_turn(body) or {}).get("content"))


def default_reply(body: dict[str, Any]) -> Reply:
    """Echo through send_message when offered, finish after its result, plain text otherwise."""
    if is_compaction(body):
        return Text(COMPACTION_SUMMARY)
    sender = next((n for n in tool_names(body) if n.endswith("send_message")), None)
    if sender is None:
        return Text(AUX_TEXT)
    if is_tool_result_turn(last_user_turn(body)) and not any(_said(m) for m in since_last_answer(body)):
        return Text(AFTER_TOOL_TEXT)  # prompts that came in beside a tool result are answered too
    return ToolCall(sender, {"text": f"echo: {last_user_text(body)}"})


def _resolve_tool(name: str, body: dict[str, Any]) -> str:
    offered = tool_names(body)
    if name in offered:
        return name
    return next((n for n in offered if n.endswith(name)), name)


def _estimate_tokens(body: Any) -> int:
    return max(1, len(json.dumps(body)) // 4)


def content_blocks(reply: Text | ToolCall, body: dict[str, Any], ids: Callable[[], str]) -> list[dict[str, Any]]:
    if isinstance(reply, Text):
        return [{"type": "text", "text": reply.text}]
    blocks: list[dict[str, Any]] = []
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    blocks.append(
        {"type": "tool_use", "id": f"toolu_{ids()}", "name": _resolve_tool(reply.name, body), "input": reply.input}
    )
    return blocks


def message_json(msg_id: str, model: str, blocks: list[dict[str, Any]], input_tokens: int) -> dict[str, Any]:
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": _estimate_tokens(blocks),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def sse_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The official event order: message_start, per block start/delta.../stop, message_delta, stop."""
    start = dict(
        message, content=[], stop_reason=None, stop_sequence=None, usage=dict(message["usage"], output_tokens=1)
    )
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                )
            )
            text = block["text"]
            for chunk in [text[i : i + 16] for i in range(0, len(text), 16)] or [""]:
                events.append(
                    (
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": chunk}},
                    )
                )
        else:
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": dict(block, input={})},
                )
            )
            raw = json.dumps(block["input"])
            for chunk in [raw[i : i + 16] for i in range(0, len(raw), 16)]:
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": chunk},
                        },
                    )
                )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def error_json(status: int, message: str, type_: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_ or _ERROR_TYPES.get(status, "api_error"), "message": message}}


# The list `GET /v1/models` pages through, newest first, in the API's shape (its docs' "List Models").
MODELS = (
    (DEFAULT_MODEL, "Claude Fake 1", "2025-05-14T00:00:00Z"),
    ("claude-fake-0", "Claude Fake 0", "2024-10-22T00:00:00Z"),
)
OAUTH_BETA = "oauth-2025-04-20"


def models_page(limit: int) -> dict[str, Any]:
    data = [
        {"type": "model", "id": model, "display_name": name, "created_at": created}
        for model, name, created in MODELS[:limit]
    ]
    return {"data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"], "has_more": limit < len(MODELS)}


def key_refusal(headers: dict[str, str], keys: set[str] | None) -> str:
    """Why the API refuses the request's credentials (its 401 message), or "" when it takes them: an API key in
    x-api-key, or an OAuth token as a bearer with the OAuth beta announced."""
    key = headers.get("x-api-key", "")
    bearer = headers.get("authorization", "").removeprefix("Bearer ")
    if key:
        return "" if keys is None or key in keys else "invalid x-api-key"
    if not bearer:
        return "x-api-key header is required"
    betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",")]
    if OAUTH_BETA not in betas:
        return "OAuth authentication is currently not supported."
    return "" if keys is None or bearer in keys else "Invalid bearer token"


# --- the server ---------------------------------------------------------------------------------


class FakeAnthropic(ThreadedServer):
    """The fake API server. Script replies with `script()`; inspect `requests` afterwards.

    Scripted replies answer only agent turns (requests that offer tools and are not a compaction)
    unless `script(..., any_request=True)`, so Claude Code's auxiliary calls (titles, summaries and
    the like) cannot eat them.
    `script`, `release` and `requests` are safe to use from another thread.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._script: deque[tuple[Reply, bool]] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._released: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._extra_servers: list[asyncio.Server] = []
        self._overflow_marker: str | None = None
        # Answers every request by its body in place of the script (two agents asking at once, say).
        self.responder: Callable[[dict[str, Any]], Reply] | None = None
        self.connections = 0  # accepted connections, to check keep-alive
        # The keys (API keys or OAuth tokens) `GET /v1/models` accepts; None: any. Messages take any key.
        self.api_keys: set[str] | None = None
        self.models_error: Error | None = None  # `GET /v1/models` answers this instead (a 529, say)
        self.url = ""

    # lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeAnthropic:
        self._loop = asyncio.get_running_loop()
        self._released = asyncio.Event()
        self._stopping = False
        self._server = await asyncio.start_server(self._on_connection, host, port)
        bound = self._server.sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self

    async def listen_unix(self, path: str) -> None:
        """Also serve on a Unix socket (to stand in for the vault gateway's socket)."""
        assert self._loop is not None, "start() first"
        self._extra_servers.append(await asyncio.start_unix_server(self._on_connection, path))

    async def listen_tls(self, context: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0) -> str:
        """Also serve HTTPS (as api.anthropic.com, say, with `make_tls`); returns `host:port`."""
        assert self._loop is not None, "start() first"
        server = await asyncio.start_server(self._on_connection, host, port, ssl=context)
        self._extra_servers.append(server)
        bound = server.sockets[0].getsockname()
        return f"{bound[0]}:{bound[1]}"

    async def stop(self) -> None:
        self._stopping = True
        if self._released is not None:
            self._released.set()
        for extra in self._extra_servers:
            extra.close()
        if self._server is not None:
            self._server.close()
        # Aborting the sockets ends each handler on its own; cancelling them would make asyncio's
        # stream callback log the CancelledError.
        for writer in list(self._conns.values()):
            writer.transport.abort()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # scripting and inspection
    def script(self, *replies: Reply, any_request: bool = False) -> None:
        with self._lock:
            self._script.extend((r, any_request) for r in replies)

    def overflow_when(self, marker: str | None) -> None:
        """Refuse every request whose body holds `marker` as the real API refuses a conversation over
        the model's window (400 "prompt is too long"), summaries of it included; None: stop."""
        self._overflow_marker = marker

    def forget_script(self) -> None:
        """Drop the scripted replies not used yet."""
        with self._lock:
            self._script.clear()

    def release(self) -> None:
        """Let every request held by a Hang answer (later Hangs hold again)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._release_now)

    def _release_now(self) -> None:
        if self._released is not None and not self._stopping:
            self._released.set()
            self._released = asyncio.Event()

    @property
    def pending_script(self) -> int:
        with self._lock:
            return len(self._script)

    def messages_requests(self, *, with_tools: bool | None = None) -> list[RecordedRequest]:
        out = [r for r in list(self.requests) if r.method == "POST" and r.path == "/v1/messages"]
        return out if with_tools is None else [r for r in out if r.has_tools == with_tools]

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        if self.responder is not None:
            return self.responder(body)
        with self._lock:
            if self._script:
                reply, any_request = self._script[0]
                if any_request or (body.get("tools") and not is_compaction(body)):
                    self._script.popleft()
                    return reply
        return default_reply(body)

    # HTTP
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request: h11.Request | None = None
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert request is not None
            await self._handle(conn, writer, request, bytes(body))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _handle(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, raw: bytes
    ) -> None:
        target = request.target.decode()
        method = request.method.decode()
        split = urlsplit(target)
        # A proxy request (CONNECT or an absolute URI) means a client tried to leave loopback.
        proxied = method == "CONNECT" or bool(split.scheme)
        path = target if proxied else split.path
        parsed: Any
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self.requests.append(RecordedRequest(method, path, target, headers, parsed, time.time()))

        if proxied:
            await self._send_json(conn, writer, 404, error_json(404, f"The fake is not a proxy: {target}"))
        elif method == "POST" and path == "/v1/messages/count_tokens" and isinstance(parsed, dict):
            await self._send_json(conn, writer, 200, {"input_tokens": _estimate_tokens(parsed)})
        elif method == "POST" and path == "/v1/messages" and isinstance(parsed, dict):
            marker = self._overflow_marker
            if marker is not None and marker in raw.decode(errors="replace"):
                reply: Reply = Error(
                    400, f"prompt is too long: {_estimate_tokens(parsed) + 1_000_000} tokens > 1000000 maximum"
                )
            else:
                reply = self._next_reply(parsed)
            await self._answer(conn, writer, parsed, reply)
        elif method == "POST" and path.startswith("/v1/messages"):
            await self._send_json(conn, writer, 400, error_json(400, "body must be a JSON object"))
        elif method == "GET" and path == "/v1/models":
            status, payload = self.models_answer(headers, split.query)
            await self._send_json(conn, writer, status, payload)
        else:
            await self._send_json(conn, writer, 404, error_json(404, f"Not found: {method} {path}"))

    def models_answer(self, headers: dict[str, str], query: str) -> tuple[int, dict[str, Any]]:
        """`GET /v1/models` as the API answers it: the key checked (`api_keys`), then a page of the list."""
        if self.models_error is not None:
            return self.models_error.status, error_json(
                self.models_error.status, self.models_error.message, self.models_error.type
            )
        refused = key_refusal(headers, self.api_keys)
        if refused:
            return 401, error_json(401, refused)
        if not headers.get("anthropic-version"):
            return 400, error_json(400, "anthropic-version: header is required")
        limit = parse_qs(query).get("limit", ["20"])[0]
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            return 400, error_json(400, "limit: Input should be greater than or equal to 1 and at most 1000")
        return 200, models_page(int(limit))

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, body: dict[str, Any], reply: Reply
    ) -> None:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if isinstance(reply, Hang):
            assert self._released is not None
            await self._released.wait()
            reply = reply.then or default_reply(body)
            if reply.delay:
                await asyncio.sleep(reply.delay)
        if isinstance(reply, Error):
            payload = error_json(reply.status, reply.message, reply.type)
            await self._send_json(conn, writer, reply.status, payload)
            return
        assert isinstance(reply, Text | ToolCall)
        n = next(self._ids)
        msg = message_json(
            f"msg_fake{n:06d}",
            str(body.get("model") or DEFAULT_MODEL),
            content_blocks(reply, body, lambda: f"fake{n:06d}"),
            _estimate_tokens(body),
        )
        if not body.get("stream"):
            await self._send_json(conn, writer, 200, msg)
            return
        head = h11.Response(
            status_code=200,
            headers=[
                ("content-type", "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"),
                ("request-id", f"req_fake{n:06d}"),
                ("anthropic-organization-id", "fake-org"),
            ],
        )
        writer.write(conn.send(head) or b"")
        for name, data in sse_events(msg):
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            writer.write(conn.send(h11.Data(data=chunk)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    async def _send_json(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]
    ) -> None:
        data = json.dumps(payload).encode()
        n = next(self._ids)
        head = h11.Response(
            status_code=status,
            headers=[
                ("content-type", "application/json"),
                ("content-length", str(len(data))),
                ("request-id", f"req_fake{n:06d}"),
            ],
        )
        writer.write(
            (conn.send(head) or b"") + (conn.send(h11.Data(data=data)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        )
        await writer.drain()


@dataclass(frozen=True)
class FakeTLS:
    """A throwaway CA and a server certificate from it: what a test trusts to reach a fake over TLS."""

    server_context: ssl.SSLContext
    ca_file: str


def make_tls(hostnames: list[str], directory: str) -> FakeTLS:
    """A test CA (written to `directory/fake-ca.pem`) and a leaf for `hostnames`, both ECDSA P-256."""
    import datetime as dt
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake sites test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = os.path.join(directory, "fake-ca.pem")
    chain_file = os.path.join(directory, "fake-site.pem")
    with open(ca_file, "wb") as out:
        out.write(ca.public_bytes(pem))
    with open(chain_file, "wb") as out:
        out.write(
            leaf.public_bytes(pem)
            + key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_file)
    return FakeTLS(context, ca_file)


def start_in_thread(host: str = "127.0.0.1", port: int = 0) -> FakeAnthropic:
    """Run a fake on its own event loop in a daemon thread (for tests driving subprocesses)."""
    fake = FakeAnthropic()
    fake._serve_in_thread(host, port, "fake-anthropic")
    return fake


if __name__ == "__main__":
    serve_from_command_line(FakeAnthropic, __doc__, lambda fake: fake.url)
