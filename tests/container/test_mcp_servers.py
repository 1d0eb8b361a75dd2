"""The MCP-server contract as tables: what a group may give its agents (clawden/mcpservers.py), how the
runner merges config.toml's and the router's (group_run), and what the agent runner hands Claude Code and
tells the chat (container/clawden_agent/mcp.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from clawden import control, mcpservers
from clawden.bus import events as ev
from clawden.cli.commands import mcp as mcp_cli
from clawden.config import Config, GroupConfig
from clawden.mcpservers import McpServer
from services.runner.containers import group_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "container"))  # the image's own package
from clawden_agent import mcp

STDIO = McpServer(command="npx", args=("-y", "tickets-mcp"), env={"TICKETS_TOKEN": "clawden-managed"})
REMOTE = McpServer(transport="http", url="https://mcp.tickets.example/mcp")


@pytest.mark.parametrize(
    ("name", "server", "why"),
    [
        ("tickets", STDIO, ""),
        ("remote_1", REMOTE, ""),
        ("sse", McpServer(transport="sse", url="https://mcp.tickets.example/sse"), ""),
        ("-x", STDIO, "letters, digits, '-' and '_'"),
        ("a" * 65, STDIO, "letters, digits"),
        ("clawden", STDIO, "the agent runner's own tools"),
        ("t", McpServer(command=" "), "give the command that starts it"),
        ("t", McpServer(command="x", url="https://a.example"), "takes --command, not --url"),
        ("t", McpServer(command="x", args=("a",) * 65), "at most 64 arguments"),
        ("t", McpServer(command="x", env={f"K{n}": "v" for n in range(65)}), "at most 64 environment"),
        ("t", McpServer(command="x", env={"1BAD": "v"}), "not starting with a digit"),
        ("t", McpServer(command="x", env={"https_proxy": "http://elsewhere"}), "goes through the vault"),
        ("t", McpServer(command="x", env={"NODE_OPTIONS": "--require /tmp/x.js"}), "goes through the vault"),
        ("t", McpServer(command="x", env={"TOKEN": "a\x00b"}), "environment variable TOKEN: at most 4096"),
        ("t", McpServer(command="x", args=("y" * 4097,)), "at most 4096 characters"),
        ("t", McpServer(command="x" * 1025), "command: at most 1024"),
        ("t", McpServer(transport="http", url="http://plain.example"), "give an https:// address"),
        ("t", McpServer(transport="http", url="https://"), "give an https:// address"),
        ("t", McpServer(transport="http", url="https://" + "a" * 2048), "at most 2048"),
        ("t", McpServer(transport="sse", url="https://a.example/x y"), "no spaces"),
        ("t", McpServer(transport="http", url="https://a.example", env={"K": "v"}), "takes --url only"),
    ],
)
def test_a_servers_bounds(name: str, server: McpServer, why: str) -> None:
    got = mcpservers.problem(name, server)
    assert (why in got and got.startswith("MCP server ")) if why else got == ""


def test_more_than_sixteen_servers_are_refused_by_count() -> None:
    many = {f"s{n:02d}": STDIO for n in range(17)}
    assert mcpservers.problems(many) == {"": "at most 16 MCP servers per agent group (17 given)"}
    assert "mcp" in ev.GroupSettings(mcp=many).problems()
    assert ev.GroupSettings(mcp={"tickets": STDIO}).problems() == {}


def test_usable_merges_sources_later_wins_and_leaves_out_the_bad_ones_alone() -> None:
    local = {"tickets": McpServer(command="old"), "files": STDIO}
    sent = {"tickets": STDIO, "bad name!": STDIO}
    kept, refused = mcpservers.usable(local, sent)
    assert kept == {"files": STDIO, "tickets": STDIO}
    assert len(refused) == 1 and refused[0].startswith("MCP server 'bad name!'")
    kept, refused = mcpservers.usable({f"s{n:02d}": STDIO for n in range(18)})
    assert list(kept) == [f"s{n:02d}" for n in range(16)] and refused == [
        "at most 16 MCP servers per agent group: left out s16, s17"
    ]


def test_encode_gives_what_the_agent_runner_reads() -> None:
    assert mcpservers.encode({}) == ""
    text = mcpservers.encode({"tickets": STDIO, "remote": REMOTE})
    got = mcp.servers(text, {"HTTPS_PROXY": "http://127.0.0.1:3128", "SSL_CERT_FILE": "/run/b.pem", "PATH": "/bin"})
    assert got == {
        "tickets": {
            "type": "stdio",
            "command": "npx",
            "args": ["-y", "tickets-mcp"],
            "env": {
                "TICKETS_TOKEN": "clawden-managed",
                "HTTPS_PROXY": "http://127.0.0.1:3128",
                "SSL_CERT_FILE": "/run/b.pem",
            },
        },
        "remote": {"type": "http", "url": "https://mcp.tickets.example/mcp"},
    }


def test_group_run_takes_config_tomls_servers_and_the_routers_over_them() -> None:
    cfg = Config(groups={"main": GroupConfig(mcp={"files": STDIO, "tickets": McpServer(command="old")})})
    run = group_run("main", ev.GroupSettings(mcp={"tickets": STDIO, "clawden": STDIO}), cfg)
    assert run.mcp == {"files": STDIO, "tickets": STDIO}
    assert [r for r in run.refused if "clawden" in r] == [
        "MCP server 'clawden': that name is the agent runner's own tools"
    ]
    assert group_run("other", None, cfg).mcp == {}


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", []),
        ("not json", []),
        ("[1]", []),
        (json.dumps({"a": {"command": "x", "args": "not a list"}}), []),
        (json.dumps({"a": {"command": "x", "env": {"K": 1}}}), []),
        (json.dumps({"a": {"transport": "http", "url": "http://plain"}}), []),
        (json.dumps({"a": {"transport": "ws", "url": "https://x"}}), []),
        (json.dumps({"clawden": {"command": "x"}}), []),
        (json.dumps({"a": 1, "b": {"command": "x"}}), ["b"]),
        (json.dumps({"a": {"transport": "sse", "url": "https://x"}}), ["a"]),
    ],
)
def test_the_agent_runner_takes_only_well_formed_servers(text: str, names: list[str]) -> None:
    assert list(mcp.servers(text, {})) == names


def test_routing_variables_win_over_the_groups() -> None:
    text = json.dumps({"a": {"command": "x", "env": {"HTTPS_PROXY": "http://elsewhere", "K": "v"}}})
    got = mcp.servers(text, {"HTTPS_PROXY": "http://127.0.0.1:3128"})["a"]
    assert got.get("env") == {"HTTPS_PROXY": "http://127.0.0.1:3128", "K": "v"}


@pytest.mark.parametrize(
    ("statuses", "names", "failed"),
    [
        (None, {"a"}, {}),
        ([{"name": "a", "status": "connected"}], {"a"}, {}),
        ([{"name": "a", "status": "pending"}], {"a"}, {}),
        ([{"name": "a", "status": "failed"}], {"a"}, {"a": "failed"}),
        ([{"name": "a", "status": "failed", "error": "Connection\n closed"}], {"a"}, {"a": "Connection closed"}),
        ([{"name": "a", "status": "needs-auth"}], {"a"}, {"a": "needs-auth"}),
        ([{"name": "clawden", "status": "failed"}, "junk"], {"a"}, {}),
    ],
)
def test_failures_are_the_groups_servers_claude_code_could_not_start(
    statuses: object, names: set[str], failed: dict[str, str]
) -> None:
    assert mcp.failures(statuses, names) == failed


@pytest.mark.parametrize(
    ("failed", "told", "new"),
    [
        ({"a": "x"}, {}, {"a": "x"}),
        ({"a": "x"}, {"a": "x"}, {}),
        ({"a": "y"}, {"a": "x"}, {"a": "y"}),
        ({}, {"a": "x"}, {}),
    ],
)
def test_each_failure_is_news_once(failed: dict[str, str], told: dict[str, str], new: dict[str, str]) -> None:
    assert mcp.news(failed, told) == new


def test_the_notice_names_each_server_and_why() -> None:
    assert mcp.notice({"b": "y", "a": "x"}) == (
        "⚠️ This agent runs without the MCP servers that failed to start:\n- a: x\n- b: y"
    )
    assert mcp.notice({"a": "x"}).startswith("⚠️ This agent runs without the MCP server that")


def _add_args(*argv: str) -> McpServer:
    parser = argparse.ArgumentParser()
    groups = parser.add_subparsers()
    mcp_cli.register(groups)
    return mcp_cli.server_from(parser.parse_args(["mcp", "add", "g", "n", *argv]))


def test_the_command_line_describes_a_local_or_a_remote_server() -> None:
    local = _add_args("--command", "npx", "--arg=-y", "--arg", "pkg", "--env", "A=b=c", "--stub", "TICKETS_TOKEN")
    assert local == McpServer(command="npx", args=("-y", "pkg"), env={"A": "b=c", "TICKETS_TOKEN": "clawden-managed"})
    assert _add_args("--url", "https://a.example/sse", "--transport", "sse") == McpServer(
        transport="sse", url="https://a.example/sse"
    )
    with pytest.raises(control.ControlError, match="give --url for a remote server, or --command"):
        _add_args("--url", "https://a.example", "--command", "x")
    with pytest.raises(control.ControlError, match="a sse server needs --url"):
        _add_args("--transport", "sse", "--command", "x")
    with pytest.raises(argparse.ArgumentTypeError, match="give NAME=VALUE"):
        mcp_cli.parse_env("NOVALUE")


def test_a_credential_in_the_environment_is_warned_about() -> None:
    server = McpServer(command="x", env={"GITHUB_TOKEN": "ghp_real", "API_KEY": "clawden-managed", "REGION": "eu"})
    [warning] = mcp_cli.credential_warnings(server)
    assert warning.startswith("GITHUB_TOKEN looks like a credential") and "--stub GITHUB_TOKEN" in warning
