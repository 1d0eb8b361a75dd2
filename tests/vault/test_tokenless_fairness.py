"""The tokenless pool makes room by peer address: past its cap it drops the oldest connection of the address that holds
the most, so a flood from one address pushes out its own connections, and another address's TLS handshake, however
slow, gets through to show its token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.vault.audit import AuditRecord
from services.vault.gateway import TOKENLESS, Gateway
from services.vault.tokenless import Unauthenticated, peer_address
from tests.eventually import eventually
from tests.fakes.anthropic import FakeTLS
from tests.vault.sites import FakeUpstream, close_writer
from tests.vault.test_tcp_transport import exchange, model_call
from tests.vault.test_unauthenticated import Stream, close_all, closed_by_gateway, listener

pytestmark = pytest.mark.timeout(30)

A, B, C, X = "10.0.0.1", "10.0.0.2", "2001:db8::3", "10.0.0.9"


def admit_all(pool: Unauthenticated[str, int], arrivals: list[tuple[str, str]]) -> list[str | None]:
    """Each (key, address) admitted in turn: the key each arrival dropped, or None."""
    dropped = [pool.admit(key, n, peer) for n, (key, peer) in enumerate(arrivals)]
    return [None if gone is None else gone[0] for gone in dropped]


def test_a_flood_from_one_address_drops_its_own_oldest_and_keeps_anothers() -> None:
    pool: Unauthenticated[str, int] = Unauthenticated(4)
    dropped = admit_all(pool, [("a1", A), ("a2", A), ("a3", A), ("h", B)] + [(f"a{n}", A) for n in range(4, 10)])

    assert dropped == [None] * 4 + ["a1", "a2", "a3", "a4", "a5", "a6"]
    assert list(pool.waiting) == ["h", "a7", "a8", "a9"]
    assert pool.dropped == 6


def test_another_address_loses_one_only_once_it_holds_as_many_as_the_most() -> None:
    pool: Unauthenticated[str, int] = Unauthenticated(4)
    arrivals = [("a1", A), ("b1", B), ("b2", B), ("a2", A), ("c1", C), ("c2", C), ("c3", C)]
    dropped = admit_all(pool, arrivals)

    # A and B hold two each: A's oldest came first. Then B alone holds two, then C does.
    assert dropped == [None] * 4 + ["a1", "b1", "c1"]
    assert list(pool.waiting) == ["b2", "a2", "c2", "c3"]


def test_among_addresses_holding_equally_many_the_one_whose_oldest_came_first_is_trimmed() -> None:
    pool: Unauthenticated[str, int] = Unauthenticated(4)
    admit_all(pool, [("a1", A), ("b1", B), ("a2", A), ("b2", B)])
    left = pool.leave("a1")
    more = pool.admit("a3", 5, A)  # A holds two again, but its oldest now came after B's
    dropped = pool.admit("x1", 6, X)

    assert (left, more, dropped) == (0, None, ("b1", 1))
    assert list(pool.waiting) == ["a2", "b2", "a3", "x1"]


def reference_drop(waiting: list[tuple[str, str]]) -> str:
    """The rule by brute force over (key, address), oldest first: the first key of an address holding the most."""
    held = Counter(peer for _, peer in waiting)
    return next(key for key, peer in waiting if held[peer] == max(held.values()))


@pytest.mark.parametrize("addresses", [3, 40])
def test_the_pool_drops_as_the_rule_says_over_many_comings_and_goings(addresses: int) -> None:
    rng = random.Random(addresses)
    pool: Unauthenticated[str, int] = Unauthenticated(8)
    model: list[tuple[str, str]] = []  # (key, address), oldest first
    for n in range(5000):
        if model and rng.random() < 0.3:
            key, _ = model.pop(rng.randrange(len(model)))
            assert pool.leave(key) is not None
            continue
        key, peer = f"k{n}", f"10.0.{min(rng.randrange(addresses), rng.randrange(addresses))}.1"  # some flood more
        expected = reference_drop(model) if len(model) == pool.cap else None
        dropped = pool.admit(key, n, peer)
        assert (None if dropped is None else dropped[0]) == expected
        model = [entry for entry in model if entry[0] != expected] + [(key, peer)]
        assert list(pool.waiting) == [key for key, _ in model]


@pytest.mark.parametrize(
    ("peername", "address"),
    [
        (("127.0.0.2", 50123), "127.0.0.2"),
        (("::ffff:10.1.2.3", 50123, 0, 0), "10.1.2.3"),  # a dual-stack listener's IPv4 peer
        (("::ffff:7f00:1", 1, 0, 0), "127.0.0.1"),
        (("2001:DB8:0:0::1", 50123, 0, 0), "2001:db8::1"),  # one spelling
        (("fe80::1%eth0", 50123, 0, 2), "fe80::1%eth0"),
        (("::1", 50123, 0, 0), "::1"),
        (None, ""),  # it left before it was asked
        ("/run/some.sock", ""),
        (("not-an-ip", 0), "not-an-ip"),  # no TCP peer is so named: counted under the name as given
    ],
)
def test_a_peer_is_counted_under_its_ip_alone_in_one_spelling(peername: object, address: str) -> None:
    assert peer_address(peername) == address


CAP = 8
FLOODER, HONEST = "127.0.0.1", "127.0.0.2"  # Linux routes all of 127.0.0.0/8 to lo


async def connect_from(source: str, port: int) -> Stream:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def flood_until_admitted(gateway: Gateway, port: int, flood: list[Stream], count: int) -> None:
    """`count` more tokenless connections from FLOODER, each once the gateway has made room for it."""
    for _ in range(count):
        dropped = gateway.unauthenticated.dropped
        flood.append(await connect_from(FLOODER, port))
        await eventually(lambda: gateway.unauthenticated.dropped == dropped + 1)  # noqa: B023 (awaited at once)


@contextlib.asynccontextmanager
async def flooding(port: int) -> AsyncIterator[None]:
    """Connections from FLOODER opened one after another, as fast as they go, for as long as the block lasts."""
    opened: list[Stream] = []

    async def flood() -> None:
        while True:
            opened.append(await connect_from(FLOODER, port))
            if len(opened) > 4 * CAP:  # long dropped by the gateway: closed here too, to bound the test's descriptors
                await close_all([opened.pop(0)])

    task = asyncio.create_task(flood())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await close_all(opened)


async def honest_answer(sock: socket.socket, ca_pem: bytes) -> bytes | str:
    """The TLS handshake on a connection opened earlier, then a request showing its token: its answer, or how it
    failed."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        reader, writer = await asyncio.open_connection(sock=sock, ssl=context, server_hostname="127.0.0.1")
    except (OSError, EOFError) as exc:  # ssl.SSLError and ConnectionResetError are OSErrors
        return f"handshake failed: {exc!r}"
    try:
        return await exchange(reader, writer, model_call("a"))
    except (OSError, EOFError) as exc:
        return f"request failed: {exc!r}"
    finally:
        await close_writer(writer)


