"""Due runs: a run that came due while the scheduler was up and the machine awake fires, however late; one that came
due while the scheduler was down or the machine asleep follows the task's catch-up policy."""

from __future__ import annotations

from services.scheduler.catchup import Watch, plan
from services.scheduler.schedule import parse

EVERY_SECOND = parse("every 1s", "UTC", 0)
EVERY_MINUTE = parse("every 1m", "UTC", 0)
DAILY = parse("0 8 * * *", "UTC", 0)
HOURLY = parse("0 * * * *", "UTC", 0)
DAY = 86_400
EIGHT = 8 * 3600


def up(since: float, now: float, slept: float | None = 0.0, started: float = 0.0) -> Watch:
    """Looks at the clock at `since` and `now`, the machine suspended `slept` seconds between them."""
    return Watch(started=started, since=since, now=now, slept=slept)


def test_a_run_due_now_fires_and_the_next_is_one_period_later() -> None:
    p = plan(DAILY, EIGHT, up(EIGHT - 300, EIGHT + 0.2), "skip")
    assert p.fire == [(EIGHT, "fired")] and p.not_fired == [] and p.next_run == EIGHT + DAY


def test_a_run_starved_for_five_minutes_past_its_time_fires_late_even_with_policy_skip() -> None:
    p = plan(DAILY, EIGHT, up(EIGHT - 10, EIGHT + 300), "skip")
    assert p.fire == [(EIGHT, "fired")] and p.not_fired == []


def test_runs_an_awake_scheduler_was_too_starved_to_fire_are_one_run_the_latest_whatever_its_policy() -> None:
    """The same prompt five times over at once is nobody's wish: the most recent fires, and stands for the rest."""
    p = plan(EVERY_MINUTE, 60, up(30, 330), "once")
    assert p.fire == [(300, "fired")] and p.next_run == 360
    assert p.not_fired == [(60, "missed"), (120, "missed"), (180, "missed"), (240, "missed")]
    p = plan(EVERY_MINUTE, 60, up(30, 330), "skip")
    assert p.fire == [(300, "fired")] and [o for _, o in p.not_fired] == ["skipped"] * 4


def test_a_run_due_while_the_machine_slept_is_skipped_however_soon_it_woke() -> None:
    p = plan(DAILY, EIGHT, up(EIGHT - 10, EIGHT + 30, slept=40), "skip")  # suspended from 07:59:50 to 08:00:30
    assert p.fire == [] and p.not_fired == [(EIGHT, "skipped")] and p.next_run == EIGHT + DAY


def test_a_run_due_while_the_machine_slept_overnight_is_caught_up_with_policy_once() -> None:
    p = plan(DAILY, EIGHT, up(EIGHT - 10 * 3600, EIGHT + 3600, slept=11 * 3600 - 200), "once")
    assert p.fire == [(EIGHT, "caught_up")] and p.not_fired == []


def test_a_sleep_that_could_have_ended_before_the_run_came_due_lets_it_fire() -> None:
    # 07:57 to 08:02 between the looks, 100 s of it asleep: the machine may have woken by 08:00:20 (the scheduler's
    # timer does not count a suspend, so it looks late), and a run it may have been awake for is not lost.
    assert plan(DAILY, EIGHT, up(EIGHT - 180, EIGHT + 120, slept=100), "skip").fire == [(EIGHT, "fired")]
    # nor one it may have been awake but starved for, the sleep beginning after it came due
    assert plan(DAILY, EIGHT, up(EIGHT - 60, EIGHT + 30, slept=50), "skip").fire == [(EIGHT, "fired")]


def test_runs_due_before_the_scheduler_started_are_skipped_however_quick_the_restart() -> None:
    p = plan(DAILY, EIGHT, up(EIGHT + 20, EIGHT + 20, started=EIGHT + 20), "skip")  # down 07:59:50 to 08:00:20
    assert p.fire == [] and p.not_fired == [(EIGHT, "skipped")]


def test_five_runs_missed_while_down_with_policy_once_fire_exactly_one_catch_up() -> None:
    p = plan(EVERY_SECOND, 100, up(104.7, 104.7, started=104.7), "once")
    assert p.fire == [(104, "caught_up")]
    assert p.not_fired == [(100, "missed"), (101, "missed"), (102, "missed"), (103, "missed")]
    assert p.next_run == 105


