"""The TCP listener's connections that have shown no token yet (so belong to no group's cap): one pool for them all,
the oldest dropped past its cap (of the address that holds the most: test_tokenless_fairness.py), each given a bounded
time to show its token, a TLS handshake included. A flood of them holds no more than the cap's descriptors, and
neither honest connections nor authenticated groups are stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clawden.bus.events import GROUP_NAME
from services.vault.audit import AuditRecord, AuditSink, log_audit
from services.vault.catalog import Catalog
from services.vault.certs import ListenerTls
from services.vault.gateway import TOKENLESS, Gateway, token_hash
from services.vault.tokenless import Unauthenticated
from tests.eventually import eventually
from tests.fakes.anthropic import FakeTLS
from tests.vault.conftest import SITES
from tests.vault.sites import FakeUpstream, close_writer
from tests.vault.test_tcp_transport import exchange, model_call

pytestmark = pytest.mark.timeout(30)

CAP = 4
A = "family"
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def listener(
    site: FakeUpstream,
    site_tls: FakeTLS,
    timeout: float = 60.0,
    tls_dir: Path | None = None,
    audit: AuditSink = log_audit,
    cap: int = CAP,
) -> AsyncIterator[tuple[Gateway, int]]:
    """A gateway whose TCP listener keeps `cap` tokenless connections at most, each for `timeout` seconds; speaking
    TLS (its certificate kept in `tls_dir`) when given one."""
    gateway = Gateway(
        catalog=Catalog(),
        extra_ca_file=site_tls.ca_file,
        host_map=dict.fromkeys(SITES, site.address),
        max_unauthenticated=cap,
        unauthenticated_timeout=timeout,
        audit=audit,
    )
    gateway.update_tokens({token_hash("a"): A})
    tls = ListenerTls(gateway.ca, tls_dir, ("127.0.0.1",)).context if tls_dir else None
    try:
        yield gateway, await gateway.listen_tcp("127.0.0.1", 0, tls)
    finally:
        await gateway.close()


async def connect(port: int) -> Stream:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_gateway(reader: asyncio.StreamReader) -> bool:
    """Whether the gateway ended the connection (read to its end, or reset)."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


async def close_all(streams: list[Stream]) -> None:
    for _, writer in streams:
        await close_writer(writer)


