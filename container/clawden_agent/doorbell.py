"""Doorbells: datagram Unix sockets in the session folder that say "look at the other file now".

A ring is one empty datagram. Ringing a bell nobody listens on is silently ignored: each side
also polls slowly, so a lost ring only costs latency, never a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path

SOCKET_MODE = 0o666  # host and container run as different uids; both must be able to ring


def ring(path: Path | str) -> None:
    """Send one ring; never raises and never blocks."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        # A full receive queue (BlockingIOError) already holds a pending ring.
        sock.sendto(b"", os.fspath(path))


class Doorbell:
    """Listens on a bell socket; `wait()` returns once it has been rung (or on timeout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rung_at = 0.0  # perf_counter() of the first ring since clear(), for latency accounting
        self._sock: socket.socket | None = None
        self._event = asyncio.Event()

    def open(self) -> None:
        """Bind the socket (replacing a stale one a dead predecessor left) and start listening."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind(os.fspath(self.path))
            os.chmod(self.path, SOCKET_MODE)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        assert self._sock is not None
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        if not self._event.is_set():
            self.rung_at = time.perf_counter()
        self._event.set()

    def clear(self) -> None:
        """Forget earlier rings: call before looking at the files, so a ring after it is never lost."""
        self._event.clear()
        self.rung_at = 0.0

    def wake(self) -> None:
        """Wake a waiter from inside the process (shutdown)."""
        self._event.set()

    async def wait(self, within: float) -> bool:
        """True if rung (or woken) within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._event.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
