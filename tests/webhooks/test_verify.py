"""The front door's pure checks, as tables: Meta's signature and handshake, and the per-source rate."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from services.webhooks import verify
from services.webhooks.limits import MAX_SOURCES, RateLimit

SECRET = b"app-secret"
BODY = b'{"object":"whatsapp_business_account"}'
RIGHT = "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("header", "refused"),
    [
        (RIGHT, None),
        (None, "no X-Hub-Signature-256"),
        ("", "no X-Hub-Signature-256"),
        ("sha1=" + "0" * 40, "not sha256="),
        (RIGHT[:-1], "not sha256="),
        ("sha256=" + "0" * 64, "does not match"),
        (RIGHT.upper().replace("SHA256=", "sha256="), "does not match"),  # Meta sends lowercase hex
    ],
)
def test_a_signature_is_accepted_only_when_it_is_metas_over_these_bytes(
    header: str | None, refused: str | None
) -> None:
    result = verify.check_meta_signature(SECRET, BODY, header)
    if refused is None:
        assert result is None
    else:
        assert result is not None and result.status == 401 and refused in result.reason


def test_one_changed_byte_breaks_the_signature() -> None:
    assert verify.check_meta_signature(SECRET, BODY + b" ", RIGHT) is not None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"hub.mode": "subscribe", "hub.verify_token": "tok", "hub.challenge": "1158201444"}, (200, "1158201444")),
        ({"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1158201444"}, (403, None)),
        ({"hub.mode": "unsubscribe", "hub.verify_token": "tok", "hub.challenge": "1"}, (400, None)),
        ({"hub.mode": "subscribe", "hub.challenge": "1"}, (400, None)),
        ({"hub.mode": "subscribe", "hub.verify_token": "tok", "hub.challenge": "x" * 300}, (400, None)),
    ],
)
def test_the_handshake_echoes_the_challenge_only_for_the_verify_token(
    query: dict[str, str], expected: tuple[int, str | None]
) -> None:
    status, body = verify.meta_handshake(query, "tok")
    assert status == expected[0]
    if expected[1] is not None:
        assert body == expected[1]
    else:
        assert query["hub.challenge"] not in body


def test_a_source_gets_its_burst_then_one_request_per_token_earned() -> None:
    rate = RateLimit(rate=2.0, burst=3)
    assert [rate.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate.take("a", 0.0) == pytest.approx(0.5)
    assert rate.take("b", 0.0) == 0.0  # another source has its own bucket
    assert rate.take("a", 0.5) == 0.0  # half a second at 2/s earned one
    assert rate.take("a", 0.5) > 0


def test_a_flood_of_sources_cannot_grow_the_table_past_its_bound() -> None:
    rate = RateLimit(rate=1.0, burst=1)
    for i in range(MAX_SOURCES + 50):
        rate.take(f"10.0.{i // 256}.{i % 256}", float(i) / 1e6)
    assert len(rate) <= MAX_SOURCES


def test_when_every_source_is_busy_the_longest_quiet_one_is_forgotten() -> None:
    rate = RateLimit(rate=0.001, burst=1)  # a bucket refills in 1000 s: nobody is idle in this test
    for i in range(MAX_SOURCES):
        assert rate.take(f"s{i}", float(i) / 1e6) == 0.0
    assert rate.take("s0", 0.5) > 0  # s0 has spent its token
    assert rate.take("newcomer", 1.0) == 0.0
    assert len(rate) == MAX_SOURCES
    assert rate.take("s1", 1.0) == 0.0  # s1 was the longest quiet, so it was forgotten: a fresh bucket


def test_sources_quiet_long_enough_to_have_a_full_bucket_are_forgotten_first() -> None:
    rate = RateLimit(rate=1.0, burst=1)
    for i in range(MAX_SOURCES):
        rate.take(f"s{i}", 0.0)
    assert rate.take("newcomer", 2.0) == 0.0  # everyone else refilled long ago: nothing to remember
    assert len(rate) == 1
