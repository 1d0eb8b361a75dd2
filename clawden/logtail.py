"""Following one service's log, for the web's live tail and `clawden logs` alike: the files `clawden up` and the
launchd agents write under <home>/logs, read from their last lines on across rotations; or, under systemd, where
there are no files, the unit's journal through `journalctl -o json -f`. In the kernel so a service may use it
without importing the CLI package."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from clawden.installed import Scope

FOLLOW_POLL = 0.25  # seconds between looks at the file: the stdlib has no file events, so the poll is the mechanism
LAST_LINES = 200
BLOCK = 64 * 1024


def services(logs: Path) -> dict[str, Path]:
    """Service name (as in the file name: `router`, `channel-telegram`, `nats`) -> its log file."""
    return {p.stem: p for p in sorted(logs.glob("*.log"))} if logs.is_dir() else {}


# ---- names -----------------------------------------------------------------------------------------


def canonical(service: str) -> str:
    """`router`, `clawden-router.service`, `channel-telegram` or `channel@telegram` -> `router` / `channel@telegram`."""
    name = service.removesuffix(".service").removesuffix(".log").removeprefix("clawden-")
    if name.startswith("channel-"):
        name = "channel@" + name.removeprefix("channel-")
    if not re.fullmatch(r"[A-Za-z0-9_-]+(@[A-Za-z0-9_-]+)?", name):
        raise ValueError(f"not a service name: {service!r}")
    return name


def unit_name(service: str) -> str:
    return f"clawden-{canonical(service)}.service"


# ---- the journal -----------------------------------------------------------------------------------


def journal_scope(environ: Mapping[str, str]) -> Scope | None:
    """Whether this process runs as a systemd unit (systemd sets INVOCATION_ID) and under which manager: the
    system's is PID 1 (MANAGERPID), a user's is not. None: not a unit, so its log is a file."""
    if not environ.get("INVOCATION_ID"):
        return None
    return "system" if environ.get("MANAGERPID") == "1" else "user"


def journal_command(
    scope: Scope, service: str | None, *, lines: int, follow: bool, session: str | None, as_json: bool = False
) -> list[str]:
    """journalctl for one unit (or every clawden-* unit), the last `lines` entries, filtered by session."""
    unit = unit_name(service) if service else "clawden-*"
    cmd = ["journalctl", f"--user-unit={unit}" if scope == "user" else f"--unit={unit}", "-n", str(lines)]
    if as_json:
        cmd += ["-o", "json"]
    if follow:
        cmd.append("--follow")
    if session:
        cmd.append(f"CLAWDEN_SESSION={session}")
    return cmd


def units_command(scope: Scope) -> list[str]:
    """journalctl listing every unit the journal has entries of (the web's list of logs under systemd)."""
    return (
        ["journalctl", "--user", "-F", "_SYSTEMD_USER_UNIT"]
        if scope == "user"
        else ["journalctl", "-F", "_SYSTEMD_UNIT"]
    )


def journal_services(listed: str) -> list[str]:
    """Clawden's services among the units `units_command` listed, by name (`router`, `channel@telegram`)."""
    units = (u.strip() for u in listed.splitlines())
    return sorted({canonical(u) for u in units if re.fullmatch(r"clawden-[A-Za-z0-9_@-]+\.service", u)})


class Entry(msgspec.Struct, frozen=True):
    """The fields of a journal entry (`journalctl -o json`) a tail shows. MESSAGE is an array of bytes when it is
    not valid UTF-8, and null when too large (journalctl's --all would show it)."""

    realtime: str = msgspec.field(name="__REALTIME_TIMESTAMP")
    message: str | list[int] | None = msgspec.field(default=None, name="MESSAGE")


_ENTRY = msgspec.json.Decoder(Entry)


def entry_line(raw: bytes) -> str:
    """One `journalctl -o json` line as the tail shows it: `YYYY-MM-DD HH:MM:SS.mmm message` in local time. A line
    that is no journal entry is shown as it came, so nothing is hidden."""
    try:
        entry = _ENTRY.decode(raw)
        at = dt.datetime.fromtimestamp(int(entry.realtime) / 1e6)
    except (msgspec.DecodeError, ValueError, OverflowError, OSError):
        return raw.decode("utf-8", "replace").rstrip("\n")
    message = entry.message
    if isinstance(message, list):
        message = bytes(message).decode("utf-8", "replace")
    text = "[message too large for the journal's JSON]" if message is None else message
    return f"{at:%Y-%m-%d %H:%M:%S}.{at.microsecond // 1000:03d} {text}"


async def journal_units(scope: Scope) -> tuple[list[str], str]:
    """Clawden's services the journal knows, and what journalctl said on failure ("" when it ran)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *units_command(scope), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        return [], f"cannot run journalctl: {exc}"
    out, err = await proc.communicate()
    if proc.returncode:
        return [], err.decode("utf-8", "replace").strip() or f"journalctl exited with {proc.returncode}"
    return journal_services(out.decode("utf-8", "replace")), ""


async def follow_journal(
    scope: Scope, service: str, stopping: asyncio.Event, *, idle: float = 15.0
) -> AsyncIterator[list[str]]:
    """The unit's last lines, then each entry as the journal gets it; an empty batch after `idle` seconds of
    silence (a keepalive); until `stopping` is set. If journalctl cannot read the journal, its words end it."""
    cmd = journal_command(scope, service, lines=LAST_LINES, follow=True, session=None, as_json=True)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        yield [f"cannot run journalctl: {exc}"]
        return
    assert proc.stdout is not None and proc.stderr is not None
    stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    read: asyncio.Future[Any] | None = None
    try:
        while True:
            read = read or asyncio.ensure_future(proc.stdout.readline())
            done, _ = await asyncio.wait({read, stop}, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                return
            if read not in done:
                yield []
                continue
            raw, read = read.result(), None
            if not raw:  # journalctl ended: say why, in its words
                said = (await proc.stderr.read()).decode("utf-8", "replace").strip()
                yield [f"journalctl ended ({await proc.wait()}): {said or 'no reason given'}"]
                return
            yield [entry_line(raw)]
    finally:
        for pending in (read, stop):
            if pending is not None:
                pending.cancel()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


# ---- the files -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """How far a file has been read, and which file it was (a rotation puts a new one at the path)."""

    offset: int = 0
    inode: int | None = None

    @classmethod
    def of(cls, path: Path) -> Place:
        st = path.stat()
        return cls(st.st_size, st.st_ino)


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
