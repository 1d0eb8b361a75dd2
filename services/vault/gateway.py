"""The vault gateway, first step: one Unix socket per agent group, model requests forwarded with the
real credential injected, CONNECT tunnelled without interception.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import h11
import httpx

from clawden import unixsock

log = logging.getLogger(__name__)

Header = tuple[bytes, bytes]

READ_SIZE = 64 * 1024
# Above h11's 16 KiB default: a 431 would break an agent's turn, and 64 KiB still bounds memory.
MAX_HEAD_SIZE = 64 * 1024
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
# The agent's placeholder auth, the Host the gateway sets itself, and Expect (answered here).
REPLACED = frozenset({b"host", b"x-api-key", b"authorization", b"expect"})
OAUTH_PREFIX = "sk-ant-oat"
# Anthropic refuses a bearer OAuth token unless this beta is announced.
OAUTH_BETA = b"oauth-2025-04-20"
# A model turn can think for minutes between bytes; the SDK's own default timeout is 10 min.
UPSTREAM_TIMEOUTS = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=30.0).as_dict()
TUNNEL_CONNECT_TIMEOUT = 10.0
URL_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited request; carries no header values, so never a credential."""

    agent_group: str
    method: str
    host: str
    path: str
    status: int
    duration_ms: float


AuditSink = Callable[[AuditRecord], None]


def log_audit(record: AuditRecord) -> None:
    """The default audit sink: one structured log line per request."""
    log.info(
        "audit group=%s method=%s host=%s path=%s status=%d duration_ms=%.1f",
        record.agent_group,
        record.method,
        record.host,
        record.path,
        record.status,
        record.duration_ms,
    )


# ---- the pure core: which headers cross the gateway ----


def strip_hop_by_hop(headers: Iterable[Header]) -> list[Header]:
    """Drop hop-by-hop headers, Proxy-*, and any header named in Connection (RFC 9110 §7.6.1)."""
    headers = list(headers)
    listed = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [
        (name, value)
        for name, value in headers
        if (lower := name.lower()) not in HOP_BY_HOP
        and not lower.startswith(b"proxy-")
        and lower not in listed
    ]


def upstream_request_headers(
    incoming: Iterable[Header], credential: str, upstream_host: bytes
) -> list[Header]:
    """Headers to send upstream: the agent's own, minus hop-by-hop and auth, plus the real credential."""
    headers: list[Header] = [(b"host", upstream_host)]
    headers += [(name, value) for name, value in strip_hop_by_hop(incoming) if name.lower() not in REPLACED]
    secret = credential.encode("ascii")
    if credential.startswith(OAUTH_PREFIX):
        headers.append((b"authorization", b"Bearer " + secret))
        headers = _with_beta(headers, OAUTH_BETA)
    else:
        headers.append((b"x-api-key", secret))
    return headers


def _with_beta(headers: list[Header], beta: bytes) -> list[Header]:
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"anthropic-beta":
            if beta in (token.strip() for token in value.split(b",")):
                return headers
            headers[index] = (name, value + b"," + beta)
            return headers
    headers.append((b"anthropic-beta", beta))
    return headers


def split_target(target: bytes) -> tuple[str | None, bytes] | None:
    """(host, path and query) of an absolute-form target, (None, target) for origin-form, else None."""
    if target.startswith(b"/"):
        return None, target
    if target.startswith((b"http://", b"https://")):
        parts = urlsplit(target)
        if not parts.hostname:
            return None
        path = parts.path or b"/"
        return parts.hostname.decode("ascii", "replace"), path + b"?" + parts.query if parts.query else path
    return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: the relay's own address as the agent sees it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tunnel_allowed(address: str) -> bool:
    """Whether CONNECT may reach this resolved address: public ones only by default.

    The gateway runs in the host's network namespace, so a tunnel to loopback or the LAN would hand
    the agent what ``--network none`` took away (NATS on 127.0.0.1, the router, cloud metadata).
    """
    return ipaddress.ip_address(address).is_global


def connect_target(target: bytes) -> tuple[str, int] | None:
    """(host, port) of a CONNECT authority-form target; None when malformed."""
    host, sep, port = target.decode("ascii", "replace").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"type": "gateway_error", "message": message}}).encode()


# ---- the adapter: sockets, h11, httpx ----


class _ClientGone(Exception):
    """The agent side closed or broke the connection mid-request."""


