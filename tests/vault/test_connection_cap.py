"""The gateway's cap on each agent group's concurrent connections: past it a connection gets a 429 and is
closed, the refusals of a burst are logged and audited once, and another group goes on being served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import h11
import msgspec
import pytest

from clawden.bus.ctl import vault as api
from services.vault.audit import AuditRecord, log_audit
from services.vault.catalog import Catalog
from services.vault.gateway import REFUSALS_ANSWERED_AT_ONCE, ConnectionSlots, Gateway, token_hash
from services.vault.store import Store
from tests.eventually import eventually
from tests.fakes.anthropic import FakeTLS
from tests.vault.conftest import SITES
from tests.vault.sites import FakeUpstream, close_writer, open_tunnel, read_response, send_raw
from tests.vault.test_tcp_transport import exchange, model_call

pytestmark = pytest.mark.timeout(30)

CAP = 4
A, B = "family", "work"
HOST = "api.example.test"
CONNECT = f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode()

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def capped(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path, audit: list[AuditRecord] | None = None
) -> AsyncIterator[tuple[Gateway, dict[str, Path]]]:
    """A gateway capping each group at CAP connections, serving A and B on their own sockets."""
    gateway = Gateway(
        catalog=Catalog(),
        extra_ca_file=site_tls.ca_file,
        host_map=dict.fromkeys(SITES, site.address),
        max_connections_per_group=CAP,
        audit=audit.append if audit is not None else log_audit,
    )
    sockets = {group: sock_dir / group / "gateway.sock" for group in (A, B)}
    for group, path in sockets.items():
        await gateway.listen(group, path)
    try:
        yield gateway, sockets
    finally:
        await gateway.close()


async def tunnel(gateway: Gateway, path: Path) -> Stream:
    return await open_tunnel(path, HOST, gateway.ca.cert_pem)


async def get(stream: Stream) -> int:
    """One request on an open tunnel: the site's status."""
    reader, writer = stream
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target="/user", headers=[("host", HOST)])
    writer.write((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
    response, _ = await read_response(conn, reader)
    return response.status_code


async def answer_to_connect(path: Path) -> tuple[h11.Response, dict[str, object]]:
    """A CONNECT on a new connection: the answer, read to the connection's end (so it was closed after it)."""
    reader, writer = await send_raw(path, CONNECT)
    try:
        data = await reader.read()
    finally:
        await close_writer(writer)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="CONNECT", target=f"{HOST}:443", headers=[("host", f"{HOST}:443")]))
    conn.receive_data(data)
    conn.receive_data(b"")
    response, body = await read_response(conn, reader)
    return response, json.loads(body)


async def close_all(streams: list[Stream]) -> None:
    for _, writer in streams:
        await close_writer(writer)


async def test_a_group_past_its_cap_gets_429s_while_another_group_is_served(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path
) -> None:
    async with capped(site, site_tls, sock_dir) as (gateway, sockets):
        held = [await tunnel(gateway, sockets[A]) for _ in range(CAP)]
        try:
            over = [await answer_to_connect(sockets[A]) for _ in range(3)]
            still = await get(held[-1])  # the connections within the cap are untouched
            theirs = await tunnel(gateway, sockets[B])
            other_group = await get(theirs)
            await close_writer(theirs[1])

            await close_all(held[:2])
            del held[:2]
            await eventually(lambda: gateway.slots.held.get(A) == CAP - 2, message="A's closed connections kept")
            held += [await tunnel(gateway, sockets[A]) for _ in range(2)]
            again = [await get(stream) for stream in held[-2:]]
        finally:
            await close_all(held)

    for response, body in over:
        headers = dict(response.headers)
        assert response.status_code == 429
        assert body["error"] == "too_many_connections" and body["limit"] == CAP
        assert f"Agent group {A} already has {CAP} connections open" in str(body["message"])
        assert headers[b"retry-after"] == b"1" and b"x-should-retry" not in headers  # the SDKs may try again
        assert headers[b"connection"] == b"close"
    assert still == 200
    assert other_group == 200
    assert again == [200, 200]
    assert [r.target for r in site.received] == [b"/user"] * 4


async def test_the_tcp_listener_caps_each_tokens_group_once_it_shows_its_token(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path
) -> None:
    async with capped(site, site_tls, sock_dir) as (gateway, _):
        gateway.update_tokens({token_hash("a"): A, token_hash("b"): B})
        port = await gateway.listen_tcp("127.0.0.1", 0)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CAP)]
        try:
            within = [await exchange(*stream, model_call("a")) for stream in held]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            over = await exchange(reader, writer, model_call("a"))
            closed = await reader.read()
            await close_writer(writer)
            theirs = await asyncio.open_connection("127.0.0.1", port)
            other_group = await exchange(*theirs, model_call("b"))
            await close_writer(theirs[1])

            gateway.update_tokens({token_hash("b"): B})  # A's container is gone: its connections end...
            ends = [await stream[0].read() for stream in held]
            # ...and free their slots, which withdrawn or not are the connections' own.
            await eventually(lambda: A not in gateway.slots.held, message="A's ended connections kept")
        finally:
            await close_all(held)

    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in within)
    assert over.startswith(b"HTTP/1.1 429 ") and b'"too_many_connections"' in over and closed == b""
    assert other_group.startswith(b"HTTP/1.1 200 ")
    assert ends == [b""] * CAP


