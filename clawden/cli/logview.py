"""Reading Clawden's logs back for `clawden logs`: journalctl where the systemd units are installed,
else the files `clawden up` and the launchd agents write under <home>/logs, interleaved by time."""

from __future__ import annotations

import datetime as dt
import difflib
import heapq
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from clawden.installed import Scope as Scope  # where the units are installed: the kernel's too
from clawden.installed import installed_scope as installed_scope
from clawden.logtail import BLOCK, FOLLOW_POLL, appended
from clawden.logtail import Place as Place  # where a follow has read to: `clawden logs` and the web share it
from clawden.logtail import canonical as canonical  # the names and the journal: the web's tail shares them
from clawden.logtail import journal_command as journal_command
from clawden.logtail import unit_name as unit_name

WRAP = 12 * 3600  # a time of day this much later than the next line's: that line is from the next day

# `[YYYY-MM-DD ]HH:MM:SS.mmm L logger: ...` (clawden.logs.PrefixFormatter: dated in files, except those
# written before it dated them) and `[pid] YYYY/MM/DD HH:MM:SS.ffffff [INF] ...` (nats)
_CLAWDEN_LINE = re.compile(r"^(?:(\d{4})-(\d\d)-(\d\d) )?(\d\d):(\d\d):(\d\d)\.(\d{3}) [A-Z] ")
_NATS_LINE = re.compile(r"^\[\d+\] (\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) ")


# ---- names -----------------------------------------------------------------------------------------


def file_name(service: str) -> str:
    return canonical(service).replace("@", "-") + ".log"


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
            names = sorted(canonical(p.stem) for p in logs.glob("*.log"))
            near = nearest(canonical(service), names)
            hint = f"; did you mean `clawden logs {near}`?" if near else ""
            raise FileNotFoundError(
                f"no log for {canonical(service)} in {logs} (there are: {', '.join(names) or 'none'}){hint}"
            )
        return {path.stem: path}
    return {p.stem: p for p in sorted(logs.glob("*.log"))}


def nearest(asked: str, names: list[str]) -> str | None:
    """The log a mistyped or short name most likely meant: `telegram` is `channel@telegram`'s, `ruoter` `router`'s."""
    bridged = [n for n in names if n.partition("@")[2] == asked]
    if bridged:
        return bridged[0]
    near = difflib.get_close_matches(asked, names, n=1, cutoff=0.6)
    return near[0] if near else None


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
            chunk, places[name] = appended(path, places.get(name, Place()))
            if not chunk:
                continue
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
