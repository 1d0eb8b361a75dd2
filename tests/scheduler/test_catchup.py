"""Due runs after downtime: on-time runs fire, missed ones follow the task's catch-up policy."""

from __future__ import annotations

from services.scheduler.catchup import plan
from services.scheduler.schedule import parse

EVERY_SECOND = parse("every 1s", "UTC", 0)
DAILY = parse("0 8 * * *", "UTC", 0)
DAY = 86_400
EIGHT = 8 * 3600


def test_a_run_due_now_fires_and_the_next_is_one_period_later() -> None:
    p = plan(DAILY, EIGHT, EIGHT + 0.2, "skip")
    assert p.fire == [(EIGHT, "fired")] and p.not_fired == [] and p.next_run == EIGHT + DAY


def test_a_run_a_little_late_still_fires_as_normal() -> None:
    assert plan(DAILY, EIGHT, EIGHT + 30, "skip").fire == [(EIGHT, "fired")]


def test_five_missed_runs_with_policy_once_fire_exactly_one_catch_up() -> None:
    p = plan(EVERY_SECOND, 100, 104.7, "once")
    assert p.fire == [(104, "caught_up")]
    assert p.not_fired == [(100, "missed"), (101, "missed"), (102, "missed"), (103, "missed")]
    assert p.next_run == 105


def test_a_run_on_time_after_downtime_is_the_only_one_fired() -> None:
    p = plan(EVERY_SECOND, 100, 105.3, "once")  # 105 is due just now: it stands for the missed ones
    assert p.fire == [(105, "fired")] and [o for _, o in p.not_fired] == ["missed"] * 5


def test_five_missed_runs_with_policy_skip_fire_nothing() -> None:
    p = plan(EVERY_SECOND, 100, 104.7, "skip")
    assert p.fire == [] and [o for _, o in p.not_fired] == ["skipped"] * 5 and p.next_run == 105


def test_a_daily_job_missed_for_three_days_catches_up_once() -> None:
    p = plan(DAILY, EIGHT, EIGHT + 3 * DAY + 3600, "once")
    assert p.fire == [(EIGHT + 3 * DAY, "caught_up")] and len(p.not_fired) == 3
    assert p.next_run == EIGHT + 4 * DAY


def test_a_one_shot_is_done_after_it_fires() -> None:
    once = parse("in 10s", "UTC", 0)
    p = plan(once, 10, 10.1, "once")
    assert p.fire == [(10, "fired")] and p.next_run is None


def test_a_long_downtime_is_summarised_not_listed_forever() -> None:
    p = plan(EVERY_SECOND, 0, 10_000.7, "skip")
    assert len(p.not_fired) == 1000 and p.unlisted > 8_000 and p.next_run == 10_001