async def test_a_tcp_connection_that_turns_to_another_group_moves_its_slot(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path
) -> None:
    async with capped(site, site_tls, sock_dir) as (gateway, _):
        gateway.update_tokens({token_hash("a"): A, token_hash("b"): B})
        port = await gateway.listen_tcp("127.0.0.1", 0)
        stream = await asyncio.open_connection("127.0.0.1", port)
        try:
            answers = [await exchange(*stream, model_call(token)) for token in ("a", "unknown", "b")]
            slots = dict(gateway.slots.held)
        finally:
            await close_writer(stream[1])

    assert [answer.split(b" ")[1] for answer in answers] == [b"200", b"407", b"200"]
    assert slots == {B: 1}  # counted once, as the group it now speaks for


async def test_a_flood_of_silent_connections_past_the_cap_holds_only_a_few(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path
) -> None:
    async with capped(site, site_tls, sock_dir) as (gateway, sockets):
        held = [await tunnel(gateway, sockets[A]) for _ in range(CAP)]
        silent = [await asyncio.open_unix_connection(str(sockets[A])) for _ in range(REFUSALS_ANSWERED_AT_ONCE)]
        try:
            await eventually(lambda: gateway.slots.refusing.get(A) == REFUSALS_ANSWERED_AT_ONCE)
            # One more: with that many of A's already waiting for their answer, it gets none and is closed.
            reader, writer = await send_raw(sockets[A], CONNECT)
            try:
                dropped = await reader.read()
            except ConnectionResetError:  # closed before its request was read
                dropped = b""
            await close_writer(writer)
            theirs = await tunnel(gateway, sockets[B])
            other_group = await get(theirs)
            await close_writer(theirs[1])
            # A waiting one that speaks at last is answered.
            silent[0][1].write(CONNECT)
            late = await silent[0][0].read()
        finally:
            await close_all(held + silent)

    assert dropped == b""
    assert other_group == 200
    assert late.startswith(b"HTTP/1.1 429 ")


async def test_each_burst_of_refusals_is_logged_once(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawden.vault")
    async with capped(site, site_tls, sock_dir) as (gateway, sockets):
        held = [await tunnel(gateway, sockets[A]) for _ in range(CAP)]
        try:
            for _ in range(5):
                await answer_to_connect(sockets[A])
            await close_all(held[: CAP // 2])  # back to half the cap: the burst is over
            del held[: CAP // 2]
            await eventually(lambda: A not in gateway.slots.refused)
            held += [await tunnel(gateway, sockets[A]) for _ in range(CAP // 2)]
            await answer_to_connect(sockets[A])  # a second burst
        finally:
            await close_all(held)

    lines = [r.getMessage() for r in caplog.records if "cap" in r.getMessage()]
    burst = f"agent group {A} reached its cap of {CAP} gateway connections: refusing those past it (said again once "
    burst += "it is down to 2)"
    assert lines == [
        burst,
        f"agent group {A} is down to 2 gateway connections; 5 past its cap were refused",
        burst,
        f"agent group {A} is down to 2 gateway connections; 1 past its cap were refused",
    ]


async def test_each_burst_of_refusals_is_audited_once_with_its_count(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path, tmp_path: Path
) -> None:
    audit: list[AuditRecord] = []
    async with capped(site, site_tls, sock_dir, audit) as (gateway, sockets):
        held = [await tunnel(gateway, sockets[A]) for _ in range(CAP)]
        try:
            for _ in range(5):
                await answer_to_connect(sockets[A])
            during = [r for r in audit if r.decision == "too_many_connections"]
            await close_all(held[: CAP // 2])  # back to half the cap: the burst is over
            del held[: CAP // 2]
            await eventually(lambda: A not in gateway.slots.refused)
            held += [await tunnel(gateway, sockets[A]) for _ in range(CAP // 2)]
            await answer_to_connect(sockets[A])  # a second burst, over as its connections close
        finally:
            await close_all(held)
        await eventually(lambda: A not in gateway.slots.refused)

    bursts = [r for r in audit if r.decision == "too_many_connections"]
    store = Store.open(tmp_path / "vault.db")
    store.write_audit(bursts)
    stored = [(row["agent_group"], row["status"], row["decision"], row["count"]) for row in store.audit()]

    assert during == []  # a burst is audited as it ends, when its count is known
    assert [(r.agent_group, r.status, r.count) for r in bursts] == [(A, 429, 5), (A, 429, 1)]
    assert all(r.duration_ms > 0 and r.at > 0 for r in bursts)  # from its first refusal, that long
    assert bursts[0].event().summary == f"{A} -> 429 too_many_connections x5"
    assert bursts[0].event().fields["count"] == "5"
    assert stored == [(A, 429, "too_many_connections", 5), (A, 429, "too_many_connections", 1)]
    # As `clawden vault audit` and the dashboard show it (the vault's control answer):
    shown = msgspec.convert(store.audit(), list[api.AuditRecord])
    assert [r.said() for r in shown] == ["too_many_connections x5", "too_many_connections"]


def test_slots_count_each_group_and_end_a_burst_at_half_the_cap() -> None:
    slots = ConnectionSlots(4, answering=1)
    taken = [slots.take(A) for _ in range(5)] + [slots.take(B)]
    at_cap = slots.give_back(A), slots.take(A), slots.take(A)  # closing one and opening two keeps the burst on
    ended = [slots.give_back(A) for _ in range(4)]
    answers = slots.start_answer(A), slots.start_answer(A), slots.start_answer(B)
    slots.end_answer(A)
    slots.end_answer(B)
    slots.give_back(B)

    assert taken == [True] * 4 + [False, True]
    assert at_cap == (0, True, False)
    assert ended == [0, 2, 0, 0]  # the burst (two refused) ends at 2 open, and is told once
    assert answers == (True, False, True)
    assert slots.held == slots.refusing == slots.refused == {}  # no group leaves anything behind
