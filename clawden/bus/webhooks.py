"""The webhook front door's contract with the bridges behind it: which channels it serves and how each
platform signs, and the message it stores in JetStream for each verified delivery.

A bridge's route is registered here, by name, not by a call at run time: the front door must verify
a delivery while its bridge is down (that is when nothing may be lost), so it cannot wait for the
bridge to say what its route is. A third-party bridge adds its route in config.toml
(`[webhooks.routes] <channel> = "<scheme>"`) with one of the schemes below.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from clawden.bus import subjects

# How a platform proves a delivery is its own. "meta": the GET hub.challenge handshake with a verify
# token, then X-Hub-Signature-256 = HMAC-SHA256(app secret, raw body) on every POST (Meta's
# "Webhooks: Getting Started" and "Validate payloads" pages; WhatsApp Cloud API uses them as is).
Scheme = Literal["meta"]
SCHEMES: tuple[str, ...] = ("meta",)
BUILT_IN_ROUTES: dict[str, Scheme] = {"whatsapp": "meta"}
# The secrets a route's scheme needs, each a 0600 file under keys/ or a variable (CLAWDEN_<NAME>_<KEY>).
SECRETS: dict[str, tuple[str, ...]] = {"meta": ("app_secret", "verify_token")}


class WebhookDelivery(msgspec.Struct, frozen=True, kw_only=True, tag="webhook", tag_field="type"):
    """One verified delivery, as the platform sent it: the bridge parses the body, never the front door."""

    channel: str
    path: str  # below /hooks/<channel>, "" for the route itself
    received_at: float
    body: bytes  # the raw bytes whose signature was checked (base64 in JSON)


def msg_id(channel: str, body: bytes) -> str:
    """Nats-Msg-Id of a delivery: a platform's retry repeats the body byte for byte, so its hash is the
    natural key (Meta retries a failed delivery for up to seven days with the same payload)."""
    return f"{subjects.token(channel)}:{hashlib.sha256(body).hexdigest()}"


encoder = msgspec.json.Encoder()
decoder = msgspec.json.Decoder(WebhookDelivery)
