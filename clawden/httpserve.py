"""A service that serves HTTP (the webhook front door, the web app): its `listen` address read from config, a
socket bound before anything is served, and uvicorn started and stopped by the service's own lifecycle. The
runtime owns SIGTERM, so uvicorn's `Server.serve()`, which would take it, is not used."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from clawden.runtime import ConfigurationError


def parse_listen(listen: str, default: str, section: str) -> tuple[str, int]:
    """`host:port` (`[::1]:port` for IPv6) from `[<section>] listen`, or `default` when it is empty."""
    host, sep, port = (listen or default).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"[{section}] listen = {listen!r}: expected host:port, e.g. {default!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind(host: str, port: int, section: str, backlog: int) -> socket.socket:
    """The listening socket, or EX_CONFIG naming the setting when the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port} ([{section}] listen): {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def serving(app: Any, sock: socket.socket, **settings: Any) -> AsyncIterator[uvicorn.Server]:
    """`app` served on `sock` while the block runs: HTTP/1.1 only, no lifespan, no access log or server
    header, no proxy headers trusted; `settings` adds or overrides uvicorn.Config's."""
    config = uvicorn.Config(
        app,
        **{
            "lifespan": "off",
            "log_config": None,
            "access_log": False,
            "server_header": False,
            "timeout_keep_alive": 5,
            "http": "h11",
            "ws": "none",
            "proxy_headers": False,
            "interface": "asgi3",
            **settings,
        },
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        yield server
    finally:
        server.should_exit = True
        await server.shutdown(sockets=[sock])
