"""What an approval card says: plain words for each kind, short card ids, and the card after the outcome."""

from __future__ import annotations

import secrets
import string

from clawden.bus import events as ev

CARD_PREFIX = "ap-"
_ALPHABET = string.digits + string.ascii_lowercase
PREVIEW_CHARS = 600
APPROVE = ev.Button(id="approve", label="Approve", style="primary")
DENY = ev.Button(id="deny", label="Deny", style="danger")


def short_id() -> str:
    """`ap-` and 8 base36 characters: with a button index it fits Telegram's 64-byte callback data,
    whatever length the requester's own id has."""
    return CARD_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(8))


def card_for(request: ev.ApprovalRequest) -> ev.Card:
    """The card an approver sees. A credential use is spelled out from the vault's context (which the
    vault already stripped of secrets); only those fields are shown, so nothing secret is added."""
    if request.kind != "credential" or not request.context.get("host"):
        return request.card
    c = request.context
    method, host, path = c.get("method", "?"), c["host"], c.get("path", "/")
    lines = [
        f"Agent group {request.agent_group} wants to send a request with a stored credential:",
        f"{method} https://{host}{path}",
    ]
    if c.get("rule"):
        lines.append(f"Rule asking for approval: {c['rule']}")
    preview = c.get("body_preview", "")
    if preview:
        if len(preview) > PREVIEW_CHARS:
            preview = preview[: PREVIEW_CHARS - 1] + "…"
        lines += ["", "Start of the body (credentials removed):", preview]
    return ev.Card(
        title=f"Allow {request.agent_group} to call {host}?",
        body="\n".join(lines),
        buttons=request.card.buttons or (APPROVE, DENY),
    )


def text_of(card: ev.Card) -> str:
    """The message text a bridge shows beside (or, without buttons, instead of) the card."""
    return f"{card.title}\n\n{card.body}" if card.body else card.title


def outcome_line(decision: str, decided_by: str, label: str = "", reason: str = "") -> str:
    who = f" by {decided_by}" if decided_by else ""
    match decision:
        case "approved":
            return f"✅ Approved{who}" + (f": {label}" if label and label.lower() != "approve" else "")
        case "denied":
            return f"❌ Denied{who}" + (f" ({reason})" if reason and not decided_by else "")
        case "answered":
            return f"Answered{who}: {label}"
        case "withdrawn":  # its requester stopped waiting: nothing was let through
            return f"↩️ Withdrawn: {reason or 'nobody waits for it any more'}"
        case _:
            return f"⌛ Expired ({reason or 'nobody answered in time'})"


def stopped_waiting_line(reason: str) -> str:
    """Under the outcome of a card decided before its requester, which had stopped waiting, heard the decision."""
    return f"↩️ But its requester had stopped waiting ({reason}): nothing was let through"


def decided_card(card: ev.Card, line: str) -> ev.Card:
    """The card after the outcome: the same words, the outcome below, and no buttons left to press."""
    body = f"{card.body}\n\n{line}" if card.body else line
    return ev.Card(title=card.title, body=body, buttons=())
