"""Who gets in, decided without I/O: one-time links, sessions, CSRF tokens, the Origin check and the
login rate limit. The store keeps only digests of links and sessions; the clock comes in as a number."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

COOKIE = "clawden_session"
LinkState = Literal["ok", "unknown", "used", "expired"]
REFUSALS: dict[LinkState, str] = {
    "unknown": "This sign-in link is not known here. Run `clawden web login` for a new one.",
    "used": "This sign-in link was already used: each works once. Run `clawden web login` for a new one.",
    "expired": "This sign-in link has expired. Run `clawden web login` for a new one.",
}


def new_secret() -> str:
    """A link token, session id or CSRF token: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What the store keeps instead of a link or a session id: a copy of web.db lets nobody in."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Link:
    expires_at: float
    used_at: float | None


def link_state(link: Link | None, now: float) -> LinkState:
    if link is None:
        return "unknown"
    if link.used_at is not None:
        return "used"
    if now >= link.expires_at:
        return "expired"
    return "ok"


def same_secret(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def origin_of(url: str) -> str:
    """`https://Example.org:443/x` -> `https://example.org`: what a browser sends as Origin."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = f":{parts.port}" if parts.port is not None and parts.port != default else ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


def origin_ok(origin: str | None, expected: str) -> bool:
    """A state-changing request must say it comes from our own pages: browsers send Origin on every POST,
    and a page on another site cannot forge it. No Origin at all is refused too (no browser omits it)."""
    return origin is not None and origin != "null" and origin_of(origin) == expected


def session_cookie(value: str, *, secure: bool, max_age: int) -> str:
    """The Set-Cookie value: never readable by scripts, never sent on a cross-site request."""
    flags = f"; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict"
    return f"{COOKIE}={value}{flags}{'; Secure' if secure else ''}"


def client_source(peer: str, forwarded: str, proxied: bool) -> str:
    """Whom a sign-in attempt counts against: the address it came from, or behind our proxy (`proxied`: one on
    this machine, since we listen on loopback) the last hop of X-Forwarded-For, the one that proxy adds; else
    every visitor would be one source, and anyone could spend the owner's attempts. Hops before it are whatever
    the visitor sent, and a request from elsewhere than loopback did not come through that proxy."""
    hop = forwarded.rpartition(",")[2].strip()
    return hop if proxied and hop and _loopback(peer) else peer


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # not an address at all (a test client, a unix socket)
        return False


@dataclass
class LoginLimit:
    """A token bucket per source: `rate` attempts a second, up to `burst` at once. Returns seconds to wait."""

    rate: float
    burst: int
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # source -> (tokens, at)
    max_sources: int = 10_000

    def take(self, source: str, now: float) -> float:
        tokens, at = self.buckets.get(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self.buckets[source] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if source not in self.buckets and len(self.buckets) >= self.max_sources:
            self.buckets.clear()  # a flood of sources: start over rather than grow without bound
        self.buckets[source] = (tokens - 1.0, now)
        return 0.0
