"""What to do with a task's runs that are due: fire them, or, for runs that came due while the scheduler was down
or the machine asleep, catch up as its policy says.

Pure: given the task's next scheduled instant, its schedule and what the scheduler saw of the time (a `Watch`), it
returns the runs to fire and to log as not fired, and the next instant to wait for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.scheduler.schedule import Schedule, next_after, period

Policy = Literal["skip", "once"]
Outcome = Literal["fired", "caught_up", "missed", "skipped"]
POLICIES: tuple[Policy, ...] = ("once", "skip")

# Only where no clock tells how long the machine slept (`Watch.slept` None): a run this much behind (or half its
# period, if that is shorter) counts as come due in a sleep.
GRACE = 60
# Runs listed one by one after downtime; beyond that the log keeps the first ones and a count.
MAX_LISTED = 1000


@dataclass(frozen=True)
class Watch:
    """What the scheduler saw of the time at one look at the clock (wall times, epoch seconds)."""

    started: float  # when the scheduler started: a run due before came due while it was down
    since: float  # its previous look at the clock (or its start): it was running and awake then
    now: float  # this look
    slept: float | None  # how long the machine was suspended between the two looks; None: no clock here tells


@dataclass
class Plan:
    fire: list[tuple[int, Outcome]] = field(default_factory=list)  # (scheduled instant, fired|caught_up)
    not_fired: list[tuple[int, Outcome]] = field(default_factory=list)  # (instant, missed|skipped)
    unlisted: int = 0  # more runs were missed than listed (an interval over a long downtime)
    next_run: int | None = None  # None: the task is done


def grace(schedule: Schedule, at: int) -> float:
    gap = period(schedule, at)
    return GRACE if gap is None else min(GRACE, gap / 2)


def away(watch: Watch, schedule: Schedule, at: int, anchor: int = 0) -> bool:
    """Whether the run at `at` came due while the scheduler was away: down, or the machine asleep. A run that came
    due while both were up fires, however late the scheduler (starved of CPU, blocked on a disk) got to it.

    A run whose instant was already past when its task was scheduled (`anchor`: a one-shot added with a time
    gone by) came due then."""
    due = max(at, anchor)
    if due < watch.started:
        return True
    if watch.slept is None:
        return watch.now - due > grace(schedule, at)
    # The machine slept `slept` seconds between the two looks, taken as one sleep (a lid closed and opened: the
    # scheduler looks at the clock at least every 5 minutes it is awake). The run came due in it for sure only if
    # every place that sleep could have been covers it; if it could have ended before the run came due, or begun
    # after, the scheduler may have been awake for the run, and it fires (late).
    return watch.now - watch.slept < due < watch.since + watch.slept


def plan(schedule: Schedule, next_run: int, watch: Watch, policy: Policy, anchor: int = 0) -> Plan:
    """The runs due at `watch.now`, starting with `next_run` (the task's stored next instant); `anchor`: when the
    task's schedule was set."""
    now = watch.now
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
    late = [s for s in due if away(watch, schedule, s, anchor)]
    result.fire = [(s, "fired") for s in due if s not in late]
    if late and policy == "once" and (not result.fire or late[-1] > result.fire[-1][0]):
        # The most recent missed run, what the task would say now, unless a later one fires anyway.
        result.fire.append((late.pop(), "caught_up"))
    # One run at a time: several due at one look (an awake scheduler starved past a period) would be the same
    # prompt a few times over at once; the most recent stands for them.
    late += [s for s, _ in result.fire[:-1]]
    result.fire = result.fire[-1:]
    result.not_fired = [(s, "missed" if policy == "once" else "skipped") for s in sorted(late)]
    return result
