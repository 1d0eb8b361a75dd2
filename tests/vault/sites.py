"""Fake sites for the gateway's tests: a recording HTTP/1.1 server (TLS optional), raw h11 helpers,
and the in-container relay loaded from its file, so tests speak to the gateway as agents do."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import h11


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
        return f"http://{self.address}"

    @property
    def address(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def start(self, tls: ssl.SSLContext | None = None) -> FakeUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
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
        except (ConnectionError, h11.RemoteProtocolError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
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
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("closed before the response ended")


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


# A WebSocket handshake as a client sends it through the tunnel (the site under test decides what it answers).
WEBSOCKET_ASK = (
    b"GET /socket HTTP/1.1\r\nHost: api.example.test\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhl\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def open_tunnel(
    socket_path: Path, host: str, ca_pem: bytes, port: int = 443
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """CONNECT through the gateway socket, then TLS as a client that trusts ``ca_pem``."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 "), head
    context = ssl.create_default_context(cadata=ca_pem.decode())
    await writer.start_tls(context, server_hostname=host)
    return reader, writer


def load_relay() -> ModuleType:
    """The relay ships inside the agent image, not in the clawden package: load it from its file."""
    path = Path(__file__).parents[2] / "container" / "clawden_agent" / "relay.py"
    spec = importlib.util.spec_from_file_location("clawden_agent_relay_for_vault_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class LaxSite:
    """A keep-alive HTTP/1.1 site that, like many real ones, never reads a body on a GET: whatever a GET
    carries is read as the next request on the connection. Records (connection, method, target,
    authorization) for each request it served."""

    served: list[tuple[int, str, str, str]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _count: int = 0

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self, tls: ssl.SSLContext) -> LaxSite:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count += 1
        number = self._count
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                fields = (line.partition(":") for line in lines[1:] if line)
                headers = {k.strip().lower(): v.strip() for k, _, v in fields}
                if method != "GET" and int(headers.get("content-length", "0")):
                    await reader.readexactly(int(headers["content-length"]))
                self.served.append((number, method, target, headers.get("authorization", "")))
                body = b'{"ok": true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass
        finally:
            writer.close()
