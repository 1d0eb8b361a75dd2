"""Next-run arithmetic: cron on a zone's wall clock across DST, month ends and leap days; intervals; once."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from services.scheduler.schedule import (
    ScheduleError,
    check_future,
    check_pace,
    first_run,
    iso,
    local,
    next_after,
    parse,
)


def at(wall: str, zone: str) -> int:
    return int(datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo(zone)).timestamp())


def runs(expr: str, zone: str, start: str, count: int) -> list[str]:
    schedule = parse(expr, zone, 0)
    t, out = at(start, zone), []
    for _ in range(count):
        nxt = next_after(schedule, t)
        assert nxt is not None
        out.append(local(nxt, zone))
        t = nxt
    return out


def test_daily_0230_in_berlin_fires_once_at_0300_on_the_spring_forward_day() -> None:
    assert runs("30 2 * * *", "Europe/Berlin", "2025-03-29T12:00", 3) == [
        "2025-03-30 03:00:00 CEST",
        "2025-03-31 02:30:00 CEST",
        "2025-04-01 02:30:00 CEST",
    ]


def test_daily_0230_in_new_york_fires_once_at_0300_on_the_spring_forward_day() -> None:
    assert runs("30 2 * * *", "America/New_York", "2025-03-08T12:00", 3) == [
        "2025-03-09 03:00:00 EDT",
        "2025-03-10 02:30:00 EDT",
        "2025-03-11 02:30:00 EDT",
    ]


def test_daily_0130_in_new_york_fires_once_on_the_fall_back_day() -> None:
    assert runs("30 1 * * *", "America/New_York", "2025-11-01T12:00", 3) == [
        "2025-11-02 01:30:00 EDT",
        "2025-11-03 01:30:00 EST",
        "2025-11-04 01:30:00 EST",
    ]


def test_daily_0230_in_berlin_fires_once_on_the_fall_back_day() -> None:
    assert runs("30 2 * * *", "Europe/Berlin", "2025-10-25T12:00", 2) == [
        "2025-10-26 02:30:00 CEST",
        "2025-10-27 02:30:00 CET",
    ]


def test_daily_job_keeps_its_wall_time_across_the_change_so_utc_moves_by_an_hour() -> None:
    schedule = parse("0 8 * * *", "Europe/Berlin", 0)
    before = next_after(schedule, at("2025-03-29T09:00", "Europe/Berlin"))
    assert before is not None and iso(before) == "2025-03-30T06:00:00Z"  # 08:00 CEST
    after = next_after(schedule, at("2025-03-28T09:00", "Europe/Berlin"))
    assert after is not None and iso(after) == "2025-03-29T07:00:00Z"  # 08:00 CET


def test_half_hourly_job_runs_in_both_passes_of_the_repeated_hour() -> None:
    assert runs("*/30 * * * *", "America/New_York", "2025-11-02T00:40", 5) == [
        "2025-11-02 01:00:00 EDT",
        "2025-11-02 01:30:00 EDT",
        "2025-11-02 01:00:00 EST",
        "2025-11-02 01:30:00 EST",
        "2025-11-02 02:00:00 EST",
    ]


def test_quarter_hourly_job_in_the_skipped_hour_fires_once_when_the_clock_jumps() -> None:
    assert runs("*/15 * * * *", "Europe/Berlin", "2025-03-30T01:40", 3) == [
        "2025-03-30 01:45:00 CET",
        "2025-03-30 03:00:00 CEST",
        "2025-03-30 03:15:00 CEST",
    ]


def test_the_31st_skips_the_months_that_lack_it() -> None:
    assert runs("0 12 31 * *", "UTC", "2025-01-31T13:00", 3) == [
        "2025-03-31 12:00:00 UTC",
        "2025-05-31 12:00:00 UTC",
        "2025-07-31 12:00:00 UTC",
    ]


def test_last_days_of_february_in_a_leap_year_and_after() -> None:
    assert runs("0 9 28,29 2 *", "Europe/Berlin", "2024-02-27T10:00", 3) == [
        "2024-02-28 09:00:00 CET",
        "2024-02-29 09:00:00 CET",
        "2025-02-28 09:00:00 CET",
    ]


def test_february_29th_waits_for_the_next_leap_year() -> None:
    assert runs("0 0 29 2 *", "UTC", "2024-02-29T00:00", 2) == ["2028-02-29 00:00:00 UTC", "2032-02-29 00:00:00 UTC"]


def test_next_run_counts_from_the_scheduled_time_not_from_now() -> None:
    schedule = parse("every 30m", "UTC", 0)
    assert next_after(schedule, 1_000) == 2_800  # even if "now" is much later
    assert first_run(schedule, 1_000) == 2_800


def test_interval_is_elapsed_time_even_across_dst() -> None:
    schedule = parse("every 1h", "Europe/Berlin", 0)
    start = at("2025-03-30T01:30", "Europe/Berlin")
    assert next_after(schedule, start) == start + 3600
    assert local(start + 3600, "Europe/Berlin") == "2025-03-30 03:30:00 CEST"


def test_interval_from_its_anchor_skips_to_the_next_slot_after_a_late_instant() -> None:
    schedule = parse("every 10s", "UTC", 0)
    assert next_after(schedule, 1_035, anchor=1_000) == 1_040


def test_once_fires_once_at_its_time() -> None:
    schedule = parse("2025-06-01T08:00", "Europe/Berlin", 0)
    assert iso(schedule.at) == "2025-06-01T06:00:00Z"
    assert first_run(schedule, 0) == schedule.at and next_after(schedule, schedule.at) is None


def test_once_with_an_offset_ignores_the_zone() -> None:
    assert iso(parse("2025-06-01T08:00:00+00:00", "Asia/Tokyo", 0).at) == "2025-06-01T08:00:00Z"


def test_once_in_a_relative_time_counts_from_the_request() -> None:
    assert parse("in 3s", "UTC", 1_000).at == 1_003
    assert parse("in 1 hour 30 minutes", "UTC", 0).at == 5_400


def test_naive_once_in_the_skipped_hour_lands_when_the_clock_jumps() -> None:
    assert local(parse("2025-03-30T02:30", "Europe/Berlin", 0).at, "Europe/Berlin") == "2025-03-30 03:00:00 CEST"


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("61 * * * *", "cannot read"),
        ("0 0 30 2 *", "never runs"),
        ("every 0s", "not a positive duration"),
        ("every 5 fortnights", "unknown time unit"),
        ("2025-13-01T00:00", "cannot read"),
        ("tomorrow at noon", "cannot read"),
    ],
)
def test_bad_schedules_are_refused_in_plain_words(schedule: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse(schedule, "UTC", 0)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", ""])
def test_unknown_zones_are_refused(zone: str) -> None:
    with pytest.raises(ScheduleError, match="unknown time zone"):
        parse("0 8 * * *", zone, 0)


def test_a_one_shot_a_little_late_is_still_now_but_an_old_one_is_past() -> None:
    check_future(parse("in 10s", "UTC", 1_000), 1_050)  # typed at 1000, read at 1050: still fine
    past = r"'2020-01-01T08:00' is in the past \(2020-01-01 08:00:00 UTC, 1\d\d\d d ago\)"
    with pytest.raises(ScheduleError, match=past):
        check_future(parse("2020-01-01T08:00", "UTC", 0), 1_700_000_000)


@pytest.mark.parametrize(
    ("schedule", "gated", "refused"),
    [
        ("every 59s", False, True),
        ("every 1m", False, False),
        ("every 1s", True, False),
        ("* * * * *", False, False),
    ],
)
def test_the_shortest_interval_without_a_pre_check_is_a_minute(schedule: str, gated: bool, refused: bool) -> None:
    if refused:
        with pytest.raises(ScheduleError, match="the shortest interval is 1 min"):
            check_pace(parse(schedule, "UTC", 0), gated=gated, minimum=60)
    else:
        check_pace(parse(schedule, "UTC", 0), gated=gated, minimum=60)
