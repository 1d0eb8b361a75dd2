"""Reading Clawden's logs back for `clawden logs`: journalctl where the systemd units are installed,
else the files `clawden up` and the launchd agents write under <home>/logs, interleaved by time."""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from clawden.installed import Scope as Scope  # where the units are installed: the kernel's too
from clawden.installed import installed_scope as installed_scope

FOLLOW_POLL = 0.25  # seconds between looks at the files while following (the stdlib has no file events)
BLOCK = 64 * 1024
WRAP = 12 * 3600  # a time of day this much later than the next line's: that line is from the next day

# `[YYYY-MM-DD ]HH:MM:SS.mmm L logger: ...` (clawden.logs.PrefixFormatter: dated in files, except those
# written before it dated them) and `[pid] YYYY/MM/DD HH:MM:SS.ffffff [INF] ...` (nats)
_CLAWDEN_LINE = re.compile(r"^(?:(\d{4})-(\d\d)-(\d\d) )?(\d\d):(\d\d):(\d\d)\.(\d{3}) [A-Z] ")
_NATS_LINE = re.compile(r"^\[\d+\] (\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) ")


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


def file_name(service: str) -> str:
    return canonical(service).replace("@", "-") + ".log"


# ---- journald --------------------------------------------------------------------------------------


def journal_command(scope: Scope, service: str | None, *, lines: int, follow: bool, session: str | None) -> list[str]:
    """journalctl for one unit (or every clawden-* unit), the last `lines` entries, filtered by session."""
    unit = unit_name(service) if service else "clawden-*"
    cmd = ["journalctl", f"--user-unit={unit}" if scope == "user" else f"--unit={unit}", "-n", str(lines)]
    if follow:
        cmd.append("--follow")
    if session:
        cmd.append(f"CLAWDEN_SESSION={session}")
    return cmd


# ---- the files -------------------------------------------------------------------------------------


@dataclass
class Record:
    """One log entry: its first line and any continuation lines (a traceback), with its time if known."""

    service: str
    text: str
    tod: float | None  # seconds after midnight, local time
    at: float = 0.0  # epoch seconds, once anchored
    midnight: float | None = None  # epoch seconds of its day's start, when the line names its date


def stamp_of(line: str) -> tuple[float | None, float | None]:
    """(seconds after midnight, that midnight as epoch seconds when the line has a date) in local time."""
    if m := _CLAWDEN_LINE.match(line):
        date, (h, mi, s, ms) = m.groups()[:3], (int(g) for g in m.groups()[3:])
        tod = h * 3600 + mi * 60 + s + ms / 1000
    elif m := _NATS_LINE.match(line):
        date, (h, mi, s) = m.groups()[:3], (int(g) for g in m.groups()[3:6])
        tod = h * 3600 + mi * 60 + s + float("0." + m.group(7))
    else:
        return None, None
    if date[0] is None:
        return tod, None
    year, month, day = (int(g) for g in date)
    return tod, dt.datetime(year, month, day).timestamp()


def time_of_day(line: str) -> float | None:
    return stamp_of(line)[0]


def parse(service: str, lines: Iterable[str]) -> list[Record]:
    records: list[Record] = []
    for line in lines:
        tod, midnight = stamp_of(line)
        if tod is None and records:
            records[-1].text += "\n" + line
        else:
            records.append(Record(service, line, tod, midnight=midnight))
    return records


def anchor(records: list[Record], last_write: float) -> None:
    """Give each record its time: a dated line has it; an undated one (from before lines were dated)
    counts back from the next dated one, or from the file's last write, a day earlier each time the clock
    runs backwards across midnight."""
    stamp = dt.datetime.fromtimestamp(last_write)
    midnight = stamp.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    now_tod = last_write - midnight
    later: float | None = None
    for record in reversed(records):
        tod = record.tod if record.tod is not None else later
        if tod is None:
            record.at = last_write
            continue
        if record.midnight is not None:
            midnight = record.midnight
        elif later is None:
            if tod > now_tod + 60:  # written before midnight, the file last touched after it
                midnight -= 86400
        elif tod > later + WRAP:
            midnight -= 86400
        record.at = midnight + tod
        later = tod


_SESSION = r"(?:^|\s)(?:clawden_)?session(?:_id)?={}(?:\s|$)"


def session_filter(session: str | None) -> re.Pattern[str] | None:
    return re.compile(_SESSION.format(re.escape(session)), re.MULTILINE) if session else None


