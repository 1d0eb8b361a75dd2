"""When does a task run next? Pure date arithmetic over UTC instants (whole epoch seconds), with cron
evaluated on the wall clock of an IANA zone, so DST changes neither skip nor double a run."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

Kind = Literal["cron", "interval", "once"]

# A cron candidate's instant differs from its naive wall time by at most the largest UTC offset
# change (1 h almost everywhere, 30 min on Lord Howe Island); this window covers any zone.
_DST_SLACK = timedelta(hours=3)
_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
    "w": 604800,
    "week": 604800,
}
_DURATION = re.compile(r"(\d+)\s*([a-z]+?)s?(?=\d|\s|$)")
_INTERVAL = re.compile(r"^every\s+(.+)$")
_RELATIVE = re.compile(r"^in\s+(.+)$")


class ScheduleError(ValueError):
    """A schedule or time zone that cannot be used; the message is for a person (or an agent)."""


@dataclass(frozen=True)
class Schedule:
    kind: Kind
    text: str  # as given, for display
    zone: str  # IANA name
    cron: str = ""
    every: int = 0  # seconds, for intervals
    at: int = 0  # epoch seconds, for once

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)


def host_zone(environ: dict[str, str] | None = None) -> str:
    """The host's IANA zone name: $TZ, /etc/timezone, the /etc/localtime link, else UTC."""
    env = os.environ if environ is None else environ
    candidates = [env.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                return zone(name)
            except ScheduleError:
                continue
    return "UTC"


def zone(name: str) -> str:
    """Validate an IANA zone name (`Europe/Berlin`); raises ScheduleError for an unknown one."""
    if not name or name.startswith(("/", ".")) or ".." in name:
        raise ScheduleError(f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)") from exc
    return name


def duration(text: str) -> int:
    """`30m`, `1h30m`, `90 seconds`, `2 days` -> seconds (> 0)."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ScheduleError(f"cannot read {text!r} as a duration (like 30s, 15m, 2h, 1d)")
    total = 0
    for count, unit in parts:
        if unit not in _UNITS:
            raise ScheduleError(f"unknown time unit {unit!r} in {text!r} (use s, m, h, d or w)")
        total += int(count) * _UNITS[unit]
    if total <= 0:
        raise ScheduleError(f"{text!r} is not a positive duration")
    return total


def parse(text: str, zone_name: str, now: float) -> Schedule:
    """Read a schedule: a cron expression (`0 8 * * 1`, `@daily`), `every 30m`, or once: an ISO time
    (naive means wall time in the zone) or `in 10m`. `now` anchors the relative forms."""
    tz_name = zone(zone_name)
    text = text.strip()
    lowered = text.lower()
    if m := _INTERVAL.match(lowered):
        return Schedule("interval", text, tz_name, every=duration(m.group(1)))
    if m := _RELATIVE.match(lowered):
        return Schedule("once", text, tz_name, at=int(now) + duration(m.group(1)))
    if re.match(r"^\d{4}-\d{2}-\d{2}", text):
        try:
            when = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
        except ValueError as exc:
            raise ScheduleError(f"cannot read {text!r} as a time (use ISO 8601, like 2025-06-01T08:00)") from exc
        at = when.timestamp() if when.tzinfo else _wall_instants(when, ZoneInfo(tz_name), repeat=False)[0]
        return Schedule("once", text, tz_name, at=int(at))
    fields = text.split()
    if not (text.startswith("@") or len(fields) == 5) or not croniter.is_valid(text):
        raise ScheduleError(
            f"cannot read {text!r} as a schedule: use a cron expression with five fields "
            "(like '0 8 * * 1'), 'every 30m', or a time for once (like 2025-06-01T08:00)"
        )
    schedule = Schedule("cron", text, tz_name, cron=text)
    try:
        next_after(schedule, int(now))
    except CroniterError as exc:  # e.g. `0 0 30 2 *`: valid fields, but no such day
        raise ScheduleError(f"{text!r} never runs") from exc
    return schedule


def check_pace(schedule: Schedule, *, gated: bool, minimum: float) -> None:
    """Refuse an interval shorter than `minimum` seconds: each run is a model turn. A task gated by a
    pre-check script may run more often, since the script (not the model) decides most runs."""
    if schedule.kind == "interval" and schedule.every < minimum and not gated:
        raise ScheduleError(
            f"'{schedule.text}' would wake the model every {schedule.every} s; the shortest "
            f"interval is {_seconds(minimum)}, unless a pre-check script decides when the "
            "model is woken (--script)"
        )


def check_future(schedule: Schedule, now: float, slack: float = 60.0) -> None:
    """Refuse a one-shot time that is already past (by more than `slack` seconds: "now" typed a little
    late is still now); it would fire at once, which is rarely what was meant."""
    if schedule.kind == "once" and schedule.at < now - slack:
        ago = _seconds(now - schedule.at)
        raise ScheduleError(f"'{schedule.text}' is in the past ({local(schedule.at, schedule.zone)}, {ago} ago)")


def _seconds(span: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if span >= size:
            return f"{span / size:.0f} {unit}"
    return f"{span:.0f} s"


def first_run(schedule: Schedule, created: int) -> int | None:
    """The first scheduled instant of a task created (or rescheduled) at `created`."""
    if schedule.kind == "once":
        return schedule.at  # even when already past: a late reminder beats a lost one
    return next_after(schedule, created, anchor=created)


def next_after(schedule: Schedule, after: int, *, anchor: int | None = None) -> int | None:
    """The first scheduled instant strictly after `after` (a scheduled instant, not "now").

    Intervals count elapsed time from `anchor` (default: `after` itself, a scheduled instant).
    """
    if schedule.kind == "once":
        return schedule.at if schedule.at > after else None
    if schedule.kind == "interval":
        base = after if anchor is None else anchor
        steps = max(1, (after - base) // schedule.every + 1)
        return base + steps * schedule.every
    return _next_cron(schedule.cron, schedule.tz, after)


def period(schedule: Schedule, at: int) -> int | None:
    """Seconds from the run at `at` to the next one (None for a one-shot)."""
    following = next_after(schedule, at)
    return None if following is None else following - at


def _next_cron(expr: str, tz: ZoneInfo, after: int) -> int:
    # Walk the naive wall-clock candidates from a little before `after`'s wall time, map each to
    # its real instants, keep the earliest one after `after`; stop once no later candidate could
    # map earlier. Mapping handles the gap (spring forward) and the repeated hour (fall back).
    repeat = croniter(expr).expanded[1] == ["*"]  # hourly jobs run in both passes of a repeated hour
    start = datetime.fromtimestamp(after, tz).replace(tzinfo=None) - _DST_SLACK
    walk = croniter(expr, start)
    best: int | None = None
    best_wall: datetime | None = None
    while True:
        wall: datetime = walk.get_next(datetime)
        if best_wall is not None and wall > best_wall + 2 * _DST_SLACK:
            assert best is not None
            return best
        for instant in _wall_instants(wall, tz, repeat=repeat):
            if instant > after and (best is None or instant < best):
                best, best_wall = int(instant), wall


def _wall_instants(wall: datetime, tz: ZoneInfo, *, repeat: bool) -> list[float]:
    """The instants at which the zone's clock shows `wall`: none in a gap (we use the moment the
    clock jumps over it), two in a repeated hour (the first only, unless `repeat`)."""
    first = wall.replace(tzinfo=tz, fold=0)
    second = wall.replace(tzinfo=tz, fold=1)
    t0, t1 = first.timestamp(), second.timestamp()
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != wall:
        return [float(_transition(tz, int(t1), int(t0)))]
    if t0 == t1 or not repeat:
        return [t0]
    return [t0, t1]


def _transition(tz: ZoneInfo, before: int, after: int) -> int:
    """The first second in [before, after] with `after`'s UTC offset: when the clock jumped."""
    target = datetime.fromtimestamp(after, tz).utcoffset()
    lo, hi = before, after
    while lo < hi:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def iso(instant: int) -> str:
    """An instant as it appears in message ids and logs: `2025-03-30T01:00:00Z`."""
    return datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def local(instant: int, zone_name: str) -> str:
    """An instant on the task's own clock, for people: `2025-03-30 03:00 CEST`."""
    return datetime.fromtimestamp(instant, ZoneInfo(zone_name)).strftime("%Y-%m-%d %H:%M:%S %Z")
