"""What to do with a task's runs that are due: fire them, or, after downtime, catch up as its policy says.

Pure: given the task's next scheduled instant, its schedule and the time, it returns the runs to
fire and to log as not fired, and the next instant to wait for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.scheduler.schedule import Schedule, next_after, period

Policy = Literal["skip", "once"]
Outcome = Literal["fired", "caught_up", "missed", "skipped"]
POLICIES: tuple[Policy, ...] = ("once", "skip")

# A run this much behind (or half its period, if that is shorter) was missed, not just late:
# timer jitter and a quick restart stay on time, downtime is caught up by the policy.
GRACE = 60
# Runs listed one by one after downtime; beyond that the log keeps the first ones and a count.
MAX_LISTED = 1000


@dataclass
class Plan:
    fire: list[tuple[int, Outcome]] = field(default_factory=list)  # (scheduled instant, fired|caught_up)
    not_fired: list[tuple[int, Outcome]] = field(default_factory=list)  # (instant, missed|skipped)
    unlisted: int = 0  # more runs were missed than listed (an interval over a long downtime)
    next_run: int | None = None  # None: the task is done


def grace(schedule: Schedule, at: int) -> float:
    gap = period(schedule, at)
    return GRACE if gap is None else min(GRACE, gap / 2)


def plan(schedule: Schedule, next_run: int, now: float, policy: Policy) -> Plan:
    """The runs due at `now`, starting with `next_run` (the task's stored next instant)."""
    due: list[int] = []
    at: int | None = next_run
    while at is not None and at <= now and len(due) < MAX_LISTED:
        due.append(at)
        at = next_after(schedule, at)
    result = Plan()
    if at is not None and at <= now:  # still behind after MAX_LISTED runs: jump ahead
        last = at
        at = next_after(schedule, int(now))
        if schedule.kind == "interval":
            result.unlisted = (int(now) - last) // schedule.every + 1
        else:
            result.unlisted = 1  # at least one more; cron runs are not worth counting one by one
    result.next_run = at
    on_time = [s for s in due if now - s <= grace(schedule, s)]
    late = [s for s in due if s not in on_time]
    if on_time:
        result.fire = [(s, "fired") for s in on_time]
        result.not_fired = [(s, "missed" if policy == "once" else "skipped") for s in late]
    elif late and policy == "once":
        result.fire = [(late[-1], "caught_up")]  # the most recent: what the task would say now
        result.not_fired = [(s, "missed") for s in late[:-1]]
    else:
        result.not_fired = [(s, "skipped") for s in late]
    return result