def tail_records(
    path: Path, service: str, count: int, match: re.Pattern[str] | None, size: int | None = None
) -> list[Record]:
    """The last `count` records (matching ones, with a session filter) of one file's first `size`
    bytes (all of it by default), read from their end."""
    size = path.stat().st_size if size is None else size
    step = BLOCK
    with path.open("rb") as f:
        while True:
            start = max(0, size - step)
            f.seek(start)
            lines = f.read(size - start).decode("utf-8", "replace").splitlines()
            if start > 0:
                lines = lines[1:]  # may start mid-line
            records = parse(service, lines)
            if start > 0 and records and records[0].tod is None:
                records = records[1:]  # the tail of a record that began further back
            chosen = [r for r in records if match is None or match.search(r.text)]
            if start == 0 or len(chosen) >= count:
                break
            step *= 4
    anchor(records, path.stat().st_mtime)
    return chosen[-count:] if count else []


def log_files(logs: Path, service: str | None) -> dict[str, Path]:
    """Service name (as in the file name) -> file."""
    if service:
        path = logs / file_name(service)
        if not path.exists():
            have = ", ".join(sorted(p.stem for p in logs.glob("*.log"))) or "none"
            raise FileNotFoundError(f"no log for {canonical(service)} in {logs} (there are: {have})")
        return {path.stem: path}
    return {p.stem: p for p in sorted(logs.glob("*.log"))}


def merged(per_file: Iterable[list[Record]]) -> list[Record]:
    return list(heapq.merge(*per_file, key=lambda r: r.at))


def show(record: Record, out: TextIO, width: int) -> None:
    if width:
        prefix = f"{record.service:<{width}} | "
        out.write(prefix + record.text.replace("\n", "\n" + " " * len(prefix)) + "\n")
    else:
        out.write(record.text + "\n")
    out.flush()


def read_files(logs: Path, service: str | None, *, lines: int, session: str | None, follow: bool, out: TextIO) -> None:
    """Print the last `lines` records (of every service, interleaved by time, when none is named)."""
    match = session_filter(session)
    files = log_files(logs, service)
    width = 0 if service else max([len(name) for name in files] + [10])
    # Sizes first: what is written while the tail is shown belongs to the follow, not lost between.
    places = {n: Place.of(p) for n, p in files.items()}
    tails = (tail_records(p, name, lines, match, places[name].offset) for name, p in files.items())
    for record in merged(tails)[-lines:] if lines else []:
        show(record, out, width)
    if follow:
        for record in follow_files(logs, service, places, match):
            show(record, out, width)


@dataclass(frozen=True)
class Place:
    """How far a log file has been read, and which file that was (a rotation puts a new one there)."""

    offset: int = 0
    inode: int | None = None

    @classmethod
    def of(cls, path: Path) -> Place:
        st = path.stat()
        return cls(st.st_size, st.st_ino)


def _appended(path: Path, place: Place) -> tuple[bytes, Place] | None:
    """What was written to `path` since `place` (None: nothing) and the new place. When the file was
    rotated (`clawden.logs.RotatingStderr`), the rest of the old one, now `<path>.1`, comes first; a
    truncated file is read again from its start."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    head, offset = b"", place.offset
    if place.inode is not None and st.st_ino != place.inode:
        with contextlib.suppress(OSError), path.with_name(path.name + ".1").open("rb") as f:
            if os.fstat(f.fileno()).st_ino == place.inode:
                f.seek(offset)
                head = f.read()
        offset = 0
    elif st.st_size < offset:
        offset = 0
    if st.st_size == offset and not head:
        return None
    with path.open("rb") as f:
        f.seek(offset)
        return head + f.read(st.st_size - offset), Place(st.st_size, st.st_ino)


def follow_files(
    logs: Path, service: str | None, places: dict[str, Place], match: re.Pattern[str] | None
) -> Iterator[Record]:
    """New records as they are appended, across rotations; a truncated file is read again from its
    start, a new one from its start too (a service that began to log)."""
    partial: dict[str, str] = {}
    showing: dict[str, bool] = {}  # whether the last record of that file passed the filter
    last_tod: dict[str, float] = {}
    while True:
        batch: list[list[Record]] = []
        for name, path in log_files(logs, service).items():
            found = _appended(path, places.get(name, Place()))
            if found is None:
                continue
            chunk, places[name] = found
            text = partial.pop(name, "") + chunk.decode("utf-8", "replace")
            if "\n" not in text:
                partial[name] = text
                continue
            complete, _, partial[name] = text.rpartition("\n")
            fresh: list[Record] = []
            for record in parse(name, complete.split("\n")):
                if record.tod is None:  # lines continuing the last record of an earlier look
                    record.tod = last_tod.get(name, 0.0)
                    if showing.get(name, match is None):
                        fresh.append(record)
                    continue
                last_tod[name] = record.tod
                showing[name] = match is None or bool(match.search(record.text))
                if showing[name]:
                    fresh.append(record)
            batch.append(fresh)
        yield from heapq.merge(*batch, key=lambda r: r.tod or 0.0)
        time.sleep(FOLLOW_POLL)
