"""The gateway's pool of connections to sites (services/vault/upstream.py): an idle connection is not kept
past its expiry, even when no request for its site ever comes again."""

from __future__ import annotations

import asyncio

import pytest

from services.vault.upstream import Origin, Upstream

pytestmark = pytest.mark.timeout(15)


async def test_an_idle_connection_is_closed_at_its_expiry_with_no_request_after_it() -> None:
    hung_up = asyncio.Event()

    async def site(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers one request and keeps the connection open for as long as the gateway does."""
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(site, "127.0.0.1", 0)
    origin = Origin("http", "127.0.0.1", server.sockets[0].getsockname()[1])
    upstream = Upstream(allow_private=True, idle_expiry=0.1)
    try:
        response = await upstream.request(origin, b"GET", b"/", [(b"host", b"site.test")], b"", owner="family")
        assert [chunk async for chunk in upstream.body_chunks(response)] == [b"ok"]
        assert len(upstream._idle[("family", origin)]) == 1  # pooled for the next request

        # The agent goes quiet: no acquire ever comes for this site, and still its socket is closed.
        await asyncio.wait_for(hung_up.wait(), 5)
        assert upstream._idle == {}
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()


async def test_a_groups_idle_connections_are_bounded_across_its_sites() -> None:
    hung_up: list[int] = []
    closed = asyncio.Event()
    opened: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(opened)
        opened.append(number)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except asyncio.IncompleteReadError:
            hung_up.append(number)
            closed.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    names = ["one.test", "two.test", "three.test"]
    upstream = Upstream(host_map=dict.fromkeys(names, address), max_idle_per_owner=2)

    async def call(name: str, owner: str) -> None:
        response = await upstream.request(
            Origin("http", name, 80), b"GET", b"/", [(b"host", name.encode())], b"", owner=owner
        )
        assert [chunk async for chunk in upstream.body_chunks(response)] == [b"ok"]

    try:
        for name in names:  # a group calling three sites once each
            await call(name, "family")
        await call("one.test", "work")
        await asyncio.wait_for(closed.wait(), 5)
        kept = sorted((owner, origin.host) for (owner, origin) in upstream._idle)
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()

    assert hung_up == [0]  # the group's oldest idle connection, closed as its third went idle
    assert kept == [("family", "three.test"), ("family", "two.test"), ("work", "one.test")]