def test_a_run_due_since_the_restart_is_the_only_one_fired() -> None:
    p = plan(EVERY_SECOND, 100, up(104.5, 105.3, started=104.5), "once")  # 105 stands for the missed ones
    assert p.fire == [(105, "fired")] and [o for _, o in p.not_fired] == ["missed"] * 5


def test_five_runs_missed_while_down_with_policy_skip_fire_nothing() -> None:
    p = plan(EVERY_SECOND, 100, up(104.7, 104.7, started=104.7), "skip")
    assert p.fire == [] and [o for _, o in p.not_fired] == ["skipped"] * 5 and p.next_run == 105


def test_the_last_run_missed_in_a_sleep_is_caught_up_and_stands_for_one_due_while_awake() -> None:
    # Looks at 0 and 1000, asleep 950 s of it: only 50 s awake, so asleep for sure from 50 to 950.
    p = plan(parse("every 100s", "UTC", -60), 40, up(0, 1000, slept=950), "once")
    assert p.fire == [(940, "caught_up")]  # and it stands for the one before it, which came due awake
    assert p.not_fired == [(s, "missed") for s in range(40, 940, 100)] and p.next_run == 1040


def test_a_daily_job_missed_for_three_days_catches_up_once() -> None:
    p = plan(DAILY, EIGHT, up(EIGHT + 3 * DAY + 3600, EIGHT + 3 * DAY + 3600, started=EIGHT + 3 * DAY + 3600), "once")
    assert p.fire == [(EIGHT + 3 * DAY, "caught_up")] and len(p.not_fired) == 3
    assert p.next_run == EIGHT + 4 * DAY


def test_a_one_shot_is_done_after_it_fires() -> None:
    once = parse("in 10s", "UTC", 0)
    p = plan(once, 10, up(5, 10.1), "once", anchor=0)
    assert p.fire == [(10, "fired")] and p.next_run is None


def test_a_one_shot_scheduled_for_a_time_already_past_came_due_when_it_was_scheduled() -> None:
    # `clawden tasks add --now` at 08:00 for 07:00, the scheduler up since 07:30: not a run missed while down.
    past = parse("1970-01-01T07:00", "UTC", EIGHT)
    started = EIGHT - 1800
    assert plan(past, EIGHT - 3600, up(EIGHT - 60, EIGHT + 1, started=started), "skip", anchor=EIGHT).fire == [
        (EIGHT - 3600, "fired")
    ]
    # One the scheduler was down for (scheduled before it started) was.
    assert plan(past, EIGHT - 3600, up(EIGHT, EIGHT, started=EIGHT), "skip", anchor=EIGHT - 7200).fire == []


def test_without_a_clock_for_sleep_a_run_more_than_a_minute_late_counts_as_missed() -> None:
    assert plan(DAILY, EIGHT, up(EIGHT - 10, EIGHT + 30, slept=None), "skip").fire == [(EIGHT, "fired")]
    p = plan(DAILY, EIGHT, up(EIGHT - 10, EIGHT + 90, slept=None), "skip")
    assert p.fire == [] and p.not_fired == [(EIGHT, "skipped")]
    # half the period, for runs less than two minutes apart
    assert plan(EVERY_MINUTE, 60, up(50, 95, slept=None), "skip").not_fired == [(60, "skipped")]
    # and a run due before the start was missed while down, however little late
    assert plan(DAILY, EIGHT, up(EIGHT + 1, EIGHT + 1, slept=None, started=EIGHT + 1), "skip").fire == []


def test_a_long_downtime_is_summarised_not_listed_forever() -> None:
    p = plan(EVERY_SECOND, 0, up(10_000.7, 10_000.7, started=10_000.7), "skip")
    assert len(p.not_fired) == 1000 and p.unlisted > 8_000 and p.next_run == 10_001


def test_a_long_downtime_of_a_cron_job_is_summarised_too() -> None:
    now = 2000 * 3600 + 30.0
    p = plan(HOURLY, 3600, up(now, now, started=now), "skip")
    assert len(p.not_fired) == 1000 and p.unlisted == 1 and p.next_run == 2001 * 3600
