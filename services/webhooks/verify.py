"""What a platform defines to prove a delivery is its own, checked on the raw bytes before anything parses
them. Pure functions: the ASGI app (app.py) only feeds them what came off the socket.

Meta (WhatsApp Cloud API), from its "Webhooks: Getting Started" page: a GET with `hub.mode=subscribe`,
`hub.verify_token` and `hub.challenge` is answered with the challenge, as is, when the token is the one
the app was configured with; every POST carries `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the
raw body keyed by the app secret>` ("Validate payloads").
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

SIGNATURE_HEADER = "x-hub-signature-256"
SIGNATURE_PREFIX = "sha256="
MAX_CHALLENGE = 256  # Meta's challenge is a short integer string; anything long is not Meta


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str  # for the log line; the client gets only the status


def meta_signature(secret: bytes, body: bytes) -> str:
    """The header value Meta sends for this body."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def check_meta_signature(secret: bytes, body: bytes, header: str | None) -> Refusal | None:
    """None when `header` is Meta's signature of `body`; the compare takes the same time however much matches."""
    if not header:
        return Refusal(401, "no X-Hub-Signature-256 header")
    if not header.startswith(SIGNATURE_PREFIX) or len(header) != len(SIGNATURE_PREFIX) + 64:
        return Refusal(401, "X-Hub-Signature-256 is not sha256=<64 hex digits>")
    if not hmac.compare_digest(header.encode(), meta_signature(secret, body).encode()):
        return Refusal(401, "X-Hub-Signature-256 does not match the body (wrong app secret, or altered)")
    return None


def meta_handshake(query: dict[str, str], verify_token: str) -> tuple[int, str]:
    """(status, body) for Meta's subscription GET: the challenge echoed on success."""
    mode, token, challenge = query.get("hub.mode"), query.get("hub.verify_token"), query.get("hub.challenge")
    if mode != "subscribe" or token is None or not challenge or len(challenge) > MAX_CHALLENGE:
        return 400, "expected hub.mode=subscribe, hub.verify_token and hub.challenge"
    if not hmac.compare_digest(token.encode(), verify_token.encode()):
        return 403, "verify token does not match"
    return 200, challenge
