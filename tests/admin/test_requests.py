"""Which control verb each in-container `clawden` command becomes, with which request (services/runner/admin.py's
pure mapping), the scope's filter on what comes back, and the approval request a write becomes."""

from __future__ import annotations

from typing import Any

import pytest

from clawden.bus.ctl import router as r
from clawden.bus.ctl import scheduler as s
from clawden.bus.events import Route
from services.runner.admin import approval_request, only, read_request, write_request
from services.runner.scope import Write, change, parse
from services.runner.scope import own as own_group
from services.runner.sessions import SessionInfo

READS: list[tuple[list[str], Any, object]] = [
    (["groups"], r.GROUPS_LIST, r.ListAll()),
    (["groups", "get", "main"], r.GROUPS_GET, r.GroupGet(name="main")),
    (["tasks", "--group", "main", "--status", "active"], s.TASKS, s.ListRequest(agent_group="main", status="active")),
    (["sessions", "--group", "main", "--limit", "3"], r.SESSIONS_LIST, r.GroupFilter(agent_group="main", limit=3)),
    (["sessions"], r.SESSIONS_LIST, r.GroupFilter()),
    (["destinations", "--group", "main"], r.DESTINATIONS_LIST, r.GroupFilter(agent_group="main")),
    (["members", "--group", "main"], r.MEMBERS_LIST, r.GroupFilter(agent_group="main")),
    (["wire", "--chat", "42", "--group", "main"], r.WIRINGS_LIST, r.WiringList(chat_id="42", agent_group="main")),
    (["dropped", "--limit", "5"], r.DROPPED_LIST, r.DroppedList(limit=5)),
]


@pytest.mark.parametrize(("argv", "verb", "request_"), READS)
def test_each_read_is_one_control_verb(argv: list[str], verb: Any, request_: object) -> None:
    assert read_request(parse(argv)) == (verb, request_)


WRITES: list[tuple[list[str], Any, object]] = [
    (
        ["wire", "add", "local", "room", "main", "--engage", "pattern", "--pattern", "hi", "--priority", "-3"],
        r.WIRINGS_CREATE,
        r.WiringCreate(
            channel="local", chat_id="room", agent_group="main", engage_mode="pattern", engage_pattern="hi", priority=-3
        ),
    ),
    (
        ["wire", "remove", "local", "room", "main"],
        r.WIRINGS_DELETE,
        r.WiringDelete(channel="local", chat_id="room", agent_group="main"),
    ),
    (
        ["members", "add", "main", "local:ann"],
        r.MEMBERS_ADD,
        r.MemberAdd(agent_group="main", user_id="local:ann", added_by="agent"),
    ),
    (
        ["members", "remove", "main", "local:ann"],
        r.MEMBERS_REMOVE,
        r.MemberRemove(agent_group="main", user_id="local:ann"),
    ),
    (
        ["destinations", "add", "main", "mum", "telegram", "42", "--thread", "7", "--display-name", "Mum"],
        r.DESTINATIONS_ADD,
        r.DestinationAdd(
            agent_group="main", name="mum", channel="telegram", chat_id="42", thread_id="7", display_name="Mum"
        ),
    ),
    (
        ["destinations", "remove", "main", "mum"],
        r.DESTINATIONS_REMOVE,
        r.DestinationRemove(agent_group="main", name="mum"),
    ),
    (
        ["groups", "update", "main", "--model", "claude-x", "--assistant-name", "Pip"],
        r.GROUPS_UPDATE,
        r.GroupUpdate(name="main", model="claude-x", assistant_name="Pip"),
    ),
    (
        ["groups", "update", "main", "--effort", "low", "--idle-timeout", "60", "--max-messages-per-prompt", "3"],
        r.GROUPS_UPDATE,
        r.GroupUpdate(
            name="main",
            container=r.ContainerSettings(effort="low", idle_timeout=60.0, max_messages_per_prompt=3),
        ),
    ),
]


@pytest.mark.parametrize(("argv", "verb", "request_"), WRITES)
def test_each_write_is_one_control_verb(argv: list[str], verb: Any, request_: object) -> None:
    assert write_request(parse(argv)) == (verb, request_)


def test_a_read_is_not_a_write_nor_a_write_a_read() -> None:
    with pytest.raises(ValueError, match="not a write"):
        write_request(parse(["groups", "get", "main"]))
    with pytest.raises(ValueError, match="not a read"):
        read_request(parse(["members", "add", "main", "local:ann"]))


def test_the_scope_filter_keeps_only_the_groups_own_rows() -> None:
    rows = [
        r.Member(user_id="a", agent_group="main", added_by="cli", added_at=0),
        r.Member(user_id="b", agent_group="ops", added_by="cli", added_at=0),
    ]
    group = r.Group(
        name="ops",
        folder="ops",
        assistant_name="",
        provider="claude",
        model="",
        container=r.ContainerSettings(),
        created_at=0,
    )
    assert only(rows, "main") == rows[:1]
    assert only(rows, "") == rows
    assert only(group, "main") is None
    assert only(group, "ops") is group


def test_a_card_for_another_group_says_who_asked_and_that_no_session_of_the_asker_restarts() -> None:
    asker = SessionInfo("s-1", "main", Route(channel="local", chat_id="kitchen"))
    mcp = parse(["groups", "mcp", "add", "ops", "notes", "--command", "notes-mcp"])
    own = parse(["groups", "mcp", "add", ".", "notes", "--command", "notes-mcp"])

    theirs = approval_request(asker, "cli-1", Write(mcp, change(mcp)))
    mine = approval_request(asker, "cli-2", Write(own_group(own, "main"), change(own_group(own, "main"))))

    assert (theirs.agent_group, theirs.card.title) == ("ops", "Agent main asks for an MCP server for agent group ops")
    assert "the asking session, of agent group main, does not restart" in theirs.card.body
    assert (mine.agent_group, mine.card.title) == ("main", "Agent main asks for an MCP server")
    assert "does not restart" not in mine.card.body
