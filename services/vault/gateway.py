"""The vault gateway: the HTTPS proxy every agent container talks through.

Each agent group has its own Unix socket, so the socket a connection arrives on names the caller
(a TCP listener with per-group proxy tokens is the fallback where sockets cannot cross into
containers). ``CONNECT host:443`` is answered by TLS with a leaf from the vault's CA, and each
request inside is judged by ``policy.decide`` (a pure function), gets its credentials from
``injection.inject``, and goes upstream on a pooled, verified connection. This module only moves
bytes: h11 on both sides, bodies streamed both ways (SSE flows event by event), redirects passed
back, hop-by-hop headers stripped, WebSocket upgrades piped through after injection.

Plain-HTTP requests (``ANTHROPIC_BASE_URL=http://127.0.0.1:3128``) remain as a compatibility path
to ``model.upstream``, judged as requests to the model API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import socket
import ssl
import stat
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import h11

from clawden import unixsock
from clawden.pki import CertificateAuthority, is_loopback
from services.vault import responses, sigv4, tcpauth
from services.vault.approvals import (
    PREVIEW_BYTES,
    ApprovalAsk,
    Approver,
    LimitTrip,
    NoApprover,
    redact_preview,
)
from services.vault.apps import (
    PLACEHOLDER_TOKEN,
    Provider,
    app_not_connected,
    is_agent_token_call,
    provider_for_host,
    provider_reaching,
    synthetic_token,
)
from services.vault.audit import AuditRecord, AuditSink, log_audit
from services.vault.catalog import Catalog, Credential, GroupView, Secret
from services.vault.certs import LeafCache
from services.vault.injection import echoes, inject, strip_hop_by_hop
from services.vault.oauth import AppTokens, NotConnected, OAuthClient
from services.vault.paths import PathRefused, normalise
from services.vault.patterns import SECRET_PORT
from services.vault.policy import (
    CONDITION_BODY_LIMIT,
    Allowed,
    Ask,
    Blocked,
    EchoScrubber,
    LeakFound,
    LeakScanner,
    Limited,
    RateKey,
    RequestHead,
    Verdict,
    body_for_conditions,
    decide,
    leak_candidates,
    needs_body,
    stored_for_host,
    with_form_methods,
)
from services.vault.ratecounts import RateCounts
from services.vault.responses import SELFTEST_HOST, Reply
from services.vault.tcpauth import token_hash as token_hash  # tests hash tokens as the gateway does
from services.vault.tokenless import Unauthenticated, peer_address
from services.vault.upstream import Origin, Response, Upstream, UpstreamError, client_tls

log = logging.getLogger("clawden.vault")

Header = tuple[bytes, bytes]
READ_SIZE = 64 * 1024
# Above h11's 16 KiB default: a 431 would break an agent's turn, and 64 KiB still bounds memory.
MAX_HEAD_SIZE = 64 * 1024
MAX_SELFTEST_BODY = 1 << 20
TLS_HANDSHAKE_TIMEOUT = 15.0
IDLE_TIMEOUT = 300.0  # an agent connection with no request in flight
CLOSE_TIMEOUT = 5.0
APPROVAL_TIMEOUT = 180.0
# The host model calls are judged as on the compatibility path, wherever model.upstream points.
MODEL_HOST = "api.anthropic.com"
KEY_REFUSED = frozenset({401, 403})  # the model API's answers to a key it will not take (authentication, permission)
METHOD = re.compile(r"[A-Z]+(?:-[A-Z]+)*")
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "CONNECT"})
DROPPED_UPSTREAM = frozenset({b"host", b"expect", b"content-length"})
# An AWS request's body is read whole to be hashed for its signature, up to this; past it the agent
# must send it as UNSIGNED-PAYLOAD (S3 takes that over TLS).
AWS_BODY_LIMIT = 16 << 20
NO_BODY_STATUSES = frozenset({204, 304})
MAX_TOKEN_CALL_BODY = 64 * 1024  # a client library's refresh form is a few hundred bytes
MAX_TOLD = 1024  # above this, tripped limits of windows that ended are forgotten
# Connections one agent group may hold open to the gateway at once, tunnels and WebSocket pipes included, so
# that one group cannot take the descriptors and memory every other group's model calls need. Measured
# (Python 3.11, TLS both ways): a held tunnel costs the vault 1 descriptor and ~290 KiB, one with a request in
# flight 2 and ~600 KiB. A Claude Code session keeps a handful open; a group's sessions plus a package manager's
# parallel downloads (npm: up to 15 per host) fit well under 128, and 128 with a request in flight each hold 256
# descriptors and ~75 MiB: a quarter of the 1024 a systemd service gets by default. (launchd's 256 is too few
# for any cap: its unit must raise it.)
MAX_CONNECTIONS_PER_GROUP = 128
# A connection past the cap is answered (a 429) once its request head is in: an agent's requests come at
# once, so this many waiting for their answer at a time is plenty, and that wait is bounded.
REFUSALS_ANSWERED_AT_ONCE = 16
REFUSAL_TIMEOUT = 5.0
# Connections on the TCP listener that have not shown a token yet belong to no group, so no group's cap holds
# them: these bound them all. Past the cap the oldest is dropped, not the newest: an honest relay shows its token
# within a round trip of connecting (it has the request head before it dials), so it is never the oldest for long,
# while refusing the newest would let anyone keep the listener shut with `cap` idle connections renewed every
# timeout. It is the oldest of the peer address that holds the most (`tokenless.Unauthenticated`), not the oldest
# of all, so that one address opening connections faster than another's TLS handshake ends pushes out its own.
# 256 is two groups' whole caps opened at once, and 256 descriptors are 3 % of the unit's 8192.
MAX_UNAUTHENTICATED = 256
# The time from accept to a token shown: a TLS handshake (where the listener speaks TLS) and one request head. The
# relay needs a round trip and, with TLS, a handshake's few milliseconds of CPU; 15 s is what a CPU-starved
# container already must meet for the TLS handshake of every tunnel (TLS_HANDSHAKE_TIMEOUT), a heavier one.
UNAUTHENTICATED_TIMEOUT = TLS_HANDSHAKE_TIMEOUT
# Whom a burst of those drops is audited under: they belong to no group, and a colon is in no group's name
# (`events.GROUP_PATTERN`), so no group's records are mixed with them. `clawden audit --agent tcp:no-token` lists them.
TOKENLESS = "tcp:no-token"


# ---- small pure helpers ----


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


def connect_target(target: bytes) -> tuple[str, int] | None:
    """(host, port) of a CONNECT authority-form target; None when malformed."""
    host, sep, port = target.decode("ascii", "replace").rpartition(":")
    host = host.removeprefix("[").removesuffix("]").lower().rstrip(".")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if any(c in host for c in "/@ \t") or len(host) > 253:
        return None
    return host, int(port)


def wants_upgrade(headers: list[Header]) -> bool:
    """A WebSocket upgrade, the only one passed on: after any 101 the connection is a pipe no rule
    reads, and for WebSocket that is what the agent asked the rules about; h2c and the like would
    turn an inspected exchange into an uninspected one, so their Upgrade header is dropped."""
    connection = b",".join(v for k, v in headers if k == b"connection").lower()
    protocols = [v.strip().lower() for k, v in headers if k == b"upgrade"]
    return protocols == [b"websocket"] and b"upgrade" in connection


def proxy_token(headers: list[Header]) -> str | None:
    """The token from ``Proxy-Authorization: Basic`` (as the password, or as the user with none)."""
    for name, value in headers:
        if name == b"proxy-authorization":
            scheme, _, encoded = value.partition(b" ")
            if scheme.lower() != b"basic":
                return None
            try:
                user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return password or user or None
    return None


def too_many_connections(group: str, cap: int) -> Reply:
    """The answer to a connection past its group's cap: a 429 the model SDKs retry after a second, by when
    the group's other requests may have ended."""
    return responses.json_reply(
        429,
        {
            "error": "too_many_connections",
            "message": f"Agent group {group} already has {cap} connections open to the vault, its limit. "
            "Wait for some to finish (or close those you do not need) and try again.",
            "limit": cap,
        },
        retry=True,
        extra=((b"retry-after", b"1"),),
    )


