"""What the web pages render, without a browser."""

from __future__ import annotations

import time

from clawden.bus.ctl import approvals as approvals_ctl
from services.web import pages


def pending(reason: str, buttons: list[approvals_ctl.ButtonInfo]) -> approvals_ctl.ApprovalDetail:
    now = time.time()
    return approvals_ctl.ApprovalDetail(
        id="ap-waits",
        card_id="",
        kind="credential",
        requester="vault",
        agent_group="main",
        status="pending",
        approver="",
        channel="",
        chat_id="",
        created_at=now,
        expires_at=now + 600,
        decided_at=None,
        decided_by="",
        value="",
        reason=reason,
        thread_id=None,
        card_message_id=None,
        edited=0,
        unreachable="[]",
        deciders=[],
        title="POST api.example.org/v1/charge",
        body="spend money",
        buttons=buttons,
        audit=[],
    )


def test_a_request_waiting_for_the_router_shows_why_and_its_choices() -> None:
    """Nobody has a card for it yet, but whoever may decide here may decide it: the reason and the buttons."""
    choices = [
        approvals_ctl.ButtonInfo(id="approve", label="Approve"),
        approvals_ctl.ButtonInfo(id="deny", label="Deny"),
    ]
    page = pages.approvals([pending("waiting for the router", choices)], "owner", "token")
    assert "POST api.example.org/v1/charge" in page
    assert "<em>waiting for the router</em>" in page
    assert 'action="/approvals/ap-waits"' in page and 'value="approve"' in page and 'value="deny"' in page


def test_a_request_with_nothing_to_press_shows_only_why() -> None:
    page = pages.approvals([pending("nothing to choose", [])], "owner", "token")
    assert "<em>nothing to choose</em>" in page and 'action="/approvals/ap-waits"' not in page
