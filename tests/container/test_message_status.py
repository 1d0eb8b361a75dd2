"""What the agent's message_status tool answers for each delivery state: a table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clawden import sessiondb

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "container"))  # the image's own package
from clawden_agent.tools import delivery_status


@pytest.mark.parametrize(
    ("known", "says", "never"),
    [
        (None, "#7: no word from the chat app yet", "delivered"),
        (sessiondb.Delivery(7, "w", "delivered", None, 100.0), "#7: delivered at ", "read at"),
        (sessiondb.Delivery(7, "w", "delivered", None, 100.0, read_at=160.0), "#7: read at ", "not read"),
        (
            sessiondb.Delivery(7, None, "failed", "bot was blocked", 100.0),
            "never reached the chat: bot was blocked",
            "delivered",
        ),
        (
            sessiondb.Delivery(7, None, "failed", None, 100.0),
            "never reached the chat: the chat app refused it",
            "delivered",
        ),
    ],
)
def test_the_status_says_the_strongest_state_the_chat_app_reported(
    known: sessiondb.Delivery | None, says: str, never: str
) -> None:
    answer = delivery_status(7, known)
    assert says in answer and never not in answer


def test_a_read_message_says_when_it_was_delivered_too() -> None:
    answer = delivery_status(9, sessiondb.Delivery(9, "w", "delivered", None, 0.0, read_at=60.0))
    assert answer.startswith("#9: read at ") and "(delivered at " in answer
