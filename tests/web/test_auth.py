"""Who gets in, as tables: one-time links, the Origin check, the cookie, CSRF comparison, the login limit."""

from __future__ import annotations

import pytest

from services.web import auth


@pytest.mark.parametrize(
    ("link", "now", "state"),
    [
        (None, 0.0, "unknown"),
        (auth.Link(expires_at=100.0, used_at=50.0), 60.0, "used"),
        (auth.Link(expires_at=100.0, used_at=None), 100.0, "expired"),
        (auth.Link(expires_at=100.0, used_at=None), 99.9, "ok"),
    ],
)
def test_a_link_works_once_and_only_before_it_expires(link: auth.Link | None, now: float, state: str) -> None:
    assert auth.link_state(link, now) == state


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8790/", "http://127.0.0.1:8790"),
        ("https://Clawden.Example.org:443/x", "https://clawden.example.org"),
        ("http://example.org:80", "http://example.org"),
        ("https://example.org:8443", "https://example.org:8443"),
        ("http://[::1]:8790", "http://[::1]:8790"),
        ("ftp://example.org:21", "ftp://example.org:21"),
    ],
)
def test_an_origin_is_scheme_host_and_a_port_other_than_the_default(url: str, origin: str) -> None:
    assert auth.origin_of(url) == origin


@pytest.mark.parametrize(
    ("given", "ok"),
    [
        ("http://127.0.0.1:8790", True),
        ("http://127.0.0.1:8791", False),
        ("https://evil.example", False),
        ("null", False),  # a sandboxed frame or a file: page
        (None, False),
    ],
)
def test_only_our_own_origin_may_change_anything(given: str | None, ok: bool) -> None:
    assert auth.origin_ok(given, "http://127.0.0.1:8790") is ok


def test_the_session_cookie_is_httponly_strict_and_secure_behind_tls() -> None:
    plain = auth.session_cookie("abc", secure=False, max_age=60)
    assert plain == "clawden_session=abc; Max-Age=60; Path=/; HttpOnly; SameSite=Strict"
    assert auth.session_cookie("abc", secure=True, max_age=60).endswith("; SameSite=Strict; Secure")


@pytest.mark.parametrize(
    ("given", "expected", "ok"), [("t", "t", True), ("t", "u", False), ("", "", False), ("", "t", False)]
)
def test_a_csrf_token_must_be_given_and_match(given: str, expected: str, ok: bool) -> None:
    assert auth.same_secret(given, expected) is ok


def test_secrets_are_fresh_and_stored_only_as_digests() -> None:
    a, b = auth.new_secret(), auth.new_secret()
    assert a != b and len(a) >= 43
    assert auth.digest(a) != a and len(auth.digest(a)) == 64 and auth.digest(a) == auth.digest(a)


def test_login_attempts_are_limited_per_source_and_refill_over_time() -> None:
    limit = auth.LoginLimit(rate=0.5, burst=2)
    assert limit.take("a", 0.0) == 0.0
    assert limit.take("a", 0.0) == 0.0
    assert limit.take("a", 0.0) == pytest.approx(2.0)  # a third at once waits for a token
    assert limit.take("b", 0.0) == 0.0  # another source has its own bucket
    assert limit.take("a", 2.0) == 0.0  # two seconds later one token came back


def test_a_flood_of_sources_starts_the_buckets_over_instead_of_growing() -> None:
    limit = auth.LoginLimit(rate=1.0, burst=1, max_sources=2)
    limit.take("a", 0.0)
    limit.take("b", 0.0)
    assert limit.take("c", 0.0) == 0.0
    assert set(limit.buckets) == {"c"}


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxied", "source"),
    [
        ("127.0.0.1", "203.0.113.9", True, "203.0.113.9"),  # through our proxy: the visitor it names
        ("::1", "198.51.100.7, 203.0.113.9", True, "203.0.113.9"),  # the hop it added, not what the visitor sent
        ("127.0.0.1", "", True, "127.0.0.1"),  # a proxy that names nobody
        ("127.0.0.1", "203.0.113.9, ", True, "127.0.0.1"),
        ("192.0.2.4", "203.0.113.9", True, "192.0.2.4"),  # not through the proxy on this machine
        ("unknown", "203.0.113.9", True, "unknown"),
        ("127.0.0.1", "203.0.113.9", False, "127.0.0.1"),  # no proxy: the header is anyone's to write
    ],
)
def test_sign_ins_count_against_the_visitor_our_proxy_names_and_only_behind_it(
    peer: str, forwarded: str, proxied: bool, source: str
) -> None:
    assert auth.client_source(peer, forwarded, proxied) == source