async def test_a_flood_from_one_address_cannot_push_out_another_addresss_handshake(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clawden.vault")
    audited: list[AuditRecord] = []
    async with contextlib.AsyncExitStack() as stack:
        gateway, port = await stack.enter_async_context(
            listener(site, site_tls, tls_dir=sock_dir / "listener", audit=audited.append, cap=CAP)
        )
        flood: list[Stream] = []
        stack.push_async_callback(close_all, flood)
        for _ in range(CAP):
            flood.append(await connect_from(FLOODER, port))
        await eventually(lambda: len(gateway.unauthenticated.waiting) == CAP)
        # The honest runner connects, then holds back its ClientHello while the flood goes on: first many times the
        # cap, each connection admitted, then on and on through its handshake and request.
        honest = socket.socket()
        stack.callback(honest.close)
        honest.setblocking(False)
        honest.bind((HONEST, 0))
        await asyncio.get_running_loop().sock_connect(honest, ("127.0.0.1", port))
        await eventually(lambda: gateway.unauthenticated.dropped == 1)  # admitted: one of the flood made room
        await flood_until_admitted(gateway, port, flood, 4 * CAP)
        async with flooding(port):
            answer = await honest_answer(honest, gateway.ca.cert_pem)
        first_dropped = await closed_by_gateway(flood[0][0])
        await close_all(flood)
        (burst,) = await eventually(lambda: [r for r in audited if r.agent_group == TOKENLESS])

    assert isinstance(answer, bytes) and answer.startswith(b"HTTP/1.1 200 "), answer
    assert first_dropped
    assert burst.decision == "too_many_tokenless" and burst.count > 4 * CAP  # one record for the burst, as before
    started = [r.getMessage() for r in caplog.records if "no token: " in r.getMessage()]
    assert started == [
        f"the gateway's TCP listener has {CAP} connections that showed no token: as more come, dropping the oldest of "
        f"the address that holds the most (now {FLOODER}; said again once it is down to {CAP // 2})"
    ]
