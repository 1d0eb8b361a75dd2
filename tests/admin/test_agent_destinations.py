"""The in-container `clawden destinations add --agent OTHER` and the channel check of `wire add` and
`destinations add`, as tables (services/runner/scope.py), and the request each becomes (services/runner/admin.py)."""

from __future__ import annotations

import pytest

from clawden.bus import events as ev
from clawden.bus.ctl import router as router_api
from services.runner.admin import write_request
from services.runner.scope import BadCommand, Command, Refuse, Write, allow, channel_problem, parse

AGENT_PARSED = [
    (
        ["destinations", "add", "main", "--agent", "writer"],
        {
            "agent_group": "main",
            "name": "writer",
            "channel": ev.AGENT_CHANNEL,
            "chat_id": "writer",
            "--agent": "writer",
        },
    ),
    (
        ["destinations", "add", ".", "pen", "--agent=writer", "--max-hops", "2"],
        {
            "agent_group": ".",
            "name": "pen",
            "channel": ev.AGENT_CHANNEL,
            "chat_id": "writer",
            "--agent": "writer",
            "--max-hops": "2",
        },
    ),
]


@pytest.mark.parametrize(("argv", "args"), AGENT_PARSED)
def test_an_agent_destination_parses_as_the_owners_cli_reads_it(argv: list[str], args: dict[str, str]) -> None:
    assert parse(argv) == Command("destinations add", args)


AGENT_BAD = [
    (["destinations", "add", "main", "--agent", "Not A Group"], "is not an agent group's name"),
    (["destinations", "add", "main", "w", "agent", "writer", "--agent", "writer"], "takes AGENT_GROUP [NAME]"),
    (["destinations", "add", "main", "--agent", "writer", "--thread", "7"], "no --thread"),
    (["destinations", "add", "main", "mum", "telegram", "42", "--max-hops", "2"], "--max-hops is for --agent"),
    (["destinations", "add", "main", "--agent", "writer", "--max-hops", "two"], "--max-hops takes a whole number"),
]


@pytest.mark.parametrize(("argv", "error"), AGENT_BAD)
def test_a_malformed_agent_destination_is_refused_saying_why(argv: list[str], error: str) -> None:
    with pytest.raises(BadCommand, match=error.replace("[", r"\[").replace("]", r"\]")):
        parse(argv)


SCOPED = [
    ("group", ["destinations", "add", "main", "--agent", "writer"], Write),
    ("group", ["destinations", "add", ".", "--agent", "writer"], Write),
    ("group", ["destinations", "add", "ops", "--agent", "writer"], Refuse),  # another group's: never
    ("global", ["destinations", "add", "ops", "--agent", "writer"], Write),
    ("disabled", ["destinations", "add", "main", "--agent", "writer"], Refuse),
]


@pytest.mark.parametrize(("cli_scope", "argv", "verdict"), SCOPED)
def test_a_group_agent_may_ask_for_an_agent_destination_of_its_own_group_only(
    cli_scope: str, argv: list[str], verdict: type
) -> None:
    assert isinstance(allow(cli_scope, "main", parse(argv)), verdict)


def test_the_card_shows_the_command_and_the_other_agent_and_the_request_carries_the_hops() -> None:
    write = allow("group", "main", parse(["destinations", "add", ".", "pen", "--agent", "writer", "--max-hops", "2"]))
    assert isinstance(write, Write)
    assert write.command.line() == "clawden destinations add main pen --agent writer --max-hops 2"
    assert "to agent group writer" in write.change and "at most 2 " in write.change
    verb, request = write_request(write.command)
    assert verb is router_api.DESTINATIONS_ADD
    assert request == router_api.DestinationAdd(
        agent_group="main", name="pen", channel=ev.AGENT_CHANNEL, chat_id="writer", max_hops=2
    )
    default = allow("group", "main", parse(["destinations", "add", "main", "--agent", "writer"]))
    assert isinstance(default, Write) and f"at most {ev.DEFAULT_MAX_HOPS} " in default.change
    asked = write_request(default.command)[1]
    assert isinstance(asked, router_api.DestinationAdd) and asked.max_hops == 0  # the router's default


CHANNELS = frozenset({"local", "telegram"})
CHANNEL_CHECKED = [
    (["wire", "add", "telegram", "-100", "main"], ""),
    (["wire", "add", "telegarm", "-100", "main"], "no channel telegarm; the channels are: local, telegram"),
    (["destinations", "add", "main", "mum", "slack", "C1"], "no channel slack"),
    (["destinations", "add", "main", "mum", "local", "terminal"], ""),
    (["destinations", "add", "main", "--agent", "writer"], ""),  # the router's own channel
    (["wire", "remove", "gone", "-100", "main"], ""),  # removing a wiring of a channel since gone is allowed
]


@pytest.mark.parametrize(("argv", "problem"), CHANNEL_CHECKED)
def test_a_wiring_or_destination_must_name_a_channel_a_bridge_serves(argv: list[str], problem: str) -> None:
    found = channel_problem(parse(argv), CHANNELS)
    assert found.startswith(problem) and bool(found) == bool(problem)
