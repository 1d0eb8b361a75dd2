"""The in-container `clawden`'s decisions as tables: what a command line parses to, and what each cli_scope
lets the agent of a group do with it (services/runner/scope.py)."""

from __future__ import annotations

import pytest

from services.runner.scope import BadCommand, Command, Read, Refuse, Write, allow, change, commands_for, parse

PARSED = [
    (["groups"], "groups list", {}),
    (["groups", "list", "--json"], "groups list", {}),
    (["tasks", "list", "--group", "main"], "tasks list", {"--group": "main"}),
    (["tasks", "--status=paused"], "tasks list", {"--status": "paused"}),
    (["sessions", "--limit", "5"], "sessions", {"--limit": "5"}),
    (["destinations"], "destinations list", {}),
    (["members", "list", "--group=ops"], "members list", {"--group": "ops"}),
    (["wire", "list", "--channel", "telegram", "--chat", "42"], "wire list", {"--channel": "telegram", "--chat": "42"}),
    (["dropped", "--channel", "slack"], "dropped", {"--channel": "slack"}),
    (["groups", "get", "main"], "groups get", {"agent_group": "main"}),
    (
        ["groups", "update", "main", "--effort", "high", "--turn-budget", "600", "--max-turns=30"],
        "groups update",
        {"agent_group": "main", "--effort": "high", "--turn-budget": "600", "--max-turns": "30"},
    ),
    (["members", "add", "main", "telegram:7"], "members add", {"agent_group": "main", "user": "telegram:7"}),
    (
        ["destinations", "add", "main", "mum", "telegram", "42", "--display-name", "Mum"],
        "destinations add",
        {"agent_group": "main", "name": "mum", "channel": "telegram", "chat_id": "42", "--display-name": "Mum"},
    ),
    (
        ["wire", "add", "telegram", "-100", "main", "--engage", "mention", "--priority", "5"],
        "wire add",
        {"channel": "telegram", "chat_id": "-100", "agent_group": "main", "--engage": "mention", "--priority": "5"},
    ),
]


@pytest.mark.parametrize(("argv", "name", "args"), PARSED)
def test_a_command_line_parses_as_the_owners_cli_spells_it(argv: list[str], name: str, args: dict[str, str]) -> None:
    assert parse(argv) == Command(name, args)


BAD = [
    ([], "no command"),
    (["secrets", "list"], "unknown command 'secrets list'"),
    (["vault", "key"], "unknown command"),
    (["groups", "delete", "main"], "unknown command 'groups delete'"),
    (["tasks", "list", "--group"], "--group needs a value"),
    (["tasks", "list", "--owner", "me"], "unknown option --owner"),
    (["tasks", "list", "--status", "gone"], "--status must be one of"),
    (["sessions", "--limit", "many"], "--limit takes a whole number"),
    (["sessions", "--limit", "9" * 30], "--limit takes a whole number"),
    (["groups", "update", "main"], "`clawden groups update` needs a setting: --model"),
    (["groups", "update", "main", "--image", "evil:latest"], "unknown option --image"),
    (["groups", "update", "main", "--folder", "ops"], "unknown option --folder"),
    (["groups", "update", "main", "--cli-scope", "global"], "unknown option --cli-scope"),
    (["groups", "update", "main", "--idle-timeout", "soon"], "--idle-timeout takes a number of seconds"),
    (["groups", "update", "main", "--idle-timeout", "1" * 40], "--idle-timeout takes a number of seconds"),
    (["groups", "update", "main", "--idle-timeout", "1"], "idle timeout 1.0: give seconds from 5"),
    (["groups", "update", "main", "--max-turns", "0", "--model", "x y"], "model 'x y': give a model name"),
    (["wire", "add", "telegram", "42"], "takes CHANNEL CHAT_ID AGENT_GROUP"),
    (["groups", "list", "extra"], "takes no arguments"),
    (["tasks", "list", "--group", "a\x00b"], "too many or too long"),
    (["groups"] + ["--json"] * 40, "too many or too long"),
    (["wire", "add", "x" * 2000, "1", "main"], "too many or too long"),
]


