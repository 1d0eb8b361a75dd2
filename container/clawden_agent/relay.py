"""In-container egress relay: 127.0.0.1:<port> TCP connections piped to the vault gateway's Unix socket.

Stdlib only, because it runs inside the agent image before anything else is importable.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

# One read's worth: big enough for a request body chunk, small enough to keep latency flat.
READ_SIZE = 64 * 1024
_connections: set[asyncio.Task[object]] = set()


async def serve_relay(socket_path: str, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Start the relay and return the listening server; the chosen port is in ``server.sockets``."""

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        # asyncio keeps a connection's task only as long as its transport: once the client side
        # closes while the gateway side still talks, the task would be collected mid-copy.
        task = asyncio.current_task()
        assert task is not None
        _connections.add(task)
        try:
            await _relay_connection(socket_path, client_reader, client_writer)
        finally:
            _connections.discard(task)

    return await asyncio.start_server(handle, host, port, limit=READ_SIZE)


async def _relay_connection(
    socket_path: str, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
) -> None:
    _set_nodelay(client_writer)
    try:
        gateway_reader, gateway_writer = await asyncio.open_unix_connection(socket_path, limit=READ_SIZE)
    except OSError as exc:
        # The gateway is down or the socket is not mounted: the client sees a closed connection.
        print(f"clawden relay: cannot reach gateway socket {socket_path}: {exc}", file=sys.stderr)
        await _close(client_writer)
        return
    writers = (client_writer, gateway_writer)
    try:
        await asyncio.gather(
            _pump(client_reader, gateway_writer, writers),
            _pump(gateway_reader, client_writer, writers),
        )
    finally:
        for writer in writers:
            await _close(writer)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
) -> None:
    """Copy one direction until EOF, then half-close so the other direction can still finish."""
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except (ConnectionError, OSError):
        # A reset on either side ends the whole pipe; closing both wakes the other pump with EOF.
        for each in writers:
            each.transport.abort()


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def _main(socket_path: str, port: int) -> None:
    server = await serve_relay(socket_path, port=port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    # python relay.py <gateway socket> <port>
    if len(sys.argv) != 3:
        sys.exit("usage: relay.py GATEWAY_SOCKET PORT")
    asyncio.run(_main(sys.argv[1], int(sys.argv[2])))