class Gateway:
    """Serves agent groups on their Unix sockets and forwards their model traffic upstream."""

    def __init__(
        self,
        upstream_base_url: str,
        credential: str,
        extra_ca_file: Path | str | None = None,
        audit: AuditSink = log_audit,
        tunnel_to_private: bool = False,
    ) -> None:
        """``tunnel_to_private`` lets CONNECT reach loopback and LAN addresses (tests, deliberate setups)."""
        base = httpx.URL(upstream_base_url)
        self._base_url = base
        self._base_path = base.raw_path.split(b"?")[0].rstrip(b"/")
        self._upstream_host = base.netloc
        self._upstream_host_str = base.netloc.decode("ascii")
        self._upstream_hostname = base.host
        self._tunnel_to_private = tunnel_to_private
        self._credential = credential
        self._audit = audit
        tls = ssl.create_default_context()
        if extra_ca_file is not None:
            tls.load_verify_locations(cafile=str(extra_ca_file))
        # The bare pooled transport, not an AsyncClient: a proxy wants none of the client's extras
        # (a cookie jar shared by every agent group, redirect following, default headers), and
        # skipping them saves ~50 µs a request. No redirects are followed at this layer.
        self._transport = httpx.AsyncHTTPTransport(
            verify=tls,
            http1=True,
            http2=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=60.0),
        )
        self._urls: dict[bytes, httpx.URL] = {}
        self._servers: dict[Path, asyncio.Server] = {}
        self._closing = False
        self._connections: set[asyncio.Task[None]] = set()

    async def listen(self, agent_group: str, socket_path: Path) -> None:
        """Start serving ``agent_group`` on ``socket_path``; returns once the socket accepts."""
        _clear_socket_path(socket_path)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await self._serve_connection(agent_group, reader, writer)
            except asyncio.CancelledError:
                # Python 3.11's stream callback logs a traceback for a cancelled handler task;
                # when close() is the canceller, ending quietly is the intended outcome.
                if not self._closing:
                    raise
            finally:
                self._connections.discard(task)

        # The container's user (uid 1000) must connect; only this group's containers see the folder.
        sock = unixsock.bind(socket_path, mode=0o666)
        server = await asyncio.start_unix_server(handle, sock=sock, limit=READ_SIZE)
        self._servers[socket_path] = server

    async def close(self) -> None:
        self._closing = True
        for path, server in self._servers.items():
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()
        await self._transport.aclose()

    # -- one agent connection: a loop of requests on h11 --

    async def _serve_connection(
        self, agent_group: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        try:
            while True:
                event = await _next_event(conn, reader)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed, or the client went away between requests
                if event.method == b"CONNECT":
                    if await self._tunnel(agent_group, conn, event, reader, writer):
                        return
                else:
                    await self._forward(agent_group, conn, event, reader, writer)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # MUST_CLOSE, or a request body we never read
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
                    status = exc.error_status_hint
                    _send_simple(writer, conn, status, f"malformed request: {exc}", close=True)
                    await writer.drain()
        except (_ClientGone, ConnectionError):
            pass  # the agent hung up; nothing to answer
        except httpx.HTTPError as exc:
            # The upstream broke mid-response: the head is already sent, so only closing can tell.
            log.warning("upstream failed mid-response for %s: %s", agent_group, type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _forward(
        self,
        agent_group: str,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        started = time.perf_counter()
        method = request.method.decode("ascii", "replace")
        target = split_target(request.target)
        if target is None:
            message = "request target must be a path or an absolute http URL"
            _send_simple(writer, conn, 400, message, close=True)
            self._record(agent_group, method, self._upstream_host_str, "", 400, started)
            return
        host, path = target
        if host is not None and host != self._upstream_hostname and not is_loopback(host):
            # Absolute-form via HTTP_PROXY to some other site: only the model API is served this way,
            # and that site's request must not be replayed at the model API with the key.
            message = f"only the model API is reachable over plain HTTP; use https://{host} (CONNECT)"
            _send_simple(writer, conn, 403, message, close=conn.their_state is not h11.DONE)
            self._record(agent_group, method, host, "", 403, started)
            return
        # Paths only in the audit, never query strings: some APIs carry keys there.
        audit_path = path.partition(b"?")[0].decode("ascii", "replace")
        status = 502
        try:
            upstream = httpx.Request(
                method,
                self._upstream_url(path),
                headers=upstream_request_headers(request.headers, self._credential, self._upstream_host),
                content=_request_body(conn, reader, writer),
                extensions={"timeout": UPSTREAM_TIMEOUTS},
            )
            try:
                response = await self._transport.handle_async_request(upstream)
            except httpx.HTTPError as exc:
                # Only the exception's class: its text may carry the upstream URL but must stay terse.
                message = f"upstream unreachable ({type(exc).__name__})"
                _send_simple(writer, conn, 502, message, close=conn.their_state is not h11.DONE)
                await writer.drain()
                return
            try:
                status = response.status_code
                await _stream_response(conn, response, writer)
            finally:
                await response.aclose()
        finally:
            self._record(agent_group, method, self._upstream_host_str, audit_path, status, started)

    async def _tunnel(
        self,
        agent_group: str,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer a CONNECT; True when the connection became a raw tunnel (and is now finished)."""
        started = time.perf_counter()
        target = connect_target(request.target)
        authority = request.target.decode("ascii", "replace")
        # h11 only switches protocols once the (empty) CONNECT message is complete.
        event = await _next_event(conn, reader)
        while isinstance(event, h11.Data):
            event = await _next_event(conn, reader)
        if not isinstance(event, h11.EndOfMessage):
            return True
        if target is None:
            _send_simple(writer, conn, 400, "CONNECT target must be host:port", close=True)
            self._record(agent_group, "CONNECT", authority, "", 400, started)
            return False
        try:
            async with asyncio.timeout(TUNNEL_CONNECT_TIMEOUT):
                address = await self._tunnel_address(*target)
                if address is None:
                    message = f"{authority} is a private address; tunnels go to public hosts only"
                    _send_simple(writer, conn, 403, message, close=False)
                    self._record(agent_group, "CONNECT", authority, "", 403, started)
                    return False
                # Connect to the checked address, not the name: a second lookup could differ.
                up_reader, up_writer = await asyncio.open_connection(address, target[1], limit=READ_SIZE)
        except (OSError, TimeoutError) as exc:
            _send_simple(writer, conn, 502, f"cannot reach {authority} ({type(exc).__name__})", close=False)
            await writer.drain()
            self._record(agent_group, "CONNECT", authority, "", 502, started)
            return False
        writer.write(
            _bytes(conn, h11.Response(status_code=200, headers=[], reason=b"Connection Established"))
        )
        self._record(agent_group, "CONNECT", authority, "", 200, started)
        leftover, _ = conn.trailing_data
        if leftover:
            up_writer.write(leftover)
        try:
            await _pipe(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await up_writer.wait_closed()
        return True

    def _upstream_url(self, path: bytes) -> httpx.URL:
        # Agents call a handful of paths over and over; parsing each URL anew costs ~15 µs.
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[path] = self._base_url.copy_with(raw_path=self._base_path + path)
        return url

    async def _tunnel_address(self, host: str, port: int) -> str | None:
        """The address to tunnel to, or None when the name resolves to anything non-public."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
        if not addresses:
            raise OSError(f"no address for {host}")
        if not self._tunnel_to_private and not all(tunnel_allowed(a) for a in addresses):
            return None
        return addresses[0]

    def _record(
        self, agent_group: str, method: str, host: str, path: str, status: int, started: float
    ) -> None:
        duration_ms = (time.perf_counter() - started) * 1000.0
        try:
            self._audit(AuditRecord(agent_group, method, host, path, status, duration_ms))
        except Exception:
            # A broken audit sink must not take the agent's traffic down with it.
            log.exception("audit sink failed")


# ---- byte moving ----


def _clear_socket_path(socket_path: Path) -> None:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(socket_path.lstat().st_mode):
            raise FileExistsError(f"{socket_path} exists and is not a socket")
        socket_path.unlink()  # left by a previous run that did not shut down cleanly


async def _next_event(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(READ_SIZE))


def _request_body(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bytes | AsyncIterator[bytes]:
    """The body as bytes when it has already arrived (the common, small case), else a stream."""
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        elif event is h11.NEED_DATA:
            return _stream_body(conn, reader, writer, chunks)
        else:
            raise _ClientGone


async def _stream_body(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: list[bytes]
) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    if conn.client_is_waiting_for_100_continue:
        # curl holds big bodies back until told to go; httpx upstream never asks, so answer here.
        writer.write(_bytes(conn, h11.InformationalResponse(status_code=100, headers=[])))
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            yield bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return
        else:
            raise _ClientGone


async def _stream_response(
    conn: h11.Connection, response: httpx.Response, writer: asyncio.StreamWriter
) -> None:
    reason = response.extensions.get("reason_phrase", b"")
    headers = strip_hop_by_hop(response.headers.raw)
    # Without a content-length h11 frames the body as chunked, so SSE can flow event by event.
    writer.write(_bytes(conn, h11.Response(status_code=response.status_code, headers=headers, reason=reason)))
    # aiter_raw: bytes exactly as received, still compressed if they were, each read forwarded at once.
    async for chunk in response.aiter_raw():
        writer.write(_bytes(conn, h11.Data(data=chunk)))
        await writer.drain()
    writer.write(_bytes(conn, h11.EndOfMessage()))
    await writer.drain()


def _bytes(conn: h11.Connection, event: h11.Event) -> bytes:
    # h11 returns None only for ConnectionClosed, which this module never sends.
    return conn.send(event) or b""


def _send_simple(
    writer: asyncio.StreamWriter, conn: h11.Connection, status: int, message: str, close: bool
) -> None:
    body = error_body(message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    head = _bytes(conn, h11.Response(status_code=status, headers=headers))
    writer.write(head + _bytes(conn, h11.Data(data=body)) + _bytes(conn, h11.EndOfMessage()))


async def _pipe(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Bidirectional copy with half-close; a reset on either side ends both directions."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (ConnectionError, OSError):
            a_writer.transport.abort()
            b_writer.transport.abort()

    await asyncio.gather(pump(a_reader, b_writer), pump(b_reader, a_writer))
