"""The dashboard's pages as rendered on the server, without a browser."""

from __future__ import annotations

import time

from clawden.bus import events as ev
from services.approvals.service import waiting_for_router
from services.web import pages


def test_a_request_waiting_for_the_router_shows_why_and_nothing_to_press() -> None:
    request = ev.ApprovalRequest(
        id="ap-waits",
        kind="credential",
        requester="vault",
        agent_group="main",
        card=ev.Card(
            title="POST api.example.org/v1/charge", body="spend money", buttons=(ev.Button("approve", "Approve"),)
        ),
        expires_at=time.time() + 600,
    )
    page = pages.approvals([waiting_for_router(request, time.time(), time.time() + 600)], "owner", "token")
    assert "POST api.example.org/v1/charge" in page
    assert "<em>waiting for the router</em>" in page
    assert 'action="/approvals/ap-waits"' not in page
