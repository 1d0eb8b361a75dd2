"""In-container egress relay: 127.0.0.1:<port> TCP connections piped to the vault gateway.

The gateway is a Unix socket mounted in (its path: the socket names the agent group), or, where a socket
cannot cross into the container (Docker Desktop), the vault's TCP listener (``tcp://host:port``; or
``tcp+unix:/path``, a mounted socket leading to that listener, for testing the mode on Linux; or
``tls://host:port``, the listener speaking TLS, for a runner on another host: verified with the gateway CA
mounted in the trust folder, and nothing else, for the name dialed). Over TCP
the relay shows the container's token on each connection's first request, in place of any
``Proxy-Authorization`` the agent wrote. The token comes in a file the relay deletes as it reads it,
before the agent starts, and the process is made non-dumpable, so the agent (the same uid, no
capabilities) can read it neither from a file, its environment or command line, nor /proc/<pid>/mem.

Stdlib only, because it runs inside the agent image before anything else is importable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import os
import socket
import ssl
import sys
from typing import Any, NamedTuple

# One read's worth: big enough for a request body chunk, small enough to keep latency flat.
READ_SIZE = 64 * 1024
# Where the runner puts the container's token for the TCP listener (a folder of its own, mounted rw).
TOKEN_FILE = "/run/clawden/relay/token"
TOKEN_FILE_ENV = "CLAWDEN_GATEWAY_TOKEN_FILE"  # elsewhere (the relay run as a host process in tests)
# The gateway CA (the trust folder, mounted read-only): the one root a tls:// listener's certificate may chain to.
CA_FILE = "/run/clawden/trust/clawden-ca.pem"
CA_FILE_ENV = "CLAWDEN_CA_FILE"  # what the runner sets it to (clawden/agentcontainer.py)
PR_SET_DUMPABLE = 4
_connections: set[asyncio.Task[object]] = set()


class RelayError(RuntimeError):
    """The relay cannot start as asked; the container stops, loudly."""


class Target(NamedTuple):
    """Where the relay dials: a Unix socket path, or host and port; ``token``: the TCP listener's way.
    (A NamedTuple: tests load this file without registering it as a module, which a dataclass needs.)"""

    path: str = ""
    host: str = ""
    port: int = 0
    token: bool = False
    tls: bool = False
    name: str = ""  # the name the listener's certificate must have (tls://: the host dialed)


def parse_target(text: str) -> Target:
    """``/path`` (the group's socket); with a token: ``tcp://host:port``, ``tls://host:port``, ``tcp+unix:/path``
    or ``tls+unix:/path#name`` (TLS through a socket leading to the listener, whose certificate names ``name``)."""
    if text.startswith("tcp+unix:"):
        path = text.removeprefix("tcp+unix:")
        if not path.startswith("/"):
            raise RelayError(f"gateway {text!r}: tcp+unix: takes an absolute socket path")
        return Target(path=path, token=True)
    if text.startswith("tls+unix:"):
        path, _, name = text.removeprefix("tls+unix:").partition("#")
        if not path.startswith("/") or not name:
            raise RelayError(f"gateway {text!r}: write it as tls+unix:/socket/path#certificate-name")
        return Target(path=path, token=True, tls=True, name=name)
    for scheme in ("tcp", "tls"):
        if text.startswith(f"{scheme}://"):
            host, _, port = text.removeprefix(f"{scheme}://").rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise RelayError(f"gateway {text!r}: write it as {scheme}://host:port")
            host = host.strip("[]")
            return Target(host=host, port=int(port), token=True, tls=scheme == "tls", name=host)
    if not text.startswith("/"):
        raise RelayError(f"gateway {text!r}: a socket path, tcp:// or tls://host:port, tcp+unix: or tls+unix:/path")
    return Target(path=text)


def with_token(head: bytes, token: str) -> bytes | None:
    """A request head with the token as its one ``Proxy-Authorization`` (any the agent wrote dropped), its
    lines ended by CRLF; None for a head the gateway might read otherwise than this does (a bare CR, a
    folded line, an empty line before its end), which is refused rather than passed on."""
    if not head.endswith(b"\n\n") and not head.endswith(b"\n\r\n"):
        return None
    lines = [line.removesuffix(b"\r") for line in head.split(b"\n")][:-2]
    if not lines or any(b"\r" in line or not line or line[:1] in (b" ", b"\t") for line in lines):
        return None
    kept = [line for line in lines[1:] if line.partition(b":")[0].strip().lower() != b"proxy-authorization"]
    credential = base64.b64encode(f"clawden:{token}".encode())
    return b"\r\n".join([lines[0], b"Proxy-Authorization: Basic " + credential, *kept, b"", b""])


def take_token(path: str) -> str:
    """The token in ``path``, which is deleted: read once, before the agent starts."""
    try:
        with open(path, encoding="ascii") as file:
            token = file.read().strip()
        os.unlink(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise RelayError(f"the gateway token at {path} cannot be taken (read and deleted): {exc}") from exc
    if not token:
        raise RelayError(f"the gateway token file {path} is empty")
    return token


def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts the gateway CA alone and checks the listener's name."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise RelayError(f"the gateway CA at {ca_file} cannot be loaded for the TLS listener: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def hide_process() -> None:
    """Non-dumpable: /proc/<pid>/mem, environ and fd become root's, and no same-uid process may ptrace us."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise RelayError(f"prctl(PR_SET_DUMPABLE, 0) failed: errno {ctypes.get_errno()}")


async def serve_relay(socket_path: str, host: str = "127.0.0.1", port: int = 0, *, hide: bool = True) -> asyncio.Server:
    """Start the relay and return the listening server; the chosen port is in ``server.sockets``.
    ``socket_path``: the gateway (``parse_target``). With a token, ``hide`` makes this process
    non-dumpable (a test running the relay in its own process may keep its process as it is)."""
    target = parse_target(socket_path)
    tls = tls_context(os.environ.get(CA_FILE_ENV, CA_FILE)) if target.tls else None
    token = ""
    if target.token:
        token = take_token(os.environ.get(TOKEN_FILE_ENV, TOKEN_FILE))
        if hide:
            hide_process()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        # asyncio keeps a connection's task only as long as its transport: once the client side
        # closes while the gateway side still talks, the task would be collected mid-copy.
        task = asyncio.current_task()
        assert task is not None
        _connections.add(task)
        try:
            await _relay_connection(target, token, tls, client_reader, client_writer)
        finally:
            _connections.discard(task)

    return await asyncio.start_server(handle, host, port, limit=READ_SIZE)


async def _first_head(reader: asyncio.StreamReader, token: str) -> bytes | None:
    """The client's first request head with the token in it; None when it hangs up or sends a bad one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
        return None
    return with_token(head, token)


async def _dial(target: Target, tls: ssl.SSLContext | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    secure: dict[str, Any] = {"ssl": tls, "server_hostname": target.name, "ssl_handshake_timeout": 30} if tls else {}
    if target.path:
        return await asyncio.open_unix_connection(target.path, limit=READ_SIZE, **secure)
    return await asyncio.open_connection(target.host, target.port, limit=READ_SIZE, **secure)


async def _relay_connection(
    target: Target,
    token: str,
    tls: ssl.SSLContext | None,
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
) -> None:
    _set_nodelay(client_writer)
    first = b""
    if token:
        head = await _first_head(client_reader, token)
        if head is None:
            client_writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await _close(client_writer)
            return
        first = head
    try:
        gateway_reader, gateway_writer = await _dial(target, tls)
    except OSError as exc:  # a TLS handshake that fails (ssl.SSLError) or times out is one too
        # The gateway is down or the socket is not mounted: the client sees a closed connection.
        where = target.path or f"{target.host}:{target.port}"
        print(f"clawden relay: cannot reach the gateway at {where}: {exc}", file=sys.stderr)
        await _close(client_writer)
        return
    _set_nodelay(gateway_writer)
    writers = (client_writer, gateway_writer)
    try:
        if first:
            gateway_writer.write(first)
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
        elif not writer.is_closing():
            # TLS (the listener's) has no half-close here: the gateway would wait for more until its read
            # timeout, holding the connection, so the whole connection ends with the client's side.
            writer.close()
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
        sys.exit("usage: relay.py GATEWAY PORT  (GATEWAY: /socket/path, tcp://, tls://host:port or tcp+unix:/path)")
    asyncio.run(_main(sys.argv[1], int(sys.argv[2])))