@pytest.mark.parametrize(("argv", "error"), BAD)
def test_anything_else_is_refused_with_what_was_wrong(argv: list[str], error: str) -> None:
    with pytest.raises(BadCommand, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse(argv)


def cmd(*argv: str) -> Command:
    return parse(list(argv))


WIRE = cmd("wire", "add", "telegram", "42", "main")
VERDICTS = [
    # disabled: nothing at all
    ("disabled", cmd("groups"), Refuse("the clawden command is disabled for agent group main")),
    ("disabled", WIRE, Refuse("the clawden command is disabled for agent group main")),
    ("nonsense", cmd("groups"), Refuse("cli_scope 'nonsense' is not one of disabled, group, global")),
    # group: its own group only, filled in where the command did not say
    ("group", cmd("tasks"), Read(cmd("tasks", "--group", "main"), "main")),
    ("group", cmd("tasks", "--group", "main"), Read(cmd("tasks", "--group", "main"), "main")),
    (
        "group",
        cmd("tasks", "--group", "ops"),
        Refuse("agent group main may only see and change its own group, not ops"),
    ),
    ("group", cmd("groups"), Read(cmd("groups"), "main")),
    ("group", cmd("sessions", "--limit", "3"), Read(cmd("sessions", "--limit", "3", "--group", "main"), "main")),
    ("group", cmd("wire", "--chat", "42"), Read(cmd("wire", "--chat", "42", "--group", "main"), "main")),
    ("group", cmd("members"), Read(cmd("members", "--group", "main"), "main")),
    ("group", cmd("destinations"), Read(cmd("destinations", "--group", "main"), "main")),
    ("group", cmd("dropped"), Refuse("`clawden dropped` covers every group; agent group main sees only its own")),
    (
        "group",
        WIRE,
        Write(WIRE, "Agent group main would answer chat 42 on telegram (engaged as the owner's CLI does by default)."),
    ),
    (
        "group",
        cmd("wire", "add", "telegram", "42", "ops"),
        Refuse("agent group main may only see and change its own group, not ops"),
    ),
    # global: every group, drops too; writes still wait for an admin
    ("group", cmd("groups", "get", "main"), Read(cmd("groups", "get", "main"), "main")),
    (
        "group",
        cmd("groups", "get", "ops"),
        Refuse("agent group main may only see and change its own group, not ops"),
    ),
    (
        "group",
        cmd("wire", "remove", "telegram", "42", "main"),
        Write(
            cmd("wire", "remove", "telegram", "42", "main"),
            "Agent group main would stop answering chat 42 on telegram.",
        ),
    ),
    (
        "group",
        cmd("members", "add", "main", "telegram:7"),
        Write(cmd("members", "add", "main", "telegram:7"), "telegram:7 would become a member of agent group main."),
    ),
    (
        "group",
        cmd("members", "remove", "main", "telegram:7"),
        Write(
            cmd("members", "remove", "main", "telegram:7"),
            "telegram:7 would no longer be a member of agent group main.",
        ),
    ),
    (
        "group",
        cmd("members", "add", "ops", "telegram:7"),
        Refuse("agent group main may only see and change its own group, not ops"),
    ),
    (
        "group",
        cmd("destinations", "add", "main", "mum", "telegram", "42"),
        Write(
            cmd("destinations", "add", "main", "mum", "telegram", "42"),
            "Agent group main could send messages, as 'mum', to chat 42 on telegram.",
        ),
    ),
    (
        "group",
        cmd("destinations", "add", "main", "mum", "telegram", "42", "--thread", "9"),
        Write(
            cmd("destinations", "add", "main", "mum", "telegram", "42", "--thread", "9"),
            "Agent group main could send messages, as 'mum', to chat 42 on telegram (thread 9).",
        ),
    ),
    (
        "group",
        cmd("destinations", "remove", "main", "mum"),
        Write(cmd("destinations", "remove", "main", "mum"), "Agent group main could no longer send to 'mum'."),
    ),
    (
        "group",
        cmd("groups", "update", "main", "--effort", "high"),
        Write(
            cmd("groups", "update", "main", "--effort", "high"),
            "Agent group main's settings would change: effort high (at its next container start).",
        ),
    ),
    ("global", cmd("groups"), Read(cmd("groups"), "")),
    ("global", cmd("tasks", "--group", "ops"), Read(cmd("tasks", "--group", "ops"), "")),
    ("global", cmd("dropped"), Read(cmd("dropped"), "")),
    (
        "global",
        cmd("wire", "add", "slack", "C1", "ops", "--engage", "mention"),
        Write(
            cmd("wire", "add", "slack", "C1", "ops", "--engage", "mention"),
            "Agent group ops would answer chat C1 on slack (engage mention).",
        ),
    ),
]


@pytest.mark.parametrize(("scope", "command", "verdict"), VERDICTS)
def test_what_each_scope_lets_the_group_main_do(scope: str, command: Command, verdict: object) -> None:
    assert allow(scope, "main", command) == verdict


def test_the_command_line_on_the_approvers_card_is_the_one_that_runs() -> None:
    assert cmd("wire", "add", "telegram", "-100 5", "main", "--pattern", "it's").line() == (
        "clawden wire add telegram '-100 5' main --pattern 'it'\"'\"'s'"
    )


def test_a_read_changes_nothing_to_describe() -> None:
    with pytest.raises(ValueError, match="changes nothing"):
        change(cmd("groups"))


HELP = [
    ("disabled", 0, False),
    ("bogus", 0, False),
    ("group", 16, False),
    ("global", 17, True),
]


@pytest.mark.parametrize(("scope", "count", "drops"), HELP)
def test_help_lists_what_the_scope_allows(scope: str, count: int, drops: bool) -> None:
    lines = commands_for(scope)
    assert len(lines) == count
    assert any("dropped" in line for line in lines) == drops
    assert all("approval" in line for line in lines if "wire add" in line)
