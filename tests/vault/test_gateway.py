"""The vault gateway against a recording upstream on loopback: injection, streaming, keep-alive, CONNECT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx
import pytest

from services.vault.gateway import (
    AuditRecord,
    Gateway,
    connect_target,
    is_loopback,
    split_target,
    strip_hop_by_hop,
    tunnel_allowed,
    upstream_request_headers,
)

REAL_KEY = "sk-ant-api03-real-secret-key"
PLACEHOLDER = "clawden-managed"
GROUP = "family"

pytestmark = pytest.mark.timeout(10)


# ---- a recording upstream speaking real HTTP/1.1 ----


@dataclass
class Received:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, f"{name!r} sent {len(values)} times"
        return values[0] if values else None


class Reply:
    """Sends one response on the upstream's h11 connection."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        self._conn = conn
        self._writer = writer

    async def send(self, event: h11.Event) -> None:
        self._writer.write(self._conn.send(event) or b"")
        await self._writer.drain()


Responder = Callable[[Received, Reply], Awaitable[None]]


async def respond_json(request: Received, reply: Reply) -> None:
    body = json.dumps({"id": "msg_1", "echo": request.target.decode()}).encode()
    await reply.send(
        h11.Response(
            status_code=200,
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # Hop-by-hop on the way back: must not reach the agent.
                (b"connection", b"x-upstream-hop"),
                (b"x-upstream-hop", b"1"),
                (b"keep-alive", b"timeout=5"),
                (b"request-id", b"req_1"),
            ],
        )
    )
    if request.method != b"HEAD":
        await reply.send(h11.Data(data=body))
    await reply.send(h11.EndOfMessage())


@dataclass
class FakeUpstream:
    """A stand-in for the model API on 127.0.0.1 that records every request it receives."""

    respond: Responder = respond_json
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._answer(reader, writer)
        except asyncio.CancelledError:
            pass  # only close() cancels; Python 3.11 would log a cancelled handler's traceback
        finally:
            self._tasks.discard(task)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (request := await _read_request(conn, reader)) is not None:
                self.received.append(request)
                await self.respond(request, Reply(conn, writer))
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> Received | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return Received(head.method, head.target, list(head.headers), bytes(body))
        else:
            return None


# ---- fixtures ----


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes, too short for pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="clawden-gw-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = await FakeUpstream().start()
    yield fake
    await fake.close()


@pytest.fixture
def audit() -> list[AuditRecord]:
    return []


@contextlib.asynccontextmanager
async def serving(gateway: Gateway, path: Path) -> AsyncIterator[Path]:
    await gateway.listen(GROUP, path)
    try:
        yield path
    finally:
        await gateway.close()


@pytest.fixture
async def gateway_socket(
    upstream: FakeUpstream, sock_dir: Path, audit: list[AuditRecord]
) -> AsyncIterator[Path]:
    # Tunnels to loopback are allowed here only because the test echo server lives there.
    gateway = Gateway(upstream.url, REAL_KEY, audit=audit.append, tunnel_to_private=True)
    async with serving(gateway, sock_dir / GROUP / "gateway.sock") as path:
        yield path


