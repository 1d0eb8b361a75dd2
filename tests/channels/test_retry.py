"""The retry policy: the platform's retry_after wins, backoff grows with jitter, a deadline ends it, except for an
outage, which is waited out."""

from __future__ import annotations

import pytest

from services.channels.retry import PlatformError, RetryPolicy


def test_retry_after_from_the_platform_is_honoured_not_shortened() -> None:
    policy = RetryPolicy(first=1.0)
    assert 7.0 <= policy.delay(0, 7.0, jitter=0.0) <= 7.1
    assert 7.0 <= policy.delay(5, 7.0, jitter=1.0) <= 7.1


def test_backoff_doubles_up_to_the_ceiling_with_jitter_in_the_upper_half() -> None:
    policy = RetryPolicy(first=1.0, factor=2.0, ceiling=10.0)
    assert policy.delay(0, None, jitter=1.0) == 1.0
    assert policy.delay(2, None, jitter=1.0) == 4.0
    assert policy.delay(2, None, jitter=0.0) == 2.0
    assert policy.delay(20, None, jitter=1.0) == 10.0


def test_the_deadline_ends_retrying() -> None:
    policy = RetryPolicy(deadline=60.0)
    assert not policy.gives_up(elapsed=30.0, next_delay=20.0)
    assert policy.gives_up(elapsed=50.0, next_delay=20.0)


@pytest.mark.parametrize(
    ("kind", "retryable"), [("rate_limited", True), ("transient", True), ("permanent", False), ("unknown", False)]
)
def test_only_failures_where_the_platform_did_not_act_are_retryable(kind: str, retryable: bool) -> None:
    assert PlatformError("x", kind).retryable is retryable  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (PlatformError("cannot reach", "transient", connection=True), True),  # the request never left
        (PlatformError("HTTP 503", "transient", code=503), True),
        (PlatformError("upstream failure", "transient"), True),  # no status: unreachable
        (PlatformError("ratelimited", "rate_limited", code=429, retry_after=30), True),
        (PlatformError("invalid_auth", "transient", code=401), False),  # a refusal an operator can fix
        (PlatformError("451 try later", "transient", code=451), False),
        (PlatformError("channel_not_found", "permanent", code=404), False),
        (PlatformError("the answer was lost", "unknown", connection=True), False),
    ],
)
def test_an_outage_is_where_the_platform_neither_acted_nor_refused(error: PlatformError, outage: bool) -> None:
    assert error.outage is outage


def test_an_outage_is_waited_out_past_the_deadline() -> None:
    policy = RetryPolicy(deadline=60.0)
    assert not policy.gives_up(elapsed=3600.0, next_delay=60.0, outage=True)
    assert policy.gives_up(elapsed=3600.0, next_delay=60.0, outage=False)
