"""Slash commands in chat text: which reach the agent, which need an admin, which are never forwarded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from clawden.bus import events as ev

# Commands that act on the Claude Code CLI itself (its account, settings, UI). They mean nothing to
# a chat user and could change the agent's setup, so they never reach the agent.
IGNORED = frozenset(
    {
        "help",
        "login",
        "logout",
        "doctor",
        "config",
        "remote-control",
        "exit",
        "quit",
        "resume",
        "model",
        "permissions",
        "mcp",
        "hooks",
        "agents",
        "add-dir",
        "upgrade",
        "install-github-app",
        "terminal-setup",
        "ide",
        "vim",
        "bug",
        "export",
        "release-notes",
        "memory",
        "status",
        "statusline",
        "privacy-settings",
        "migrate-installer",
    }
)
# Commands that change or reveal the session's conversation: only admins of the agent group.
ADMIN_ONLY = frozenset({"clear", "compact", "context", "cost", "files", "init"})
# Those the agent runner answers itself, without the model: each wakes the session as a command.
# /init (Claude Code writing a CLAUDE.md) goes to the agent as text, from an admin only.
RUNNER_COMMANDS = frozenset({"clear", "compact", "context", "cost", "files"})


@dataclass(frozen=True, slots=True)
class Command:
    word: str  # "" when the text is not a command
    kind: Literal["text", "ignored", "admin"]
    wake_command: ev.WakeCommand = ""


TEXT = Command("", "text")


def parse(text: str) -> Command:
    """Classify a message by its first word: `/clear`, `/clear@MyBot` (Telegram) and `/CLEAR` are one."""
    if not text.startswith("/"):
        return TEXT
    first = text[1:].split(maxsplit=1)[0] if len(text) > 1 and not text[1].isspace() else ""
    word = first.split("@", 1)[0].lower()
    if not word:
        return TEXT
    if word in IGNORED:
        return Command(word, "ignored")
    if word in ADMIN_ONLY:
        return Command(word, "admin", cast(ev.WakeCommand, word) if word in RUNNER_COMMANDS else "")
    return Command(word, "text")