@pytest.fixture
async def client(gateway_socket: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(uds=str(gateway_socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=5) as http:
        yield http


def placeholder_headers() -> dict[str, str]:
    return {"x-api-key": PLACEHOLDER, "anthropic-version": "2023-06-01", "content-type": "application/json"}


async def send_raw(path: Path, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    return reader, writer


async def read_response(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Response, bytes]:
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, bytes(body)
        else:
            raise AssertionError(f"unexpected {event!r}")


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# ---- the pure header decision ----


def test_api_key_replaces_the_agents_placeholder_and_any_bearer() -> None:
    incoming = [
        (b"host", b"127.0.0.1:3128"),
        (b"x-api-key", PLACEHOLDER.encode()),
        (b"authorization", b"Bearer agent-made-this-up"),
        (b"anthropic-version", b"2023-06-01"),
    ]

    headers = upstream_request_headers(incoming, REAL_KEY, b"api.anthropic.com")

    assert headers == [
        (b"host", b"api.anthropic.com"),
        (b"anthropic-version", b"2023-06-01"),
        (b"x-api-key", REAL_KEY.encode()),
    ]


def test_oauth_token_goes_as_bearer_with_the_oauth_beta() -> None:
    incoming = [(b"x-api-key", PLACEHOLDER.encode()), (b"anthropic-beta", b"prompt-caching-2024-07-31")]

    headers = dict(upstream_request_headers(incoming, "sk-ant-oat01-token", b"api.anthropic.com"))

    assert b"x-api-key" not in headers
    assert headers[b"authorization"] == b"Bearer sk-ant-oat01-token"
    assert headers[b"anthropic-beta"] == b"prompt-caching-2024-07-31,oauth-2025-04-20"


def test_oauth_beta_is_not_announced_twice() -> None:
    incoming = [(b"anthropic-beta", b"oauth-2025-04-20")]

    headers = upstream_request_headers(incoming, "sk-ant-oat01-token", b"h")

    assert (b"anthropic-beta", b"oauth-2025-04-20") in headers
    assert [name for name, _ in headers].count(b"anthropic-beta") == 1


def test_hop_by_hop_headers_and_those_named_in_connection_are_dropped() -> None:
    incoming = [
        (b"Connection", b"keep-alive, X-Private-Hop"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Authorization", b"Basic eA=="),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"x-checksum"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"X-Private-Hop", b"1"),
        (b"Content-Type", b"application/json"),
    ]

    assert strip_hop_by_hop(incoming) == [(b"Content-Type", b"application/json")]


def test_request_targets_split_into_host_and_path() -> None:
    assert split_target(b"/v1/messages?beta=true") == (None, b"/v1/messages?beta=true")
    assert split_target(b"http://127.0.0.1:3128/v1/messages?beta=true") == (
        "127.0.0.1",
        b"/v1/messages?beta=true",
    )
    assert split_target(b"http://Example.com") == ("example.com", b"/")
    assert split_target(b"*") is None
    assert connect_target(b"api.github.com:443") == ("api.github.com", 443)
    assert connect_target(b"[::1]:8443") == ("::1", 8443)
    assert connect_target(b"api.github.com") is None
    assert connect_target(b"host:99999") is None


def test_only_the_relay_address_counts_as_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("example.com") and not is_loopback("10.0.0.1")


def test_tunnels_go_to_public_addresses_only() -> None:
    assert tunnel_allowed("160.79.104.10") and tunnel_allowed("2607:6bc0::10")
    for private in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "fd00::1",
    ):
        assert not tunnel_allowed(private), private
    assert not tunnel_allowed("::ffff:127.0.0.1")


# ---- forwarding through real sockets ----


async def test_upstream_gets_the_real_key_never_the_placeholder(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    headers = placeholder_headers() | {"authorization": "Bearer agent-guess"}

    response = await client.post("/v1/messages?beta=true", headers=headers, content=b'{"model":"m"}')

    assert response.status_code == 200
    assert response.json()["echo"] == "/v1/messages?beta=true"
    (seen,) = upstream.received
    assert seen.header(b"x-api-key") == REAL_KEY.encode()
    assert seen.header(b"authorization") is None
    assert seen.header(b"host") == upstream.url.removeprefix("http://").encode()
    assert seen.body == b'{"model":"m"}'
    assert all(PLACEHOLDER.encode() not in value for _, value in seen.headers)


async def test_hop_by_hop_headers_are_stripped_both_ways(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    headers = placeholder_headers() | {
        "connection": "keep-alive, x-agent-hop",
        "x-agent-hop": "1",
        "keep-alive": "timeout=30",
        "proxy-authorization": "Basic eDp5",
        "te": "trailers",
    }

    response = await client.post("/v1/messages", headers=headers, content=b"{}")

    names = {name for name, _ in upstream.received[0].headers}
    assert names.isdisjoint({b"connection", b"x-agent-hop", b"keep-alive", b"proxy-authorization", b"te"})
    assert "x-upstream-hop" not in response.headers
    assert "keep-alive" not in response.headers
    assert response.headers["request-id"] == "req_1"


async def test_sse_flows_event_by_event(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    second_may_go = asyncio.Event()

    async def respond_sse(request: Received, reply: Reply) -> None:
        await reply.send(h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")]))
        await reply.send(h11.Data(data=b"event: message_start\ndata: {}\n\n"))
        await second_may_go.wait()
        await reply.send(h11.Data(data=b"event: message_stop\ndata: {}\n\n"))
        await reply.send(h11.EndOfMessage())

    upstream.respond = respond_sse

    async with asyncio.timeout(3), client.stream("POST", "/v1/messages", content=b"{}") as response:
        assert response.headers["transfer-encoding"] == "chunked"
        chunks = response.aiter_raw()
        first = await anext(chunks)
        assert first == b"event: message_start\ndata: {}\n\n"
        assert not second_may_go.is_set()  # the upstream is still holding the second event
        second_may_go.set()
        rest = b"".join([chunk async for chunk in chunks])

    assert rest == b"event: message_stop\ndata: {}\n\n"


async def test_three_requests_share_one_keep_alive_connection(
    gateway_socket: Path, upstream: FakeUpstream
) -> None:
    conn = h11.Connection(h11.CLIENT)
    reader, writer = await asyncio.open_unix_connection(str(gateway_socket))
    try:
        for n in range(3):
            body = b'{"n":%d}' % n
            head = h11.Request(
                method="POST",
                target=f"/v1/messages/{n}",
                headers=[
                    ("host", "127.0.0.1"),
                    ("x-api-key", PLACEHOLDER),
                    ("content-length", str(len(body))),
                ],
            )
            writer.write((conn.send(head) or b"") + (conn.send(h11.Data(data=body)) or b""))
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            response, answer = await read_response(conn, reader)
            assert response.status_code == 200
            assert json.loads(answer)["echo"] == f"/v1/messages/{n}"
            conn.start_next_cycle()
    finally:
        await close_writer(writer)

    assert [r.body for r in upstream.received] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert upstream.connections == 1  # and the upstream side was pooled too


async def test_streamed_request_body_reaches_upstream_whole(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b'{"messages":', b"[" + b"x" * 200_000 + b"]", b"}"):
            yield part
            await asyncio.sleep(0)

    response = await client.post("/v1/messages", headers=placeholder_headers(), content=body())

    assert response.status_code == 200
    assert upstream.received[0].body == b'{"messages":[' + b"x" * 200_000 + b"]}"


async def test_redirects_are_passed_back_not_followed(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    async def respond_redirect(request: Received, reply: Reply) -> None:
        headers = [(b"location", b"/elsewhere"), (b"content-length", b"0")]
        await reply.send(h11.Response(status_code=307, headers=headers))
        await reply.send(h11.EndOfMessage())

    upstream.respond = respond_redirect

    response = await client.get("/v1/models")

    assert response.status_code == 307
    assert response.headers["location"] == "/elsewhere"
    assert len(upstream.received) == 1


async def test_every_request_is_audited_without_the_key(
    client: httpx.AsyncClient, audit: list[AuditRecord], upstream: FakeUpstream
) -> None:
    await client.post("/v1/messages?key=secret-in-query", headers=placeholder_headers(), content=b"{}")

    (record,) = audit
    assert (record.agent_group, record.method, record.path, record.status) == (
        GROUP,
        "POST",
        "/v1/messages",
        200,
    )
    assert record.host == upstream.url.removeprefix("http://")
    assert REAL_KEY not in repr(record) and "secret-in-query" not in repr(record)


async def test_down_upstream_gives_a_502_json_error_without_the_key(sock_dir: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    gateway = Gateway(f"http://127.0.0.1:{dead_port}", REAL_KEY)
    async with serving(gateway, sock_dir / "gateway.sock") as path:
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            response = await http.post("/v1/messages", headers=placeholder_headers(), content=b"{}")

    assert response.status_code == 502
    assert response.json()["error"]["type"] == "gateway_error"
    assert set(response.json()["error"]) == {"type", "message"}
    assert REAL_KEY not in response.text
    assert all(REAL_KEY not in value for value in response.headers.values())


async def test_plain_http_to_another_site_is_refused_not_sent_to_the_model(
    gateway_socket: Path, upstream: FakeUpstream
) -> None:
    # What a client sends through HTTP_PROXY: the absolute URL of the site it wants.
    request = h11.Request(
        method="GET", target="http://example.com/index.html", headers=[("host", "example.com")]
    )
    conn = h11.Connection(h11.CLIENT)
    reader, writer = await send_raw(
        gateway_socket, (conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b"")
    )
    try:
        response, body = await read_response(conn, reader)
    finally:
        await close_writer(writer)

    assert response.status_code == 403
    assert json.loads(body)["error"]["type"] == "gateway_error"
    assert upstream.received == []


async def test_malformed_request_gets_400_and_the_connection_closes(gateway_socket: Path) -> None:
    reader, writer = await send_raw(gateway_socket, b"THIS IS NOT HTTP\r\n\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(), 2)  # read() to EOF proves the close
    finally:
        await close_writer(writer)

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"gateway_error"' in answer


# ---- CONNECT ----


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        await close_writer(writer)  # after the client's half-close

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_connect_opens_a_raw_tunnel(
    gateway_socket: Path, echo_port: int, audit: list[AuditRecord]
) -> None:
    authority = f"127.0.0.1:{echo_port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    reader, writer = await send_raw(gateway_socket, request)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        writer.write(b"\x16\x03\x01 not http at all")
        echoed = await asyncio.wait_for(reader.readexactly(len(b"\x16\x03\x01 not http at all")), 2)
        writer.write(b"last words")
        writer.write_eof()  # half-close: the echo still answers, then closes
        tail = await asyncio.wait_for(reader.read(), 2)
    finally:
        await close_writer(writer)

    assert head.startswith(b"HTTP/1.1 200 ")
    assert echoed == b"\x16\x03\x01 not http at all"
    assert tail == b"last words"
    assert [(r.method, r.host, r.status) for r in audit] == [("CONNECT", authority, 200)]


async def test_connect_to_a_dead_port_answers_502(gateway_socket: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    request = f"CONNECT 127.0.0.1:{dead_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    reader, writer = await send_raw(gateway_socket, request)
    try:
        response, body = await read_response(h11_client_after(request), reader)
    finally:
        await close_writer(writer)

    assert response.status_code == 502
    assert json.loads(body)["error"]["type"] == "gateway_error"


async def test_connect_to_a_private_address_is_refused_by_default(
    upstream: FakeUpstream, sock_dir: Path, echo_port: int
) -> None:
    request = f"CONNECT localhost:{echo_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    async with serving(Gateway(upstream.url, REAL_KEY), sock_dir / "gateway.sock") as path:
        reader, writer = await send_raw(path, request)
        try:
            response, body = await read_response(h11_client_after(request), reader)
        finally:
            await close_writer(writer)

    assert response.status_code == 403
    assert "private" in json.loads(body)["error"]["message"]


def h11_client_after(request: bytes) -> h11.Connection:
    """An h11 client connection that has already sent ``request`` (a CONNECT without body)."""
    conn = h11.Connection(h11.CLIENT)
    target = request.split(b" ")[1]
    conn.send(h11.Request(method="CONNECT", target=target, headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    return conn


# ---- the socket itself ----


async def test_listen_replaces_a_stale_socket_and_opens_it_to_the_container_user(
    upstream: FakeUpstream, sock_dir: Path
) -> None:
    path = sock_dir / "nested" / "gateway.sock"
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # a leftover from a crashed run: nobody listens
    gateway = Gateway(upstream.url, REAL_KEY)
    await gateway.listen(GROUP, path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            response = await http.get("/v1/models")
    finally:
        await gateway.close()

    assert mode == 0o666
    assert response.status_code == 200
    assert not path.exists()
