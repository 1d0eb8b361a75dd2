"""Unix socket paths of any length: Linux caps sun_path at 108 bytes, a Clawden home may be deeper."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_PATH = 100


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A path naming the same socket that fits sun_path: via an fd of its folder on Linux."""
    if len(os.fsencode(path)) <= MAX_PATH or not sys.platform.startswith("linux"):
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind(path: Path, kind: int = socket.SOCK_STREAM, mode: int = 0o666) -> socket.socket:
    """A new non-blocking socket bound at `path` (a stale socket file there is replaced)."""
    if path.is_symlink() or path.exists():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        with short_path(path) as name:
            sock.bind(name)
        os.chmod(path, mode)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def ring(path: Path) -> bool:
    """Send one empty datagram to `path`; False when nobody listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            with short_path(path) as name:
                sock.sendto(b"", name)
        except OSError:
            return False
    return True