async def test_a_flood_of_tokenless_connections_holds_only_the_newest_few_and_no_group_is_stopped(
    site: FakeUpstream, site_tls: FakeTLS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clawden.vault")
    audited: list[AuditRecord] = []
    async with listener(site, site_tls, audit=audited.append) as (gateway, port):
        authenticated = await connect(port)
        flood: list[Stream] = []
        try:
            first = await exchange(*authenticated, model_call("a"))
            for _ in range(5 * CAP):
                flood.append(await connect(port))
                await eventually(lambda: len(gateway._connections) == min(len(flood), CAP) + 1)
            dropped = [await closed_by_gateway(reader) for reader, _ in flood[:-CAP]]
            waiting = len(gateway.unauthenticated.waiting)
            still = await exchange(*authenticated, model_call(None))  # an authenticated group goes on
            honest = await connect(port)  # a new connection that shows its token at once gets through
            flood.append(honest)
            theirs = await exchange(*honest, model_call("a"))
            # The newest of the flood were held, not dropped: the three the honest one left show a token in time.
            kept = [await exchange(*stream, model_call("a")) for stream in flood[-CAP:-1]]
            await eventually(lambda: not gateway.unauthenticated.waiting)
        finally:
            await close_all([authenticated, *flood])

    assert first.startswith(b"HTTP/1.1 200 ")
    assert dropped == [True] * 4 * CAP
    assert waiting == CAP
    assert still.startswith(b"HTTP/1.1 200 ") and theirs.startswith(b"HTTP/1.1 200 ")
    assert [answer.split(b" ")[1] for answer in kept] == [b"200"] * (CAP - 1)
    assert [r.getMessage() for r in caplog.records if "no token" in r.getMessage()] == [
        f"the gateway's TCP listener has {CAP} connections that showed no token: as more come, dropping the oldest "
        f"of the address that holds the most (now 127.0.0.1; said again once it is down to {CAP // 2})",
        f"the gateway's TCP listener is down to {CAP // 2} connections that showed no token; {4 * CAP + 1} were "
        "dropped to make room",
    ]
    # The burst is audited once too, with its count, under a name no agent group can have.
    (burst,) = [r for r in audited if r.agent_group == TOKENLESS]
    assert (burst.decision, burst.status, burst.count) == ("too_many_tokenless", 0, 4 * CAP + 1)
    assert burst.event().summary == f"tcp:no-token -> 0 too_many_tokenless x{4 * CAP + 1}"
    assert all(r.agent_group == A for r in audited if r is not burst)  # the requests, each its own record
    assert not GROUP_NAME.match(TOKENLESS)


async def test_a_connection_that_shows_no_token_in_time_is_closed_and_one_that_did_is_kept(
    site: FakeUpstream, site_tls: FakeTLS
) -> None:
    async with listener(site, site_tls, timeout=1.0) as (_, port):
        shown = await connect(port)
        silent = await connect(port)
        refused = await connect(port)  # answered 407, then idle: the time is from its accept, not per request
        try:
            first = await exchange(*shown, model_call("a"))
            answer = await exchange(*refused, model_call(None))
            ended = [await closed_by_gateway(reader) for reader, _ in (silent, refused)]
            later = await exchange(*shown, model_call(None))  # its own time was up before theirs
        finally:
            await close_all([shown, silent, refused])

    assert first.startswith(b"HTTP/1.1 200 ") and answer.startswith(b"HTTP/1.1 407 ")
    assert ended == [True, True]
    assert later.startswith(b"HTTP/1.1 200 ")


async def tls_connect(port: int, ca_pem: bytes) -> Stream:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")


async def test_on_a_tls_listener_a_handshake_counts_as_not_yet_shown_and_is_bounded(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        gateway, port = await stack.enter_async_context(listener(site, site_tls, 2.0, sock_dir / "listener"))
        silent = [await connect(port) for _ in range(CAP + 2)]  # never a ClientHello
        stack.push_async_callback(close_all, silent)
        await eventually(lambda: len(gateway._connections) == CAP)
        dropped = [await closed_by_gateway(reader) for reader, _ in silent[:2]]
        honest = await tls_connect(port, gateway.ca.cert_pem)  # it makes room: the oldest silent one goes
        stack.push_async_callback(close_all, [honest])
        theirs = await exchange(*honest, model_call("a"))
        timed_out = [await closed_by_gateway(reader) for reader, _ in silent[2:]]
        later = await exchange(*honest, model_call(None))

    assert dropped == [True, True]
    assert theirs.startswith(b"HTTP/1.1 200 ")
    assert timed_out == [True] * CAP  # one dropped for the honest one, the rest once their time was up
    assert later.startswith(b"HTTP/1.1 200 ")


def test_the_pool_drops_its_oldest_past_the_cap_and_ends_a_burst_at_half_of_it() -> None:
    pool: Unauthenticated[str, int] = Unauthenticated(4)
    admitted = [pool.admit(name, n, "10.0.0.1") for n, name in enumerate("abcdef")]
    during = pool.burst_ended()
    left = pool.leave("c"), pool.leave("c"), pool.leave("d")
    at_half = pool.burst_ended(), pool.burst_ended()

    assert admitted == [None] * 4 + [("a", 0), ("b", 1)]  # the oldest go first
    assert during == 0  # still full: the burst goes on
    assert left == (2, None, 3)  # a connection leaves once
    assert at_half == (2, 0)  # told once
    assert list(pool.waiting) == ["e", "f"]
