"""Unix socket paths of any length: Linux caps sun_path at 108 bytes, a Clawden home may be deeper."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
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


def bind(path: Path, kind: int = socket.SOCK_STREAM, mode: int = 0o666, owner: int | None = None) -> socket.socket:
    """A new non-blocking socket bound at `path` (a stale socket file there is replaced), given `mode` and, when
    `owner` is a uid, that user and group (a root runner's containers run as the image's user)."""
    if path.is_symlink() or path.exists():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        with short_path(path) as name:
            sock.bind(name)
        chmod_socket(path, mode, owner)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def chmod_socket(path: Path, mode: int, owner: int | None = None) -> None:
    """Set the mode (and with `owner`, the owner) of the socket file at `path`, never of what a link put there names.

    A socket may be bound in a folder its peer can write (a session folder the agent shares): between
    the bind and a chmod by path, the agent could swap the socket for a link to a host file, and a runner
    running as root would make that file world-writable. So the name is opened without following a
    link, the inode is checked to be a socket, and that inode is changed through its descriptor."""
    if not hasattr(os, "O_PATH"):  # macOS: lchmod exists there
        os.chmod(path, mode, follow_symlinks=False)
        if owner is not None:
            os.chown(path, owner, owner, follow_symlinks=False)
        return
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(errno.EEXIST, f"{path} was replaced after it was bound; not changing its mode")
        os.chmod(f"/proc/self/fd/{fd}", mode)
        if owner is not None:
            os.chown(f"/proc/self/fd/{fd}", owner, owner)
    finally:
        os.close(fd)


def ring(path: Path) -> bool:
    """Send one empty datagram to the socket at `path`; False when nobody listens there, or what is there is no socket.

    Never to what a link there names: a bell sits in a folder its peer can write (the agent's session folder), and a
    link it planted would have the host send to any datagram socket it names. The socket API has no flag to refuse a
    link at the address, so on Linux the name is opened without following one (O_PATH | O_NOFOLLOW: a link is opened
    as itself), the inode checked to be a socket, and the datagram sent to that inode through /proc/self/fd/<fd>,
    which reaches the socket bound there and nothing else: a link swapped in after the check is not followed either.
    Elsewhere (macOS, no O_PATH), lstat right before the send says no link and a socket; a link swapped in between
    the two is followed there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            if hasattr(os, "O_PATH"):
                _send_to_inode(sock, path)
            elif stat.S_ISSOCK(os.lstat(path).st_mode):
                with short_path(path) as name:
                    sock.sendto(b"", name)
            else:
                return False
        except OSError:
            return False
    return True


def _send_to_inode(sock: socket.socket, path: Path) -> None:
    """Send the empty datagram to the socket file at `path` itself, never through a link (see `ring`)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(errno.ENOTSOCK, f"{path} is no socket (a link?); not ringing it")
        sock.sendto(b"", f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def answers(path: Path) -> bool:
    """Whether a stream socket at `path` takes a connection here (closed at once, nothing sent)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            with short_path(path) as name:
                sock.connect(name)
        except OSError:
            return False
    return True
