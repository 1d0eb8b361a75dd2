"""The gateway's side toward the sites agents call: pooled HTTP/1.1 connections on h11, TLS verified.

Trust is the system's roots plus an optional extra file (the tests' fake CA). Names resolve to
public addresses only, unless the operator mapped the host (``[vault] host_map``) or configured
the origin (``model.upstream``): the gateway runs in the host's network namespace, so reaching
loopback or the LAN for an agent would hand it what ``--network none`` took away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h11

log = logging.getLogger("clawden.vault")

Header = tuple[bytes, bytes]
READ_SIZE = 64 * 1024
MAX_HEAD_SIZE = 64 * 1024
# Idle connections one agent group's pool keeps, across all its sites: each holds a descriptor and ~300 KiB
# (TLS) for up to the idle expiry, so without this a group could hold any number by calling many sites.
MAX_IDLE_PER_OWNER = 64


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str  # "https" or "http"
    host: str
    port: int

    @property
    def authority(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode("ascii", "replace")


class UpstreamError(Exception):
    """The site could not be reached or answered nothing usable; ``status`` is what the agent gets."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


def client_tls(extra_ca_file: Path | str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if extra_ca_file:
        context.load_verify_locations(cafile=str(extra_ca_file))
    context.set_alpn_protocols(["http/1.1"])
    return context


@dataclass(eq=False)
class Connection:
    origin: Origin
    owner: str  # the agent group it serves: a connection is never shared across groups
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h11: h11.Connection = field(
        default_factory=lambda: h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_SIZE)
    )
    reused: bool = False
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


@dataclass(eq=False)
class Response:
    status: int
    reason: bytes
    headers: list[Header]
    connection: Connection

    @property
    def switched(self) -> bool:
        return self.status == 101