class ConnectionSlots:
    """How many connections each agent group holds open, against one cap for every group (no IO).

    A connection past the cap is told so once its request head is in (an answer written before it would be
    lost: the close resets the connection while the client still writes); up to `answering` of a group's
    are waiting for theirs at once, and one past those is closed unanswered, so a flood of silent
    connections holds no more descriptors than that. It also knows which groups are in a burst of refusals
    and how many each refused, so that a burst is logged once rather than once a connection. A burst ends
    when its group is back to half its cap, not at its first close: an agent at the cap that closes one
    connection and opens two would otherwise make two lines of each pair, and the log would be as floodable
    as the descriptors were."""

    def __init__(self, cap: int, answering: int = REFUSALS_ANSWERED_AT_ONCE) -> None:
        self.cap = cap
        self.answering = answering
        self.held: dict[str, int] = {}
        self.refusing: dict[str, int] = {}  # refused connections of each group being answered
        self.refused: dict[str, int] = {}  # the groups in a burst of refusals: how many so far

    def take(self, group: str) -> bool:
        """One more of the group's connections, if under the cap; False (and counted as refused) if not."""
        held = self.held.get(group, 0)
        if held >= self.cap:
            self.refused[group] = self.refused.get(group, 0) + 1
            return False
        self.held[group] = held + 1
        return True

    def give_back(self, group: str) -> int:
        """One of the group's connections ended. Returns how many its burst refused when this ends it, else 0."""
        held = self.held[group] - 1
        if held:
            self.held[group] = held
        else:
            del self.held[group]
        if group in self.refused and held <= self.cap // 2:
            return self.refused.pop(group)
        return 0

    def start_answer(self, group: str) -> bool:
        """Whether a refused connection of `group` may wait for its request to be answered."""
        answering = self.refusing.get(group, 0)
        if answering >= self.answering:
            return False
        self.refusing[group] = answering + 1
        return True

    def end_answer(self, group: str) -> None:
        answering = self.refusing[group] - 1
        if answering:
            self.refusing[group] = answering
        else:
            del self.refusing[group]


@dataclass
class _Unshown:
    """A TCP listener connection yet to show a token: its peer's address, the timer that ends it, and its transport
    once it has one (a TLS connection's comes with its handshake; until then, cancelling its task ends the
    handshake)."""

    peer: str
    timer: asyncio.TimerHandle
    transport: asyncio.WriteTransport | None = None


class _HandOver(asyncio.Protocol):
    """Hands each connection the TLS listener accepts to `take` as a socket of its own, before a byte of it is
    read: the loop (uvloop at once) would read the ClientHello into a stream's buffer, where TLS started later
    never sees it. The accepted descriptor is then closed; the copy keeps the connection open."""

    def __init__(self, take: Callable[[socket.socket], None]) -> None:
        self._take = take

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket").dup()
        # Only a close(2) of this descriptor: no FIN, no RST while the copy is open. (uvloop's transports are
        # asyncio.Transport by their methods, not their class.)
        cast(asyncio.Transport, transport).abort()
        self._take(sock)


def model_credential_catalog(credential: str) -> Catalog:
    """A catalog holding only a model key, granted to every group (tests, tools, the compat path)."""
    secret = Secret(name="anthropic", kind="anthropic", host_pattern=MODEL_HOST, grants=("*",))
    return Catalog(credentials=(Credential(secret, credential),))


# ---- the agent side of one connection ----


class _ClientGone(Exception):
    """The agent side closed or broke the connection mid-request."""


class _Side:
    """One agent connection (or the TLS session inside its tunnel) with its h11 state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        self.held = b""  # bytes that go out with the next send (or flush)

    async def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self.receive()

    async def receive(self) -> None:
        try:
            data = await self.reader.read(READ_SIZE)
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            raise _ClientGone from exc
        self.conn.receive_data(data)

    def send(self, event: h11.Event) -> None:
        # h11 returns None only for ConnectionClosed, which this module never sends.
        data = self.held + (self.conn.send(event) or b"")
        self.held = b""
        if data:  # a content-length body's end is no bytes at all
            self.writer.write(data)

    def hold(self, event: h11.Event) -> None:
        """Encode the event now, write it with the next send: one TLS record for a response's head and
        body where the body is already here."""
        self.held += self.conn.send(event) or b""

    def flush(self) -> None:
        if self.held:
            self.writer.write(self.held)
            self.held = b""

    def send_reply(self, reply: Reply, close: bool = False) -> None:
        headers = list(reply.headers)
        if close or self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            headers.append((b"connection", b"close"))  # the unread rest of the body cannot be trusted
        self.send(h11.Response(status_code=reply.status, headers=headers))
        if reply.body:
            self.send(h11.Data(data=reply.body))
        self.send(h11.EndOfMessage())

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE


def _next_cycle(side: _Side) -> bool:
    """Ready for the connection's next request; False when this one was its last."""
    if not side.reusable:
        return False
    side.conn.start_next_cycle()
    return True


async def _answer_malformed(side: _Side, exc: h11.RemoteProtocolError) -> None:
    """A request h11 could not parse gets its 400 (or 431) when nothing of a response went out yet."""
    if side.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    with contextlib.suppress(h11.LocalProtocolError, ConnectionError, OSError):
        status = exc.error_status_hint
        code = "request_header_fields_too_large" if status == 431 else "bad_request"
        side.send_reply(responses.gateway_error(status, code, f"malformed request: {exc}"), close=True)
        await side.writer.drain()


