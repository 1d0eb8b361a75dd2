"""`clawden status`'s backlog table folds the durables a person does not read one by one: a bridge's eight lanes, and
the terminal chats' durables, whose `pending` counts other chats' replies (each reads every terminal lane)."""

from __future__ import annotations

from typing import Any

from clawden.cli.status import render
from clawden.survey import fold_lanes
from services.web.pages import status


def durable(name: str, pending: int = 0, ack_pending: int = 0, stream: str = "CLAWDEN_OUTBOUND") -> dict[str, Any]:
    return {
        "stream": stream,
        "durable": name,
        "owner": "",
        "pending": pending,
        "ack_pending": ack_pending,
        "redelivered": 0,
        "waiting_pulls": 0,
    }


def test_the_terminal_chats_are_one_row_without_a_pending_count_of_their_own() -> None:
    rows = [durable("channel-local-terminal", 40, 1), durable("channel-local-kitchen", 38), durable("router", 2)]
    router, terminals = fold_lanes(rows, ())
    assert router == rows[2]
    assert terminals == {
        "stream": "CLAWDEN_OUTBOUND",
        "durable": "channel-local-* (2 chats)",
        "owner": "cli",
        "chats": 2,
        "pending": None,
        "ack_pending": 1,
        "redelivered": 0,
        "waiting_pulls": 0,
    }
    [one] = fold_lanes(rows[:1], ())
    assert one["durable"] == "channel-local-* (1 chat)"


def test_no_terminal_chat_no_row() -> None:
    assert fold_lanes([durable("router"), durable("channel-local-x", stream="CLAWDEN_EVENTS")], ()) == [
        durable("router"),
        durable("channel-local-x", stream="CLAWDEN_EVENTS"),
    ]


def report(streams: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "nats": "nats://127.0.0.1:4222",
        "at": 0.0,
        "services": [],
        "down": [],
        "containers": {"error": "not asked"},
        "streams": streams,
        "approvals": {"pending": 0, "items": []},
        "deliveries": [],
    }


def test_the_cli_and_the_web_show_a_dash_where_there_is_no_backlog_of_its_own() -> None:
    folded = fold_lanes([durable("channel-local-terminal", 40)], ())
    line = next(x for x in render(report(folded)).splitlines() if "channel-local-*" in x)
    assert line.split()[4:6] == ["cli", "-"] and "40" not in line
    assert "None" not in status(report(folded), user="owner", csrf="t")
