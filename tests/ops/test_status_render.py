"""How `clawden status` shows a service that answers but says what it cannot do (ping's `trouble`)."""

from __future__ import annotations

import re
from typing import Any

from clawden.cli.status import healthy, render

TROUBLE = "cannot reach Telegram since 21:14 (connection refused); messages wait and go through once it answers"


def instance(name: str, **ping: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0", "pid": 4242, "uptime": 90.0, "endpoints": [], **ping}


def report_of(*services: dict[str, Any]) -> dict[str, Any]:
    return {
        "nats": "nats://127.0.0.1:4222",
        "at": 0.0,
        "services": list(services),
        "down": [],
        "containers": {"error": "no runner here"},
        "streams": [],
        "approvals": {"pending": 0, "items": []},
        "deliveries": [],
    }


def state_of(text: str, name: str) -> str:
    [state] = re.findall(rf"^{re.escape(name)} +(not answering|\S+)", text, re.MULTILINE)
    return state


def test_a_ready_service_with_trouble_is_degraded_and_its_line_follows_the_table() -> None:
    report = report_of(
        instance("channel-telegram", ready=True, trouble=TROUBLE),
        instance("router", ready=True, trouble=""),
    )

    text = render(report)

    assert (state_of(text, "channel-telegram"), state_of(text, "router")) == ("degraded", "up")
    assert f"\nchannel-telegram: {TROUBLE}\n" in text and "router:" not in text
    assert not healthy(report)


def test_a_service_without_trouble_or_from_before_it_is_up_and_healthy() -> None:
    report = report_of(instance("channel-telegram", ready=True, trouble=""), instance("router", ready=True))
    text = render(report)
    assert (state_of(text, "channel-telegram"), state_of(text, "router")) == ("up", "up")
    assert healthy(report)


def test_a_service_still_starting_or_not_answering_keeps_that_state() -> None:
    report = report_of(
        instance("channel-slack", ready=False, trouble="cannot reach Slack since 09:00; x"),
        instance("channel-discord", error="no responders"),
    )
    text = render(report)
    assert (state_of(text, "channel-slack"), state_of(text, "channel-discord")) == ("starting", "not answering")
    assert "\nchannel-slack: cannot reach Slack since 09:00; x\n" in text
    assert "\nchannel-discord: no responders\n" in text


def test_the_web_status_page_shows_the_same_state_and_why() -> None:
    from services.web import pages

    report = report_of(instance("channel-telegram", ready=True, trouble=TROUBLE), instance("router", ready=True))
    html = pages.status(report, "web:owner", "csrf")
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>.*?</tr>", html)
    assert ("channel-telegram", "degraded") in rows and ("router", "up") in rows
    assert "cannot reach Telegram since 21:14 (connection refused)" in html