class Upstream:
    def __init__(
        self,
        tls: ssl.SSLContext | None = None,
        *,
        host_map: Mapping[str, str] | None = None,
        allow_private: bool = False,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        idle_expiry: float = 60.0,
        max_idle_per_origin: int = 32,
        max_idle_per_owner: int = MAX_IDLE_PER_OWNER,
    ) -> None:
        self._tls = tls or client_tls()
        self._host_map = {k.lower(): v for k, v in (host_map or {}).items()}
        self._allow_private = allow_private
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle_expiry = idle_expiry
        self._max_idle = max_idle_per_origin
        self._max_idle_owned = max_idle_per_owner
        # Pooled per agent group: should a site ever read one request's bytes as part of another's,
        # the two belong to the same group, and so carry the same credentials.
        self._idle: dict[tuple[str, Origin], list[Connection]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    # -- the pool --

    async def acquire(self, origin: Origin, trusted: bool = False, owner: str = "") -> Connection:
        idle = self._idle.get((owner, origin))
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if self._usable(conn, now):
                conn.reused = True
                return conn
            conn.close()
        return await self._connect(origin, trusted, owner)

    def release(self, conn: Connection) -> None:
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE and not conn.writer.is_closing():
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            idle = self._idle.setdefault((conn.owner, conn.origin), [])
            idle.append(conn)
            if len(idle) > self._max_idle:
                idle.pop(0).close()
            self._trim_owner(conn.owner)
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(self._idle_expiry, self._close_expired)
        else:
            conn.close()

    def _trim_owner(self, owner: str) -> None:
        """Closes the owner's oldest idle connection when it holds more than its share, whatever their sites: a
        group calling many sites once each (a name per call under its own domain) would otherwise keep a
        descriptor per site until the expiry, past what its cap on connections allows it."""
        owned = [conn for (who, _), idle in self._idle.items() if who == owner for conn in idle]
        if len(owned) <= self._max_idle_owned:
            return
        oldest = min(owned, key=lambda conn: conn.idle_since)
        key = (owner, oldest.origin)
        self._idle[key].remove(oldest)
        if not self._idle[key]:
            del self._idle[key]
        oldest.close()

    def _usable(self, conn: Connection, now: float) -> bool:
        return not conn.writer.is_closing() and not conn.reader.at_eof() and now - conn.idle_since < self._idle_expiry

    def _close_expired(self) -> None:
        """Closes the idle connections ``acquire`` would no longer take, so that a group gone quiet, or a site
        called once, holds no socket for good (nor one the site hung up on). A safety net for sockets, not a
        rule: ``acquire`` checks each connection itself. Runs while the pool holds any, at the oldest's expiry."""
        self._sweep = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            usable = [c for c in idle if self._usable(c, now)]
            for conn in idle:
                if conn not in usable:
                    conn.close()
            if usable:
                self._idle[key] = usable
            else:
                del self._idle[key]
        if self._idle:
            oldest = min(c.idle_since for idle in self._idle.values() for c in idle)
            delay = max(0.0, oldest + self._idle_expiry - now)
            self._sweep = asyncio.get_running_loop().call_later(delay, self._close_expired)

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                await conn.writer.wait_closed()

    async def _connect(self, origin: Origin, trusted: bool, owner: str) -> Connection:
        mapped = self._host_map.get(origin.host) or self._host_map.get(f"{origin.host}:{origin.port}")
        try:
            async with asyncio.timeout(self.connect_timeout):
                if mapped is not None:
                    address, _, port_text = mapped.rpartition(":")
                    address, port = address.strip("[]"), int(port_text)
                else:
                    address, port = await self._resolve(origin, trusted), origin.port
                tls = self._tls if origin.scheme == "https" else None
                reader, writer = await asyncio.open_connection(
                    address, port, ssl=tls, server_hostname=origin.host if tls else None, limit=READ_SIZE
                )
        except UpstreamError:
            raise
        except TimeoutError as exc:
            raise UpstreamError(504, "gateway_timeout", f"connecting to {origin.host} timed out") from exc
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamError(
                502, "bad_gateway", f"{origin.host} presented a certificate that does not verify ({exc.verify_message})"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(502, "bad_gateway", f"cannot reach {origin.host} ({type(exc).__name__})") from exc
        return Connection(origin, owner, reader, writer)

    async def _resolve(self, origin: Origin, trusted: bool) -> str:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UpstreamError(502, "bad_gateway", f"{origin.host} does not resolve") from exc
        addresses = [str(info[4][0]) for info in infos]
        if not addresses:
            raise UpstreamError(502, "bad_gateway", f"{origin.host} does not resolve")
        if not (trusted or self._allow_private) and not all(is_public(a) for a in addresses):
            raise UpstreamError(
                403,
                "private_address_blocked",
                f"{origin.host} resolves to a private address; the gateway reaches public hosts only",
            )
        # Connect to the checked address, not the name: a second lookup could answer differently.
        return addresses[0]

    # -- one exchange --

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: list[Header],
        body: bytes | AsyncIterable[bytes],
        *,
        trusted: bool = False,
        owner: str = "",
    ) -> Response:
        """Send a request and read the response head; the body follows from ``body_chunks``.

        A pooled connection the site closed meanwhile is retried once on a fresh one when the body
        can be sent again. Exceptions raised by ``body`` itself (the agent left, a leak was found)
        pass through unchanged, and the connection is dropped.
        """
        for attempt in (0, 1):
            conn = await self.acquire(origin, trusted, owner)
            started = False
            try:
                await _write_request(conn, h11.Request(method=method, target=target, headers=headers), body)
                while True:
                    event = await self._next_event(conn)
                    started = True
                    if isinstance(event, h11.Response):
                        return Response(event.status_code, bytes(event.reason), list(event.headers), conn)
                    if isinstance(event, h11.InformationalResponse):
                        if event.status_code == 101:
                            return Response(101, bytes(event.reason), list(event.headers), conn)
                        continue  # 100 Continue, 103 Early Hints: nothing to pass on
                    raise ConnectionResetError("the site closed the connection before answering")
            except TimeoutError as exc:
                conn.close()
                raise UpstreamError(
                    504, "gateway_timeout", f"{origin.host} sent no answer within {self.read_timeout:.0f} s"
                ) from exc
            except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
                conn.close()
                if attempt == 0 and conn.reused and not started and isinstance(body, bytes):
                    continue
                raise UpstreamError(
                    502, "bad_gateway", f"{origin.host} broke the connection ({type(exc).__name__})"
                ) from exc
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def body_here(self, response: Response) -> bool:
        """Whether the body's next part can be read without waiting: a content-length body with bytes
        already received (h11 then gives them, or the end, without reading more)."""
        framed = any(k == b"content-length" for k, _ in response.headers)
        return framed and bool(response.connection.h11.trailing_data[0])

    async def body_chunks(self, response: Response) -> AsyncGenerator[bytes, None]:
        """The response body as it arrives; the connection returns to the pool once it is read whole."""
        conn = response.connection
        done = False
        try:
            while True:
                event = await self._next_event(conn)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    done = True
                    return
                else:
                    raise ConnectionResetError("the site closed the connection mid-body")
        finally:
            if done:
                self.release(conn)
            else:
                conn.close()

    async def _next_event(self, conn: Connection) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = conn.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(self.read_timeout):
                data = await conn.reader.read(READ_SIZE)
            conn.h11.receive_data(data)


def _send(conn: Connection, event: h11.Event) -> bytes:
    return conn.h11.send(event) or b""


async def _write_request(conn: Connection, request: h11.Request, body: bytes | AsyncIterable[bytes]) -> None:
    """The request whole: its head, its body (streamed as it comes), its end. A body already here goes
    in one write with its head: one TLS record and one send instead of three."""
    head = _send(conn, request)
    if isinstance(body, bytes):
        data = _send(conn, h11.Data(data=body)) if body else b""
        conn.writer.write(head + data + _send(conn, h11.EndOfMessage()))
    else:
        conn.writer.write(head)
        async for chunk in body:
            conn.writer.write(_send(conn, h11.Data(data=chunk)))
            await conn.writer.drain()
        conn.writer.write(_send(conn, h11.EndOfMessage()))
    await conn.writer.drain()
