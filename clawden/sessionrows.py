"""What an outbound session row says, typed: one frozen msgspec Struct per kind, a tagged union keyed
by the row's `kind` column, decoded once where the host reads the row (`services/runner/outbound.py`).

The agent runner writes these rows as JSON (`clawden/sessiondb.py`, stdlib only, is what the image
carries); the shapes here are exactly what its tools write, so a row either decodes or is refused with
the JSON path of what was wrong.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class _Row(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    pass


class Chat(_Row, frozen=True, tag="chat"):
    text: str = ""
    # Who speaks, as the outbound event's `kind`: the agent ("reply"), or the agent runner itself, about a message
    # still being worked on ("notice": the model's API keeps failing, Claude Code retries) or one that will not be
    # answered ("error": the turn failed). `clawden chat --once` waits past a notice and exits 1 on an error.
    says: Literal["reply", "notice", "error"] = "reply"


class File(_Row, frozen=True, tag="file"):
    box: str = ""  # the row's own folder under the session's outbox
    files: tuple[str, ...] = ()
    text: str = ""


class Button(msgspec.Struct, frozen=True, kw_only=True):
    id: str = ""
    label: str = ""


class Card(_Row, frozen=True, tag="card"):
    title: str = ""
    body: str = ""
    buttons: tuple[Button, ...] = ()


class Edit(_Row, frozen=True, tag="edit"):
    target_seq: int = 0
    text: str = ""


class Reaction(_Row, frozen=True, tag="reaction"):
    target_seq: int = 0
    emoji: str = ""


class Question(_Row, frozen=True, tag="question"):
    request_id: str = ""
    question: str = ""
    options: tuple[str, ...] = ()
    timeout: float = 300.0


class TaskRequest(_Row, frozen=True, tag="task"):
    request_id: str = ""
    op: str = ""  # checked by the runner against the scheduler's operations
    task_id: str | None = None
    prompt: str | None = None
    schedule: str | None = None
    timezone: str | None = None
    status: str = ""
    script: str | None = None
    # op `create_agent`: a new agent group the agent asks an admin for (services/runner/newagent.py).
    name: str = ""
    instructions: str = ""  # its CLAUDE.md
    wire_to: str = ""  # `<channel>:<chat id>` it is to answer, or ""


Outbound = Chat | File | Card | Edit | Reaction | Question | TaskRequest


def outbound(kind: str, content: dict[str, Any]) -> Outbound:
    """The row's content as its kind's Struct; msgspec.ValidationError (with the JSON path) if it is not one."""
    row: Outbound = msgspec.convert({**content, "kind": kind}, Outbound)
    return row