class _Body:
    """The request body: what has arrived is kept until it goes upstream (previews and conditions read
    it first, to their limits); once it streams, each part is let go as it is sent."""

    def __init__(self, side: _Side) -> None:
        self.side = side
        self.chunks: list[bytes] = []
        self.complete = False
        self.size = 0

    def _take(self) -> bool:
        """Take the events h11 already has; False when it needs more bytes."""
        while not self.complete:
            event = self.side.conn.next_event()
            if isinstance(event, h11.Data):
                data = bytes(event.data)
                self.chunks.append(data)
                self.size += len(data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
            elif event is h11.NEED_DATA:
                return False
            else:
                raise _ClientGone
        return True

    async def _more(self) -> None:
        if self.side.conn.client_is_waiting_for_100_continue:
            # curl holds big bodies back until told to go; the upstream never sees Expect.
            self.side.send(h11.InformationalResponse(status_code=100, headers=[]))
            await self.side.writer.drain()
        await self.side.receive()

    async def preview(self, limit: int) -> bytes:
        while not self._take() and self.size < limit:
            await self._more()
        return b"".join(self.chunks)[:limit]

    def source(self, scanner: LeakScanner) -> bytes | AsyncIterator[bytes]:
        """All of it when it is here (the common, small case), else a stream; both leak-checked
        (stored values redacted, disguised ones raising LeakFound)."""
        if self._take():
            data = b"".join(self.chunks)
            return scanner.feed(data) + scanner.flush() if scanner else data
        return self._stream(scanner)

    async def _stream(self, scanner: LeakScanner) -> AsyncIterator[bytes]:
        while True:
            while self.chunks:
                # Let go of each part as it is sent: an upload of gigabytes must not stay in memory.
                chunk = self.chunks.pop(0)
                if scanner:
                    chunk = scanner.feed(chunk)
                if chunk:
                    yield chunk
            if self.complete:
                if scanner and (rest := scanner.flush()):
                    yield rest
                return
            try:
                taken = self._take()
            except h11.RemoteProtocolError as exc:  # a broken chunked body: nothing sane can follow
                raise _ClientGone from exc
            if not taken:
                await self._more()


@dataclass
class _Exchange:
    """Audit facts of one request as they become known."""

    group: str
    method: str
    host: str
    path: str
    started: float
    at: float
    decision: str = "allowed"
    rule: str = ""
    status: int = 0
    bytes_out: int = 0
    injected: tuple[str, ...] = ()
    approval_id: str = ""
    body: _Body | None = field(default=None, repr=False)


# ---- the gateway ----


class Gateway:
    """Serves agent groups on their sockets; judges, injects and forwards their traffic."""

    def __init__(
        self,
        model_upstream: str = "https://api.anthropic.com",
        credential: str | None = None,
        *,
        catalog: Catalog | None = None,
        ca: CertificateAuthority | None = None,
        work_dir: Path | None = None,
        extra_ca_file: Path | str | None = None,
        host_map: Mapping[str, str] | None = None,
        audit: AuditSink = log_audit,
        approver: Approver | None = None,
        rate_counts: RateCounts | None = None,
        tunnel_to_private: bool = False,
        approval_timeout: float = APPROVAL_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        read_timeout: float = 600.0,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        apps: AppTokens | None = None,
        max_connections_per_group: int = MAX_CONNECTIONS_PER_GROUP,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        unauthenticated_timeout: float = UNAUTHENTICATED_TIMEOUT,
    ) -> None:
        """``credential`` alone makes a gateway that injects one model key for every group.

        Without ``ca`` an ephemeral CA is made (nobody trusts it unless told: tests, benchmarks).
        Without ``rate_counts`` rate limits count in memory only, and a restart forgives.
        ``tunnel_to_private`` lets requests reach loopback and LAN addresses (tests only).
        """
        model = urlsplit(model_upstream)
        scheme = model.scheme or "https"
        port = model.port or (443 if scheme == "https" else 80)
        self._model = Origin(scheme, (model.hostname or MODEL_HOST).lower(), port)
        self._model_path = model.path.rstrip("/").encode()
        if catalog is None:
            catalog = model_credential_catalog(credential) if credential else Catalog()
        self.catalog = catalog
        self._ca = ca
        self._work_dir = work_dir
        self._own_work_dir: Path | None = None
        self._leaf_cache: LeafCache | None = None
        self._upstream = Upstream(
            client_tls(extra_ca_file),
            host_map=host_map,
            allow_private=tunnel_to_private,
            read_timeout=read_timeout,
            connect_timeout=connect_timeout,
        )
        self._audit = audit
        self._approver: Approver = approver or NoApprover()
        self._approval_timeout = approval_timeout
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._rates = rate_counts if rate_counts is not None else RateCounts()
        self._tokens: dict[str, str] = {}  # sha256(token) -> agent group, for the TCP listener
        self._servers: dict[str, asyncio.Server] = {}
        self._socket_paths: dict[str, Path] = {}
        self._closing = False
        self._connections: set[asyncio.Task[None]] = set()
        self.slots = ConnectionSlots(max_connections_per_group)
        # Told the status of each model call that carried the vault's secrets (their names): the service keeps a
        # key the API refuses as its trouble (`modelcheck.RefusedKeys`), as an agent's call finds it.
        self.model_answered: Callable[[tuple[str, ...], int], None] | None = None
        self._bursts: dict[str, tuple[float, float]] = {}  # a burst of refusals: its start (clock, perf_counter)
        # TCP listener connections yet to show a token, each with what ends it.
        self.unauthenticated: Unauthenticated[asyncio.Task[None], _Unshown] = Unauthenticated(max_unauthenticated)
        self._unauthenticated_timeout = unauthenticated_timeout
        self._tokenless_burst: tuple[float, float] | None = None  # a burst of drops: its start (clock, perf_counter)
        # TCP listener connections and the token each showed: they last as long as that token does.
        self._bindings: dict[asyncio.Task[None], tcpauth.Binding] = {}
        # Connections the gateway ended itself: their token was withdrawn, or they showed none in time.
        self._cut: set[asyncio.Task[None]] = set()
        self._told: set[RateKey] = set()  # limits the owner was told of, in their windows
        self._telling: set[asyncio.Future[None]] = set()
        # App connections (Google, GitHub): their token calls go out on this pool too, as the vault's own.
        self.apps = apps if apps is not None else AppTokens(OAuthClient(self._upstream, clock), clock)

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:  # made on first use: a gateway that never intercepts never needs one
            self._ca = CertificateAuthority.create("Clawden ephemeral gateway CA")
        return self._ca

    @property
    def _leaves(self) -> LeafCache:
        if self._leaf_cache is None:
            if self._work_dir is None:
                self._own_work_dir = self._work_dir = Path(tempfile.mkdtemp(prefix="clawden-gateway-"))
            self._leaf_cache = LeafCache(self.ca, self._work_dir / "leaves")
        return self._leaf_cache

    # -- configuration while running --

    def update_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def update_tokens(self, token_hashes: Mapping[str, str]) -> None:
        """Proxy tokens for the TCP listener: sha256 hex of the token -> agent group.

        A connection that showed a token no longer here is ended at once, whatever it is doing (idle between
        requests, inside a CONNECT tunnel, piping a WebSocket): the relay shows the token on a connection's first
        request only, so there is no later request on which it could be refused."""
        self._tokens = dict(token_hashes)
        revoked = [task for task, bound in self._bindings.items() if tcpauth.revoked(self._tokens, bound)]
        for task in revoked:
            del self._bindings[task]
            self._cut.add(task)
            task.cancel()
        if revoked:
            log.info("closed %d gateway connection(s) whose proxy token was withdrawn", len(revoked))

    # -- listeners --

    async def listen(self, agent_group: str, socket_path: Path, owner: int | None = None, mode: int = 0o600) -> None:
        """Start serving ``agent_group`` on ``socket_path`` (`mode`, owned by `owner` when given: the user the
        group's containers run as); returns once the socket accepts."""
        _clear_socket_path(socket_path)
        sock = unixsock.bind(socket_path, mode=mode, owner=owner)
        server = await asyncio.start_unix_server(self._handler(agent_group), sock=sock, limit=READ_SIZE)
        self._servers[f"unix:{socket_path}"] = server
        self._socket_paths[f"unix:{socket_path}"] = socket_path

    async def listen_tcp(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """The fallback listener: each connection names its group with a proxy token; returns the port. With
        `tls`, connections speak TLS first (runners on other hosts: `[vault] tcp_tls`)."""
        if tls is None:
            server = await asyncio.start_server(self._handler(None), host, port, limit=READ_SIZE)
        else:
            # Not `ssl=tls`: asyncio would make the handshake before any code of ours saw the connection, unbounded
            # in number and for up to a minute each. Each is handed over as a socket of its own, yet unread.
            loop = asyncio.get_running_loop()
            server = await loop.create_server(lambda: _HandOver(lambda sock: self._accept_tls(sock, tls)), host, port)
        bound = int(server.sockets[0].getsockname()[1])
        self._servers[f"tcp:{host}:{bound}"] = server
        return bound

    def _handler(
        self, agent_group: str | None
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[None, None, None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # A socket's group is known before a byte is read (a TCP connection's once it shows its token):
            # its slot, taken here, is given back by _serve_connection as the connection ends.
            if agent_group is None:
                await self._guard(self._serve_listener(reader, writer), "tcp")
            elif not self._take_slot(agent_group):
                await self._guard(self._refuse_at_accept(agent_group, reader, writer), agent_group)
            else:
                await self._guard(self._serve_connection(agent_group, reader, writer), agent_group)

        return handle

    async def _guard(self, serve: Coroutine[None, None, None], name: str) -> None:
        """Serve one connection in its own task, owned by the gateway until it ends."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await serve
        except asyncio.CancelledError:
            # Python 3.11's stream callback logs a traceback for a cancelled handler task; when close(), a
            # withdrawn token or the bound on tokenless connections is the canceller, ending quietly is intended.
            if not (self._closing or task in self._cut):
                raise
        except Exception:
            log.exception("gateway connection for %s failed", name)
        finally:
            self._connections.discard(task)
            self._cut.discard(task)

    async def close(self) -> None:
        self._closing = True
        for key, server in self._servers.items():
            server.close()
            if key in self._socket_paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._socket_paths[key])
        if self._telling:  # a card about a tripped limit is on its way: let it go out (briefly)
            await asyncio.wait(set(self._telling), timeout=CLOSE_TIMEOUT)
        for task in [*self._connections, *self._telling]:
            task.cancel()
        if self._telling:
            await asyncio.gather(*self._telling, return_exceptions=True)
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()
        if self._leaf_cache is not None:
            await self._leaf_cache.settled()
        await self._upstream.close()
        if self._own_work_dir is not None:
            shutil.rmtree(self._own_work_dir, ignore_errors=True)

    # -- the TCP listener's connections until they show a token --

    async def _serve_listener(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A plain connection on the TCP listener: one yet to show a token from its accept until it shows one."""
        task = asyncio.current_task()
        assert task is not None
        self._admit(task, peer_address(writer.get_extra_info("peername")), writer.transport)
        try:
            await self._serve_connection(None, reader, writer)
        finally:
            self._leave_unauthenticated(task)

    def _accept_tls(self, sock: socket.socket, tls: ssl.SSLContext) -> None:
        if self._closing:  # accepted as the listener closed
            sock.close()
            return
        task = asyncio.ensure_future(self._guard(self._serve_tls(sock, tls), "tcp"))
        self._connections.add(task)  # from now on, should close() come before the task starts
        # A task cancelled before it started never handed the socket to a transport: closed here then. Otherwise a
        # no-op: the transport closed (or, under uvloop, detached) it as the connection ended.
        task.add_done_callback(lambda _: sock.close())

    async def _serve_tls(self, sock: socket.socket, tls: ssl.SSLContext) -> None:
        """A connection on the TLS listener: one yet to show a token from its accept, its handshake included."""
        task = asyncio.current_task()
        assert task is not None
        entry = self._admit(task, _peer_of(sock))
        try:
            loop = asyncio.get_running_loop()
            streams: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = loop.create_future()
            # As asyncio.start_server makes them: a server's streams (a tunnel's TLS inside is a server's too).
            protocol = asyncio.StreamReaderProtocol(
                asyncio.StreamReader(limit=READ_SIZE), lambda reader, writer: streams.set_result((reader, writer))
            )
            try:
                # Cancelled (dropped, out of time), this closes the socket, the handshake unfinished.
                await loop.connect_accepted_socket(lambda: protocol, sock, ssl=tls)
            except (ssl.SSLError, ConnectionError, OSError) as exc:  # a TimeoutError is an OSError too
                log.debug("TLS on the gateway's TCP listener failed: %s", exc)
                return
            reader, writer = streams.result()  # made as the handshake completed
            entry.transport = writer.transport
            await self._serve_connection(None, reader, writer)
        finally:
            self._leave_unauthenticated(task)

    def _admit(self, task: asyncio.Task[None], peer: str, transport: asyncio.WriteTransport | None = None) -> _Unshown:
        """Count a listener connection from `peer` among those yet to show a token; should there be no room, the
        oldest of the address that holds the most is dropped."""
        timer = asyncio.get_running_loop().call_later(self._unauthenticated_timeout, self._time_up, task)
        entry = _Unshown(peer, timer, transport)
        dropped = self.unauthenticated.admit(task, entry, peer)
        if dropped is not None:
            if self.unauthenticated.dropped == 1:
                self._tokenless_burst = (self._clock(), time.perf_counter())
                log.warning(
                    "the gateway's TCP listener has %d connections that showed no token: as more come, dropping the "
                    "oldest of the address that holds the most (now %s; said again once it is down to %d)",
                    self.unauthenticated.cap,
                    dropped[1].peer or "an unknown address",
                    self.unauthenticated.cap // 2,
                )
            self._end_unauthenticated(*dropped)
        return entry

    def _time_up(self, task: asyncio.Task[None]) -> None:
        """A connection's time to show a token is up: a resource bound (the pool's room), not a rule."""
        if (entry := self._leave_unauthenticated(task)) is not None:
            self._end_unauthenticated(task, entry)

    def _end_unauthenticated(self, task: asyncio.Task[None], entry: _Unshown) -> None:
        entry.timer.cancel()
        if entry.transport is not None:
            entry.transport.abort()  # its descriptor goes now, whatever its task is waiting on
        self._cut.add(task)
        task.cancel()  # in its handshake, that closes the socket

    def _leave_unauthenticated(self, task: asyncio.Task[None]) -> _Unshown | None:
        """The connection is no longer one yet to show a token (it showed one, or ended); its entry, if it was
        still counted. Should that end a burst of drops, the burst is logged and audited, as one record with its
        count, as a group's refusals are (`_give_slot`)."""
        entry = self.unauthenticated.leave(task)
        if entry is not None:
            entry.timer.cancel()
        if dropped := self.unauthenticated.burst_ended():
            log.warning(
                "the gateway's TCP listener is down to %d connections that showed no token; %d were dropped to make "
                "room",
                len(self.unauthenticated.waiting),
                dropped,
            )
            assert self._tokenless_burst is not None  # set by the burst's first drop
            (at, started), self._tokenless_burst = self._tokenless_burst, None
            self._audit_safely(
                AuditRecord(
                    agent_group=TOKENLESS,
                    method="",
                    host="",
                    path="",
                    status=0,  # dropped unanswered
                    duration_ms=(time.perf_counter() - started) * 1000.0,
                    decision="too_many_tokenless",
                    count=dropped,
                    at=at,
                )
            )
        return entry

    # -- one agent connection: a loop of requests, perhaps inside a CONNECT tunnel --

    async def _serve_connection(
        self, agent_group: str | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        side = _Side(reader, writer)
        origin: Origin | None = None
        group = agent_group
        task = asyncio.current_task()
        assert task is not None
        bound: tcpauth.Binding | None = None
        counted = agent_group  # the group whose slot this connection holds, given back as it ends
        try:
            while (event := await self._next_request(side)) is not None:
                if agent_group is None and origin is None:
                    bound = await self._authenticate(side, event, bound)
                    if bound is None:
                        self._bindings.pop(task, None)
                        if not _next_cycle(side):
                            return
                        continue
                    self._bindings[task] = bound
                    self._leave_unauthenticated(task)
                    group = bound.group
                    if (counted := self._hold_slot(group, counted)) is None:
                        await self._refuse_connection(side, group, event)
                        return
                assert group is not None
                if event.method != b"CONNECT":
                    await self._exchange(group, side, event, origin)
                elif origin is not None:
                    side.send_reply(responses.gateway_error(400, "bad_request", "CONNECT inside a tunnel"), close=True)
                    await side.writer.drain()
                    return
                elif (opened := await self._open_tunnel(group, side, event)) is not None:
                    side, origin = opened
                    continue
                else:
                    await side.writer.drain()
                if not _next_cycle(side):
                    return
        except h11.RemoteProtocolError as exc:
            await _answer_malformed(side, exc)
        except (_ClientGone, ConnectionError, ssl.SSLError):
            pass  # the agent hung up; nothing to answer
        finally:
            self._bindings.pop(task, None)  # from here on, a withdrawn token has nothing left to end
            await self._end_connection(side, writer, counted)

    async def _end_connection(self, side: _Side, writer: asyncio.StreamWriter, held: str | None) -> None:
        """The connection closed, then its slot given back (even when cancelled while closing): only once its
        descriptor is gone is the slot free."""
        try:
            await _hang_up(side.writer)
            if side.writer is not writer:
                writer.close()
        finally:
            if held is not None:
                self._give_slot(held)

    async def _refuse_at_accept(self, group: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._refuse_connection(_Side(reader, writer), group)
        finally:
            await _hang_up(writer)

    def _hold_slot(self, group: str, held: str | None) -> str | None:
        """The group whose slot a TCP connection holds once its request's token names `group` (`held`: the one it
        held, given back should it, after a 407, show another group's token); None when `group` is at its cap."""
        if held == group:
            return group
        if held is not None:
            self._give_slot(held)
        return group if self._take_slot(group) else None

    def _take_slot(self, group: str) -> bool:
        """A slot for a connection of `group`; False when the group is at its cap. The first refusal of a burst
        is logged, the rest only counted."""
        if self.slots.take(group):
            return True
        if self.slots.refused[group] == 1:
            self._bursts[group] = (self._clock(), time.perf_counter())
            log.warning(
                "agent group %s reached its cap of %d gateway connections: refusing those past it (said again once "
                "it is down to %d)",
                group,
                self.slots.cap,
                self.slots.cap // 2,
            )
        return False

    async def _refuse_connection(self, side: _Side, group: str, request: h11.Request | None = None) -> None:
        """Tell the agent, in answer to its request (read here unless given), that its group is at its cap; the
        connection then ends. Unanswered when too many of the group's are waiting, or this one sends nothing."""
        if not self.slots.start_answer(group):
            side.writer.transport.abort()
            return
        try:
            async with asyncio.timeout(REFUSAL_TIMEOUT):
                if request is None and not isinstance(await side.next_event(), h11.Request):
                    return
                await self._drain_small_body(side)
                side.send_reply(too_many_connections(group, self.slots.cap), close=True)
                await side.writer.drain()
        except (TimeoutError, h11.ProtocolError, _ClientGone, ConnectionError, OSError, ssl.SSLError):
            side.writer.transport.abort()
        finally:
            self.slots.end_answer(group)

    def _give_slot(self, group: str) -> None:
        """A connection of `group` ended; should that end a burst of refusals, the burst is logged and audited,
        as one record with its count (one a refused connection would let a flood fill the disk)."""
        if not (refused := self.slots.give_back(group)):
            return
        log.warning(
            "agent group %s is down to %d gateway connections; %d past its cap were refused",
            group,
            self.slots.held.get(group, 0),
            refused,
        )
        at, started = self._bursts.pop(group)
        self._audit_safely(
            AuditRecord(
                agent_group=group,
                method="",
                host="",
                path="",
                status=429,
                duration_ms=(time.perf_counter() - started) * 1000.0,
                decision="too_many_connections",
                count=refused,
                at=at,
            )
        )

    async def _next_request(self, side: _Side) -> h11.Request | None:
        """The agent's next request head; None once it hangs up or stays idle too long."""
        try:
            async with asyncio.timeout(self._idle_timeout):
                event = await side.next_event()
        except TimeoutError:
            return None
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed, or the client went away between requests
        if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > MAX_HEAD_SIZE:
            # h11 bounds only a head still arriving; one that came whole is measured here.
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return event

    async def _authenticate(
        self, side: _Side, request: h11.Request, bound: tcpauth.Binding | None
    ) -> tcpauth.Binding | None:
        """Whom a request on the TCP listener speaks for (``tcpauth.identify``): the group its proxy token names,
        else the connection's (``bound``); None (answered 407) when there is none."""
        binding, refusal = tcpauth.identify(self._tokens, bound, proxy_token(list(request.headers)))
        if binding is None:
            await self._drain_small_body(side)
            side.send_reply(responses.proxy_auth_required(refusal))
            await side.writer.drain()
        return binding

    async def _drain_small_body(self, side: _Side, limit: int = 64 * 1024) -> None:
        body = _Body(side)
        with contextlib.suppress(_ClientGone):
            await body.preview(limit)

    async def _open_tunnel(self, group: str, side: _Side, request: h11.Request) -> tuple[_Side, Origin] | None:
        """Answer a CONNECT and start TLS as the requested host; None when refused (answered)."""
        started, at = time.perf_counter(), self._clock()
        target = connect_target(request.target)
        event = await side.next_event()
        while isinstance(event, h11.Data):
            event = await side.next_event()
        if not isinstance(event, h11.EndOfMessage):
            raise _ClientGone
        if target is None:
            side.send_reply(responses.gateway_error(400, "bad_request", "CONNECT target must be host:port"))
            self._record(
                _Exchange(
                    group,
                    "CONNECT",
                    request.target.decode("ascii", "replace"),
                    "",
                    started,
                    at,
                    decision="refused",
                    status=400,
                )
            )
            return None
        host, port = target
        if side.conn.trailing_data[0]:
            # Bytes sent before our 200 cannot be handed to TLS through asyncio streams.
            side.send_reply(
                responses.gateway_error(400, "bad_request", "data sent before the tunnel opened"), close=True
            )
            return None
        try:
            context = await self._leaves.context(host)
        except ValueError:
            side.send_reply(responses.gateway_error(400, "bad_request", f"cannot serve TLS for {host!r}"))
            return None
        side.send(h11.Response(status_code=200, headers=[], reason=b"Connection Established"))
        try:
            await side.writer.drain()
            await side.writer.start_tls(context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            # Usually the client does not trust the CA: the container lacks the bundle or its variables.
            log.warning(
                "TLS with agent group %s for %s failed (%s): does it trust the Clawden CA?",
                group,
                host,
                getattr(exc, "reason", None) or type(exc).__name__,
            )
            self._record(_Exchange(group, "CONNECT", host, "", started, at, decision="tls_failed"))
            side.writer.transport.abort()
            raise _ClientGone from exc
        return _Side(side.reader, side.writer), Origin("https", host, port)

    # -- one request --

    async def _exchange(self, group: str, side: _Side, request: h11.Request, origin: Origin | None) -> None:
        started, now = time.perf_counter(), self._clock()
        method = request.method.decode("ascii", "replace")
        ex = _Exchange(group, method, origin.host if origin else "", "", started, now, body=_Body(side))
        try:
            # Methods are matched exactly, so only their canonical, upper-case spelling goes through.
            routed = (
                self._route(request.target, origin)
                if METHOD.fullmatch(method)
                else responses.gateway_error(
                    400, "bad_request", f"method {method!r} must be an upper-case token such as GET or DELETE"
                )
            )
            if isinstance(routed, Reply):
                ex.decision = "refused"
                await self._reply(side, ex, routed)
                return
            upstream, logical_host, target, trusted = routed
            if method in BODYLESS and declares_body(list(request.headers)):
                # Many servers never read a body on these methods: its bytes would be taken for
                # the next request on the connection, one no rule has seen.
                ex.decision = "refused"
                await self._reply(
                    side,
                    ex,
                    responses.gateway_error(400, "body_not_allowed", f"a {method} request may not carry a body"),
                )
                return
            # The model API reached over plain HTTP is, logically, https://api.anthropic.com.
            port = SECRET_PORT if trusted else upstream.port
            head = RequestHead(method, logical_host, port, target, request.headers)
            ex.host, ex.path = logical_host, head.path
            if logical_host == SELFTEST_HOST:
                await self._selftest(side, ex)
                return
            await self._judge_and_forward(side, ex, head, upstream, trusted)
        finally:
            self._record(ex)

    def _route(self, target: bytes, origin: Origin | None) -> tuple[Origin, str, bytes, bool] | Reply:
        """Where a request goes: (upstream, host it is judged as, target, trusted address)."""
        split = split_target(target)
        if split is None:
            return responses.gateway_error(400, "bad_request", "request target must be a path or an absolute URL")
        host, raw_path = split
        try:
            # Rules, scopes and the upstream all see one form of the path (see `paths`).
            path = normalise(raw_path).raw
        except PathRefused as exc:
            return responses.gateway_error(400, "path_refused", f"refused path: {exc}")
        if origin is not None:  # inside a tunnel: the CONNECT named the host, and it alone counts
            if host is not None and host != origin.host:
                return responses.gateway_error(400, "bad_request", f"{host} is not {origin.host}, this tunnel's host")
            return origin, origin.host, path, False
        if host is None or is_loopback(host) or host == self._model.host:
            return self._model, MODEL_HOST, self._model_path + path, True
        # HTTP_PROXY to some other site over plain HTTP: no credential ever goes out unencrypted.
        return responses.gateway_error(
            403, "plain_http_refused", f"only the model API is reachable over plain HTTP; use https://{host}"
        )

    async def _judge_and_forward(
        self, side: _Side, ex: _Exchange, head: RequestHead, upstream: Origin, trusted: bool
    ) -> None:
        view = self._view(ex.group, head.host)
        body = ex.body
        assert body is not None
        tested: bytes | None = None
        if needs_body(view, head):  # a rule's conditions look at the body: read it (to the limit) first
            data = await body.preview(CONDITION_BODY_LIMIT + 1)
            tested = body_for_conditions(data, body.complete, head.headers)
            head = with_form_methods(head, data)
        verdict: Verdict = decide(view, head, ex.at, self._rates.counts, body=tested)
        approved: frozenset[str] = frozenset()
        while isinstance(verdict, Ask):
            outcome = await self._ask(ex, head, body, verdict, view)
            if outcome != "approved":
                ex.decision = outcome if outcome != "unavailable" else "approval_unavailable"
                await self._reply(side, ex, responses.approval_denied(ex.approval_id, outcome))
                return
            approved |= {verdict.rule.name}
            ex.decision = "approved"
            verdict = decide(view, head, self._clock(), self._rates.counts, approved, body=tested)
        if isinstance(verdict, Blocked):
            ex.rule = verdict.rule or ""
            if verdict.code == "blocked_by_policy":
                ex.decision, reply = "blocked", responses.blocked_by_policy(ex.method, ex.host, ex.path, verdict.rule)
            elif verdict.code == "blocked_by_default_policy":
                ex.decision, reply = "egress_blocked", responses.blocked_by_default_policy(ex.method, ex.host, ex.path)
            else:
                ex.decision = "leak_blocked"
                reply = responses.secret_leak_blocked(ex.method, ex.host, ex.path, verdict.secret or "")
            await self._reply(side, ex, reply)
            return
        if isinstance(verdict, Limited):
            ex.decision, ex.rule = "rate_limited", verdict.rule.name
            self._tell_limit(verdict, ex)
            await self._reply(
                side,
                ex,
                responses.rate_limited(
                    verdict.rule.rate_limit, verdict.rule.rate_window, verdict.retry_after, verdict.rule.name
                ),
            )
            return
        assert isinstance(verdict, Allowed)
        self._rates.charge(verdict.charges, ex.at)
        ex.injected = tuple(c.name for c in verdict.credentials)
        if verdict.tied:  # a tie stored before `secrets add` refused them: the audit names who was left out
            tie = "tie: " + ",".join(sorted({left for left, _ in verdict.tied})) + " left out"
            ex.rule = f"{ex.rule}; {tie}" if ex.rule else tie  # after the approval rule that held it, if one did
        # A stored secret for the host wins; else the host's app connection, if it is one's.
        token_call = is_agent_token_call(ex.method, head.host, ex.path) if not verdict.credentials else None
        if token_call is not None:
            await self._answer_token_call(side, ex, body, token_call)
            return
        app = provider_for_host(head.host) if not verdict.credentials else None
        await self._forward(side, ex, head, upstream, trusted, body, verdict.credentials, view, app)

    async def _answer_token_call(self, side: _Side, ex: _Exchange, body: _Body, app: Provider) -> None:
        """A client library's refresh, answered here: a placeholder token when the app is connected."""
        await body.preview(MAX_TOKEN_CALL_BODY)
        if self.apps.connected(app.name, ex.group) is None:
            ex.decision = "app_not_connected"
            await self._reply(side, ex, app_not_connected(app, ex.host, ex.path, 400))
            return
        ex.decision, ex.injected = "app_token_synthetic", (f"app:{app.name}",)
        await self._reply(side, ex, synthetic_token(), close=not body.complete)

    def _view(self, group: str, host: str) -> GroupView:
        """The group's view; under an allowlist, a connected app's hosts count as hosts it holds a credential for."""
        view = self.catalog.view(group)
        app = provider_reaching(host) if view.egress == "allowlist" else None
        if app is not None and self.apps.connected(app.name, group) is not None:
            return dataclasses.replace(view, egress="open")
        return view

    def _tell_limit(self, verdict: Limited, ex: _Exchange) -> None:
        """Tell the owner the first time a limit stops a request in a window (per rule and group)."""
        key = verdict.key
        if key is None or key in self._told:
            return
        if len(self._told) > MAX_TOLD:
            self._told = {k for k in self._told if k.ends > ex.at}
        self._told.add(key)
        trip = LimitTrip(
            rule=key.rule,
            agent_group=key.group,
            limit=verdict.rule.rate_limit,
            window=verdict.rule.rate_window,
            window_index=key.window,
            window_seconds=key.seconds,
            method=ex.method,
            host=ex.host,
            path=ex.path,
        )
        task = asyncio.ensure_future(self._approver.tell_limit(trip))
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    async def _ask(self, ex: _Exchange, head: RequestHead, body: _Body, verdict: Ask, view: GroupView) -> str:
        """Hold the request while a human decides; the agent hanging up ends the wait."""
        ex.rule = verdict.rule.name
        ex.approval_id = uuid.uuid4().hex  # each ask its own: a second rule that asks is a second approval
        preview = await body.preview(PREVIEW_BYTES)
        values = [c.value for c in (*view.granted, *view.others)]
        size = body.size if body.complete else declared_length(head.headers)
        ask = ApprovalAsk(
            id=ex.approval_id,
            agent_group=ex.group,
            method=ex.method,
            host=ex.host,
            body_bytes=size,
            body_whole=body.complete and body.size <= PREVIEW_BYTES,
            path=head.target.decode("ascii", "replace"),
            rule=verdict.rule.name,
            preview=redact_preview(preview, values),
            expires_at=self._clock() + self._approval_timeout,
        )
        asking = asyncio.ensure_future(self._approver.ask(ask))
        hangup = asyncio.ensure_future(_wait_hangup(body.side))
        try:
            # No timer here: the approver ends the wait itself (`Approver.ask`), and a decision it gives is the answer
            # however long its last steps took. A timer could only turn a press the card shows applied into a refusal.
            await asyncio.wait({asking, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone = hangup.done() and not hangup.cancelled()
            hangup.cancel()
            if not asking.done():  # the cancel's words go on the card, as why the ask was withdrawn
                asking.cancel("the agent hung up while it waited" if gone else "the vault stopped waiting for it")
            # Its read must be over before the connection reads again (one reader at a time).
            await asyncio.wait({hangup, asking})
        if asking.cancelled():
            raise _ClientGone  # the agent hung up while a human was being asked
        return asking.result()

    async def _forward(
        self,
        side: _Side,
        ex: _Exchange,
        head: RequestHead,
        upstream: Origin,
        trusted: bool,
        body: _Body,
        credentials: tuple[Credential, ...],
        view: GroupView,
        app: Provider | None = None,
    ) -> None:
        bearer = ""
        if app is not None and self.apps.connected(app.name, ex.group) is not None:
            try:
                bearer = await self.apps.token(app, ex.group)
            except NotConnected as exc:
                ex.decision = "app_not_connected"
                await self._reply(side, ex, app_not_connected(exc.app, ex.host, ex.path, 401, exc.why))
                return
            ex.injected = (f"app:{app.name}",)
        upgrade = wants_upgrade(list(head.headers))
        sent = await self._send(side, ex, head, upstream, trusted, body, credentials, view, app, bearer)
        if sent is None:
            return
        response, bearer = sent
        pairs = echoes(credentials, head.target)
        if bearer:  # should the site ever quote the token, the agent reads the placeholder instead
            pairs.append((bearer.encode(), PLACEHOLDER_TOKEN.encode()))
        if response.switched:
            if not upgrade or not wants_upgrade([(b"connection", b"upgrade"), *response.headers]):
                # A switch nobody asked for (or not to WebSocket): no pipe.
                why = f"{ex.host} switched protocols unasked; only WebSocket is passed on"
                await self._refuse_response(side, ex, response, "upgrade_refused", why)
                return
            await self._upgrade(side, ex, response, EchoScrubber(pairs))
            return
        if response.status in (401, 403) and not credentials and not bearer:
            response.connection.close()  # its body is not wanted; the pool must not get it half-read
            await self._reply(side, ex, _refused_reply(response.status, ex, head, view, app))
            return
        if pairs and _encoded(response.headers):
            # Asked for identity, the site compressed anyway: a value in there could not be scrubbed.
            why = f"{ex.host} sent a compressed response where identity was asked"
            await self._refuse_response(side, ex, response, "refused", why)
            return
        await self._stream_response(side, ex, response, EchoScrubber(pairs))

    async def _send(
        self,
        side: _Side,
        ex: _Exchange,
        head: RequestHead,
        upstream: Origin,
        trusted: bool,
        body: _Body,
        credentials: tuple[Credential, ...],
        view: GroupView,
        app: Provider | None,
        bearer: str,
    ) -> tuple[Response, str] | None:
        """The request, with its credentials, sent and the response head read (with the app's token
        refreshed and the request sent again once on a 401); None when it was answered here instead."""
        request_headers = list(head.headers)
        upgrade = wants_upgrade(request_headers)
        headers = [
            (k, v) for k, v in strip_hop_by_hop(request_headers, keep_upgrade=upgrade) if k not in DROPPED_UPSTREAM
        ]
        headers, target = inject(credentials, headers, head.target)
        headers.insert(0, (b"host", upstream.authority))
        if credentials or bearer:
            # The response is scrubbed of what went in, which only works on bytes as they are sent.
            headers = [(k, v) for k, v in headers if k != b"accept-encoding"] + [(b"accept-encoding", b"identity")]
        scanner = LeakScanner(leak_candidates(view, head.host))
        aws = next((c for c in reversed(credentials) if c.secret.kind == "aws"), None)
        try:
            if aws is not None and not sigv4.unsigned(head.headers):
                await body.preview(AWS_BODY_LIMIT + 1)  # hashed for the signature: read it whole first
            source = body.source(scanner)
            headers += _framing(source, request_headers)
            if aws is not None:
                headers = self._sign(aws, head, upstream, target, headers, source)
            method = head.method.encode()
            response = await self._upstream.request(
                upstream, method, target, _bearing(headers, bearer), source, trusted=trusted, owner=ex.group
            )
            if app is not None and bearer and response.status == 401 and isinstance(source, bytes):
                # The token's own expiry said it was good, the site says not (revoked, rotated): once more
                # with a fresh one. A streamed body is gone, so then the 401 goes back as it is.
                response.connection.close()
                bearer = await self.apps.token(app, ex.group, stale=bearer)
                response = await self._upstream.request(
                    upstream, method, target, _bearing(headers, bearer), source, trusted=trusted, owner=ex.group
                )
        except sigv4.SigningRefused as exc:
            ex.decision = "refused"
            await self._reply(side, ex, responses.gateway_error(400, "aws_signing_refused", str(exc)), close=True)
            return None
        except LeakFound as exc:
            ex.decision = "leak_blocked"
            await self._reply(
                side, ex, responses.secret_leak_blocked(ex.method, ex.host, ex.path, exc.secret), close=True
            )
            return None
        except UpstreamError as exc:
            ex.decision = "error"
            await self._reply(side, ex, responses.gateway_error(exc.status, exc.code, str(exc)))
            return None
        except NotConnected as exc:
            ex.decision = "app_not_connected"
            await self._reply(side, ex, app_not_connected(exc.app, ex.host, ex.path, 401, exc.why))
            return None
        if scanner.redacted:
            # Say which, never the value: a conversation that quoted a key goes on without it.
            ex.decision = "redacted"
            log.warning(
                "agent group %s sent the value of %s to %s: redacted",
                ex.group,
                ", ".join(sorted(scanner.redacted)),
                ex.host,
            )
        return response, bearer

    def _sign(
        self,
        aws: Credential,
        head: RequestHead,
        upstream: Origin,
        target: bytes,
        headers: list[Header],
        source: bytes | AsyncIterator[bytes],
    ) -> list[Header]:
        """The request signed with the stored AWS keys, as it finally goes (SigningRefused if it cannot be)."""
        scope = sigv4.scope_of(head.headers, head.host)
        if scope is None:
            raise sigv4.SigningRefused(
                f"the vault cannot tell the AWS region and service of {head.host}; sign the request in the SDK "
                "(any placeholder keys) so its scope says them"
            )
        body_hash = sigv4.payload_hash(head.headers, source if isinstance(source, bytes) else None)
        keys = sigv4.parse_keys(aws.value)
        host = upstream.authority.decode()
        return sigv4.sign(head.method, host, target, headers, keys, scope, body_hash, self._clock())

    async def _stream_response(
        self, side: _Side, ex: _Exchange, response: Response, scrubber: EchoScrubber | None = None
    ) -> None:
        ex.status = response.status
        headers = strip_hop_by_hop(response.headers)
        if ex.injected and ex.host == MODEL_HOST and self.model_answered is not None:
            self.model_answered(ex.injected, response.status)
        if response.status in KEY_REFUSED and ex.injected and ex.host == MODEL_HOST:
            # The model API refused the key the vault put in: the same key again cannot pass, and Claude Code would
            # try again for minutes. The Anthropic SDKs' own header ends that, so the agent fails at once and says
            # how the owner sets the right key (its runner names the command).
            headers = [(k, v) for k, v in headers if k.lower() != b"x-should-retry"] + [(b"x-should-retry", b"false")]
        if scrubber:
            # A value injected into the request goes back as the agent's placeholder (Location, bodies
            # quoting the path, the query or a header); the body's length may change, so it goes chunked.
            bodiless = ex.method == "HEAD" or response.status in NO_BODY_STATUSES
            headers = [(k, scrubber.scrub(v)) for k, v in headers if bodiless or k.lower() != b"content-length"]
        # Without a content-length h11 frames the body as chunked, so SSE can flow event by event.
        reason = scrubber.scrub(response.reason) if scrubber else response.reason
        head = h11.Response(status_code=response.status, headers=headers, reason=reason)
        if self._upstream.body_here(response):
            side.hold(head)  # goes with the body's first part, read without waiting
        else:
            side.send(head)  # the agent hears the status now; the body follows as it comes
        chunks = self._upstream.body_chunks(response)
        try:
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except (TimeoutError, OSError, ssl.SSLError, h11.ProtocolError) as exc:
                    # The head is already out: only closing the connection can tell the agent.
                    log.warning("%s failed mid-response for %s: %s", ex.host, ex.group, type(exc).__name__)
                    ex.decision = "upstream_broke"
                    raise _ClientGone from exc
                if scrubber:
                    chunk = scrubber.feed(chunk)
                if chunk:
                    side.send(h11.Data(data=chunk))
                    ex.bytes_out += len(chunk)
                side.flush()  # the head, should the scrubber have held this part back
                await side.writer.drain()
        finally:
            await chunks.aclose()
        if scrubber and (rest := scrubber.flush()):
            side.send(h11.Data(data=rest))
            ex.bytes_out += len(rest)
        side.send(h11.EndOfMessage())
        await side.writer.drain()

    async def _refuse_response(self, side: _Side, ex: _Exchange, response: Response, decision: str, why: str) -> None:
        """The site's answer is not passed on: its connection closed (its body is not wanted, and the pool must
        not get it half-read) and the agent told why, as a 502."""
        response.connection.close()
        ex.decision = decision
        await self._reply(side, ex, responses.gateway_error(502, "bad_gateway", why))

    async def _upgrade(self, side: _Side, ex: _Exchange, response: Response, scrubber: EchoScrubber) -> None:
        """A 101 from upstream: pass it back, its headers scrubbed of what was injected as any answer's are,
        then pipe both ways until either side closes."""
        ex.status, ex.decision = 101, "websocket"
        headers = [(k, scrubber.scrub(v)) for k, v in response.headers]
        reason = scrubber.scrub(response.reason)
        side.send(h11.InformationalResponse(status_code=101, headers=headers, reason=reason))
        upstream = response.connection
        leftover_agent = side.conn.trailing_data[0]
        leftover_site = upstream.h11.trailing_data[0]
        if leftover_site:
            side.writer.write(leftover_site)
        if leftover_agent:
            upstream.writer.write(leftover_agent)
        try:
            ex.bytes_out = await _pipe(side.reader, side.writer, upstream.reader, upstream.writer)
        finally:
            upstream.close()
        raise _ClientGone  # the connection is spent

    async def _selftest(self, side: _Side, ex: _Exchange) -> None:
        """The host the agent runner checks its CA trust against, answered here and never forwarded."""
        ex.decision = "selftest"
        body = ex.body
        assert body is not None
        data = await body.preview(MAX_SELFTEST_BODY)
        if not body.complete:
            await self._reply(side, ex, responses.gateway_error(413, "request_too_large", "self-test body too big"))
            return
        await self._reply(side, ex, responses.selftest(ex.group, ex.method, ex.path, data))

    async def _reply(self, side: _Side, ex: _Exchange, reply: Reply, close: bool = False) -> None:
        ex.status = reply.status
        if side.conn.our_state is not h11.SEND_RESPONSE:
            raise _ClientGone  # a response already started; nothing clean can follow
        if ex.body is not None and not close:
            # A body that already arrived whole lets the connection live on after the answer.
            with contextlib.suppress(h11.RemoteProtocolError, _ClientGone):
                ex.body._take()
        side.send_reply(reply, close=close)
        await side.writer.drain()

    def _record(self, ex: _Exchange) -> None:
        record = AuditRecord(
            agent_group=ex.group,
            method=ex.method,
            host=ex.host,
            path=ex.path,
            status=ex.status,
            duration_ms=(time.perf_counter() - ex.started) * 1000.0,
            decision=ex.decision,
            rule=ex.rule,
            bytes_in=ex.body.size if ex.body is not None else 0,
            bytes_out=ex.bytes_out,
            injected=ex.injected,
            approval_id=ex.approval_id,
            at=ex.at,
        )
        self._audit_safely(record)

    def _audit_safely(self, record: AuditRecord) -> None:
        try:
            self._audit(record)
        except Exception:
            # A broken audit sink must not take the agent's traffic down with it.
            log.exception("audit sink failed")


def _bearing(headers: list[Header], token: str) -> list[Header]:
    """The headers with the app's access token as the one Authorization (none: as they are)."""
    if not token:
        return headers
    return [
        *((k, v) for k, v in headers if k.lower() != b"authorization"),
        (b"authorization", f"Bearer {token}".encode()),
    ]


def _refused_reply(status: int, ex: _Exchange, head: RequestHead, view: GroupView, app: Provider | None) -> Reply:
    """What a 401/403 for a request that carried no credential becomes: what the agent can do about it."""
    if app is not None:
        ex.decision = "app_not_connected"
        return app_not_connected(app, ex.host, ex.path, status)
    others = [c.name for c in stored_for_host(view.others, head)]
    ex.decision = "credential_not_found" if not others else "access_restricted"
    if others:
        return responses.access_restricted(status, ex.host, ex.path, others)
    return responses.credential_not_found(status, ex.host, ex.path)


def _framing(source: bytes | AsyncIterator[bytes], request_headers: list[Header]) -> list[Header]:
    """How the body goes upstream: its length when known, else chunked; nothing for no body at all."""
    if isinstance(source, bytes):
        if source or _has_body_framing(request_headers):
            return [(b"content-length", str(len(source)).encode())]
        return []
    length = next((v for k, v in request_headers if k == b"content-length"), None)
    return [(b"content-length", length) if length is not None else (b"transfer-encoding", b"chunked")]


def _encoded(headers: Sequence[Header]) -> bool:
    """Whether a response's body is content-encoded (gzip, br...), so its bytes are not the text."""
    codings = (c.strip().lower() for k, v in headers if k.lower() == b"content-encoding" for c in v.split(b","))
    return any(c not in (b"", b"identity") for c in codings)


def _has_body_framing(headers: list[Header]) -> bool:
    return any(k in (b"content-length", b"transfer-encoding") for k, _ in headers)


def declared_length(headers: Sequence[Header]) -> int | None:
    value = next((v for k, v in headers if k == b"content-length"), None)
    return int(value) if value is not None and value.strip().isdigit() else None


def declares_body(headers: list[Header]) -> bool:
    return any(k == b"transfer-encoding" or (k == b"content-length" and v.strip() != b"0") for k, v in headers)


async def _wait_hangup(side: _Side, limit: int = 1 << 20) -> None:
    """Returns when the agent closes its connection while its request is held.

    Bytes that arrive meanwhile (the rest of the body, a pipelined request) go to h11's buffer,
    where the request's own reading finds them; past ``limit`` we stop reading and just wait.
    """
    buffered = 0
    while buffered < limit:
        try:
            data = await side.reader.read(READ_SIZE)
        except (ConnectionError, OSError, ssl.SSLError):
            return
        if not data:
            return
        buffered += len(data)
        side.conn.receive_data(data)
    await asyncio.Event().wait()


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    """Close an agent connection, its unsent bytes given a few seconds to go. Bounded: after a failed TLS
    handshake asyncio may never report the close to the stream; and an agent that reads nothing would keep
    the descriptor open after its slot was freed, so past the bound the connection is dropped."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except (ConnectionError, OSError, ssl.SSLError):
        pass


def _peer_of(sock: socket.socket) -> str:
    """The address a TLS listener connection is counted under (`peer_address`)."""
    try:
        return peer_address(sock.getpeername())
    except OSError:  # it left already: its handshake fails at once
        return ""


def _clear_socket_path(socket_path: Path) -> None:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(socket_path.lstat().st_mode):
            raise FileExistsError(f"{socket_path} exists and is not a socket")
        socket_path.unlink()  # left by a previous run that did not shut down cleanly


async def _pipe(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> int:
    """Bidirectional copy with half-close; a reset on either side ends both. Returns bytes b→a."""
    copied = [0, 0]

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: int) -> None:
        try:
            while data := await reader.read(READ_SIZE):
                copied[slot] += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (ConnectionError, OSError, ssl.SSLError):
            a_writer.transport.abort()
            b_writer.transport.abort()

    await asyncio.gather(pump(a_reader, b_writer, 0), pump(b_reader, a_writer, 1))
    return copied[1]
