"""A group's own MCP servers in the agent runner, run as a host process with the real Claude Code against
the fake model: the server (tests/fakes/mcp_server.py, a stdio program) is started with the group's
environment and the agent runner's proxy settings, the model calls its tool, and one that fails to start
is told to the chat once while the agent answers without it. tests/agents/test_mcp_e2e.py runs the same
in a real container, through the vault."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from clawden import sessiondb
from tests.container import test_agent_runner as base
from tests.container.test_agent_runner import AgentProcess, Session
from tests.fakes.anthropic import FakeAnthropic, ToolCall, tool_names

fake, session, start_agent = base.fake, base.session, base.start_agent
SERVER = Path(__file__).resolve().parents[1] / "fakes" / "mcp_server.py"


# Claude Code defers an MCP server's tools behind ToolSearch (only their names are in the prompt), so a model
# searches for the tool, then calls it.
CALL_TICKET_TOOL = (
    ToolCall("ToolSearch", {"query": "select:mcp__tickets__lookup_ticket", "max_results": 1}),
    ToolCall("mcp__tickets__lookup_ticket", {"id": "42"}),
)


def servers(**specs: dict[str, object]) -> str:
    return json.dumps(specs)


def tickets(*extra: str, env: dict[str, str] | None = None) -> dict[str, object]:
    return {"command": sys.executable, "args": [str(SERVER), *extra], "env": env or {}}


def notices(session: Session) -> list[str]:
    return [m.content["text"] for m in session.outbound() if m.id.startswith("mcp:")]


def test_the_model_calls_the_groups_mcp_tool_and_the_server_has_the_groups_env_and_the_proxy(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    env = {"TICKETS_API": "http://tickets.fake.test", "TICKETS_TOKEN": "clawden-managed"}
    start_agent(CLAWDEN_MCP_SERVERS=servers(tickets=tickets(env=env)))
    fake.script(*CALL_TICKET_TOOL)

    session.reply_to(session.send("what is ticket 42 about?"))

    turns = [r.body for r in fake.messages_requests(with_tools=True)]
    assert "mcp__tickets__lookup_ticket" in json.dumps(turns[0]["messages"])  # offered, deferred
    assert "mcp__tickets__lookup_ticket" in tool_names(turns[1])  # loaded once searched for
    # The tool's request went out through the proxy the agent runner set (here the fake stands in for it),
    # with the group's placeholder: the real credential is the vault's to add.
    [looked_up] = [r for r in fake.requests if "tickets.fake.test" in r.target]
    assert looked_up.target == "http://tickets.fake.test/v1/tickets/42"
    assert looked_up.headers["authorization"] == "Bearer clawden-managed"
    after = json.dumps(turns[2]["messages"][-1])
    assert "HTTP 404" in after  # the tool's answer reached the model
    assert notices(session) == []


def test_a_server_that_fails_to_start_is_told_once_and_the_agent_answers_without_it(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent(CLAWDEN_MCP_SERVERS=servers(tickets=tickets("--broken")))

    first = session.reply_to(session.send("hello"))
    second = session.reply_to(session.send("still there?"))

    assert ">hello</message>" in first.content["text"] and ">still there?</message>" in second.content["text"]
    [notice] = notices(session)
    assert notice.startswith("⚠️ This agent runs without the MCP server that failed to start:")
    assert "- tickets: " in notice
    assert "tickets" in json.loads(sessiondb.get_state(session.dir, sessiondb.MCP_FAILED_KEY) or "{}")
    assert all("mcp__tickets__" not in " ".join(tool_names(r.body)) for r in fake.messages_requests())


def test_a_server_named_like_the_runners_own_tools_is_left_out(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent(CLAWDEN_MCP_SERVERS=servers(clawden=tickets()))

    reply = session.reply_to(session.send("hello"))

    assert reply.content["text"].startswith("echo: ")  # send_message is still the runner's own
    assert "MCP server 'clawden' is not usable as sent" in agent.log.read_text()
