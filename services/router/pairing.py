"""One-time pairing codes: `clawden pair <channel>` prints one; whoever sends it there becomes an owner."""

from __future__ import annotations

import hashlib
import hmac
import secrets

# No 0/O, 1/I/L: the code is read off a terminal and typed into a phone.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
LENGTH = 10  # ~49 bits: unguessable in the few minutes a code lives
TTL = 600.0


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def _normal(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch not in " -\t\n")


def digest(code: str) -> str:
    """Only the digest is stored, so a copy of router.db does not hold a live code."""
    return hashlib.sha256(_normal(code).encode()).hexdigest()


def matches(text: str, code_digest: str) -> bool:
    """The whole message is the code (case, spaces and dashes aside)."""
    if not code_digest or len(text) > 4 * LENGTH:
        return False
    normal = _normal(text)
    return len(normal) == LENGTH and hmac.compare_digest(digest(normal), code_digest)
