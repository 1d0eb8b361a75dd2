"""`add_mcp_server` end to end, with real containers and the fake model: the agent asks for a stdio MCP server, an
admin decides on the card, and on approval the router has the server, the session's container restarts with it
(its CLAWDEN_MCP_SERVERS names it) and the same conversation goes on. Denied, nothing changes."""

from __future__ import annotations

import getpass
import json
from collections.abc import AsyncIterator

import pytest

from clawden import config as config_mod
from clawden import control, sessiondb
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_api
from clawden.mcpservers import MCP_ENV, McpServer
from tests.admin.test_agent_cli import reply_with
from tests.e2e.harness import Stack, Terminal
from tests.e2e.test_credential_approval import button, card_for, click
from tests.e2e.test_tools import run_tool
from tests.eventually import eventually

pytestmark = pytest.mark.docker
OWNER = f"local:{getpass.getuser()}"
SERVER = McpServer(
    command="python3", args=("/workspace/agent/tickets_mcp.py",), env={"TICKETS_TOKEN": "clawden-managed"}
)
ASK = {
    "name": "tickets",
    "command": "python3",
    "args": ["/workspace/agent/tickets_mcp.py"],
    "env": {"TICKETS_TOKEN": "clawden-managed"},
    "reason": "to read the helpdesk tickets",
}


@pytest.fixture
async def term(stack: Stack) -> AsyncIterator[Terminal]:
    async with Terminal(stack, "terminal") as t:
        await stack.wait_until_idle((await t.ask("hello", timeout=90)).session_id)
        yield t


async def group_servers(stack: Stack) -> dict[str, McpServer]:
    group = await control.ask(config_mod.load(stack.home), router_api.GROUPS_GET, router_api.GroupGet(name="main"))
    return dict(group.container.mcp or {})


def main_container(stack: Stack) -> tuple[str, dict[str, str]]:
    """The id and environment of main's one running container."""
    [box] = [c for c in stack.containers() if c.labels.get("dev.clawden.agent-group") == "main"]
    return box.id, dict(e.partition("=")[::2] for e in box.attrs["Config"]["Env"])


async def ask_for_tickets(stack: Stack, term: Terminal) -> ev.OutboundMessage:
    asked = await run_tool(stack, term, "add_mcp_server", ASK)
    assert "approval pending" in asked, asked
    card = await card_for(term)
    assert card.card is not None and card.card.title == "Agent main asks for an MCP server"
    assert "Agent group main would get the MCP server 'tickets'" in card.card.body
    assert "python3 /workspace/agent/tickets_mcp.py\n  TICKETS_TOKEN=clawden-managed" in card.card.body
    assert "to read the helpdesk tickets" in card.card.body
    return card


async def test_a_denied_server_changes_nothing(stack: Stack, term: Terminal) -> None:
    before = main_container(stack)[0]
    card = await ask_for_tickets(stack, term)

    await click(term, card, button(card, approve=False), OWNER)

    told = await reply_with(term, "was denied")
    assert "nothing was changed" in told.text
    assert await group_servers(stack) == {}
    assert main_container(stack)[0] == before


async def test_an_approved_server_restarts_the_container_with_it_in_the_same_conversation(
    stack: Stack, term: Terminal
) -> None:
    session_id = (await term.ask("which session?")).session_id
    await stack.wait_until_idle(session_id)
    folder = stack.home / "sessions" / "main" / session_id
    claude_session = sessiondb.get_state(folder, sessiondb.CONVERSATION_KEY)
    before, env = main_container(stack)
    assert "tickets" not in env.get(MCP_ENV, "")
    card = await ask_for_tickets(stack, term)

    await click(term, card, button(card, approve=True), OWNER)

    told = await reply_with(term, "was approved by")
    assert f"Adding the MCP server 'tickets' was approved by {OWNER} and done" in told.text
    assert await group_servers(stack) == {"tickets": SERVER}
    await eventually(lambda: main_container(stack)[0] != before, timeout=60)
    servers = json.loads(main_container(stack)[1][MCP_ENV])
    assert servers["tickets"]["command"] == "python3"
    assert claude_session and sessiondb.get_state(folder, sessiondb.CONVERSATION_KEY) == claude_session
