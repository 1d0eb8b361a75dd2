"""Files in a folder an agent can write (its session folder), reached by descriptor: each name is opened relative to
the folder before it and never through a link, so a link the agent plants, or swaps in meanwhile, leads nowhere."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1024 * 1024
# How deep `give` goes: the host makes nothing this deep in a session folder, so what lies below is the agent's own
# and already its user's (and a tree made deeper only to exhaust the runner's descriptors is left alone).
MAX_DEPTH = 64


class Unsafe(OSError):
    """A name that is no plain file name, or a file that is no regular one or is too large."""


def plain(name: str) -> str:
    """`name` if it names an entry of one folder: no slash, not `.` or `..`, not empty."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise Unsafe(errno.EINVAL, f"{name!r} is no plain file name")
    return name


@contextlib.contextmanager
def folder(path: Path, *, follow: bool = False) -> Iterator[int]:
    """The folder at `path`, open; a link there is refused unless `follow` (a path the host chose, not the agent)."""
    fd = os.open(path, FOLDER & ~os.O_NOFOLLOW if follow else FOLDER)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def subfolder(parent: int, name: str, *, make: bool = False) -> Iterator[int]:
    """The folder `name` in the open folder `parent`, made first where `make` and nothing is there. A link, or
    anything but a folder, there is refused (ELOOP, ENOTDIR)."""
    if make:
        with contextlib.suppress(FileExistsError):  # mkdir never follows a link at its name: it finds it there
            os.mkdir(plain(name), 0o777, dir_fd=parent)
    fd = os.open(plain(name), FOLDER, dir_fd=parent)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def regular_file(parent: int, name: str, *, max_bytes: int) -> Iterator[int]:
    """The regular file `name` in the open folder `parent`, open for reading, at most `max_bytes` long. Never a
    link; nor a FIFO, whose open would wait for a writer (O_NONBLOCK), nor a device."""
    fd = os.open(plain(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe(errno.EINVAL, f"{name} is not a regular file")
        if st.st_size > max_bytes:
            raise Unsafe(errno.EFBIG, f"{name} is {st.st_size} bytes; at most {max_bytes} are taken")
        yield fd
    finally:
        os.close(fd)


def write_copy(source: int, parent: int, name: str, *, max_bytes: int, owner: int | None = None) -> int:
    """Copy the open file `source` (from where it stands) into the open folder `parent` as `name`; returns the bytes
    copied. Written under a fresh name of its own and renamed into place, so whatever the agent put at `name` (a link
    to a host file) is replaced, never written through. At most `max_bytes`: the source may grow while it is read.
    `owner`: the uid (and gid) the copy is given, through its descriptor."""
    temp = f".{plain(name)[:100]}.{secrets.token_hex(6)}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent)
    copied = 0
    try:
        with open(fd, "wb", closefd=False) as out:
            while chunk := os.read(source, CHUNK):
                copied += len(chunk)
                if copied > max_bytes:
                    raise Unsafe(errno.EFBIG, f"{name} grew past {max_bytes} bytes while it was copied")
                out.write(chunk)
        if owner is not None:
            os.fchown(fd, owner, owner)
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise
    finally:
        os.close(fd)
    return copied


def give(top: int, uid: int, *, depth: int = 0) -> None:
    """Hand the open folder `top` and everything in it to `uid` (and its gid). Each entry is changed by its name in
    the folder's descriptor without following a link (a link is changed itself), and each folder below is opened
    the same way: a folder the agent swaps for a link meanwhile is not entered."""
    os.fchown(top, uid, uid)
    with os.scandir(top) as entries:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    for name, is_dir in names:
        if not is_dir or depth >= MAX_DEPTH:
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile: the agent's to remove
                os.chown(name, uid, uid, dir_fd=top, follow_symlinks=False)
            continue
        try:
            below = os.open(name, FOLDER, dir_fd=top)
        except OSError:  # gone, or no folder any more (a link swapped in): nothing of ours to hand over
            continue
        try:
            give(below, uid, depth=depth + 1)
        finally:
            os.close(below)
