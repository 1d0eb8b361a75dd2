"""Slash commands: which reach the agent, which need an admin, which never leave the host."""

from __future__ import annotations

import pytest

from services.router.commands import Command, parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/clear", Command("clear", "admin", "clear")),
        ("/CLEAR now", Command("clear", "admin", "clear")),
        ("/clear@MyBot", Command("clear", "admin", "clear")),
        ("/compact", Command("compact", "admin", "compact")),
        ("/context", Command("context", "admin", "context")),
        ("/cost", Command("cost", "admin", "cost")),
        ("/files please", Command("files", "admin", "files")),
        ("/init", Command("init", "admin")),  # from an admin, text for the agent
        ("/login", Command("login", "ignored")),
        ("/remote-control on", Command("remote-control", "ignored")),
        ("/weather", Command("weather", "text")),
        ("hello /clear", Command("", "text")),
        ("/", Command("", "text")),
        ("/ clear", Command("", "text")),
        ("", Command("", "text")),
    ],
)
def test_commands_are_classified_by_their_first_word(text: str, expected: Command) -> None:
    assert parse(text) == expected
