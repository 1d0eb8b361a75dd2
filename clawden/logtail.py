"""Following one service's log file from a service (the web's live tail): the files `clawden up` and the launchd
agents write under <home>/logs, read from their last lines on, across rotations. In the kernel so a service may
use it without importing the CLI package; where the units log to journald there are no files to follow."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

FOLLOW_POLL = 0.25  # seconds between looks at the file: the stdlib has no file events, so the poll is the mechanism
LAST_LINES = 200
BLOCK = 64 * 1024


def services(logs: Path) -> dict[str, Path]:
    """Service name (as in the file name: `router`, `channel-telegram`, `nats`) -> its log file."""
    return {p.stem: p for p in sorted(logs.glob("*.log"))} if logs.is_dir() else {}


@dataclass(frozen=True)
class Place:
    """How far a file has been read, and which file it was (a rotation puts a new one at the path)."""

    offset: int = 0
    inode: int | None = None


def split(pending: str, chunk: str) -> tuple[list[str], str]:
    """Whole lines of `pending + chunk`, and the partial last one kept for the next chunk."""
    text = pending + chunk
    if "\n" not in text:
        return [], text
    complete, _, rest = text.rpartition("\n")
    return complete.split("\n"), rest


def last_lines(path: Path, count: int = LAST_LINES) -> tuple[list[str], Place]:
    """The last `count` whole lines and the place after them (read backwards in blocks: a log may be large)."""
    with path.open("rb") as f:
        st = os.fstat(f.fileno())
        end = start = st.st_size
        data = b""
        while start > 0 and data.count(b"\n") <= count:
            start = max(0, start - BLOCK)
            f.seek(start)
            data = f.read(end - start)
    lines = data.decode("utf-8", "replace").split("\n")
    whole = lines[:-1] if start == 0 else lines[1:-1]  # a first line cut by the block is not shown
    consumed = end - len(lines[-1].encode("utf-8", "replace"))
    return whole[-count:], Place(consumed, st.st_ino)


def appended(path: Path, place: Place) -> tuple[bytes, Place]:
    """What was written since `place`, and the new place. A rotated file (`clawden.logs.RotatingStderr` moves it
    to `<path>.1`) gives the rest of the old one first; a truncated one is read again from its start."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return b"", place
    head, offset = b"", place.offset
    if place.inode is not None and st.st_ino != place.inode:
        old = path.with_name(path.name + ".1")
        try:
            with old.open("rb") as f:
                if os.fstat(f.fileno()).st_ino == place.inode:
                    f.seek(offset)
                    head = f.read()
        except OSError:
            pass
        offset = 0
    elif st.st_size < offset:
        offset = 0
    if st.st_size == offset:
        return head, Place(offset, st.st_ino)
    with path.open("rb") as f:
        f.seek(offset)
        return head + f.read(st.st_size - offset), Place(st.st_size, st.st_ino)


async def follow(path: Path, stopping: asyncio.Event, *, idle: float = 15.0) -> AsyncIterator[list[str]]:
    """The last lines, then each batch of lines appended; an empty batch after `idle` seconds of silence (so a
    stream can send a keepalive), until `stopping` is set."""
    lines, place = await asyncio.to_thread(last_lines, path)
    yield lines
    pending, quiet = "", 0.0
    while not stopping.is_set():
        chunk, place = await asyncio.to_thread(appended, path, place)
        lines, pending = split(pending, chunk.decode("utf-8", "replace"))
        if lines:
            quiet = 0.0
            yield lines
        elif quiet >= idle:
            quiet = 0.0
            yield []
        try:
            await asyncio.wait_for(stopping.wait(), FOLLOW_POLL)
        except TimeoutError:
            quiet += FOLLOW_POLL
