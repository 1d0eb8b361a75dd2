"""A group's MCP servers with the whole system running (router, runner, vault, real agent containers, the
fake model): `clawden groups mcp add` gives the group a stdio server (tests/fakes/mcp_server.py, copied into
the group's folder, run inside the container); the model calls its tool, whose HTTPS request reaches the
upstream (the fake, mapped in the vault's host map as tickets.fake.test) with the vault's secret while the
container holds only the placeholder; and a server that fails to start is told to the chat once, shows in
`clawden status`, and the agent answers without it."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.models.containers import Container

from clawden import config, control, natsserver, sessiondb
from clawden.bus.ctl import router as ctl
from clawden.mcpservers import McpServer
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.fakes.anthropic import ToolCall
from tests.fakes.mcp_server import RemoteServer

pytestmark = pytest.mark.docker

SITE = "tickets.fake.test"
REMOTE_SITE = "helpdesk.fake.test"
REMOTE_SECRET = "hd-live-7a3c55e1b90d42f6"
SERVER = Path(__file__).resolve().parents[1] / "fakes" / "mcp_server.py"
IN_CONTAINER = "/workspace/agent/mcp_server.py"  # the group's folder, as the container sees it
SECRET = "tk-live-0f5e2b7c9a41d8e3"
NOTICE = "⚠️ This agent runs without the MCP server that failed to start:"


@pytest.fixture(scope="module")
def remote_port() -> int:
    return natsserver.free_port()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str, remote_port: int
) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("home"), sites=(SITE,), hosts={REMOTE_SITE: f"127.0.0.1:{remote_port}"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def remote(stack: Stack, remote_port: int) -> Iterator[RemoteServer]:
    """A remote MCP server at https://helpdesk.fake.test/mcp, as the vault's host map reaches it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(stack.home / "run" / "fake-site.pem")
    server = RemoteServer(context, remote_port)
    yield server
    server.stop()


def clawden(stack: Stack, *args: str, stdin: str | None = None, ok: bool = True) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clawden", *args],
        env=stack.env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 or not ok, done.stderr
    return done.stdout + done.stderr


def container_of(stack: Stack, session_id: str) -> Container:
    [container] = [c for c in stack.containers() if c.labels["dev.clawden.session"] == session_id]
    return container


async def test_the_agent_calls_the_groups_mcp_tool_and_the_upstream_gets_the_vaults_secret(stack: Stack) -> None:
    group = stack.home / "groups" / "main"
    group.mkdir(parents=True, exist_ok=True)
    shutil.copy(SERVER, group / "mcp_server.py")
    run = asyncio.to_thread
    await run(
        clawden,
        stack,
        *("secrets", "add", "tickets", "--type", "generic", "--host", SITE),
        *("--header", "Authorization", "--format", "Bearer {value}", "--agent", "main"),
        stdin=SECRET,
    )
    added = await run(
        clawden,
        stack,
        *("groups", "mcp", "add", "main", "tickets", "--command", "python3", "--arg", IN_CONTAINER),
        *("--env", f"TICKETS_API=https://{SITE}", "--stub", "TICKETS_TOKEN"),
    )
    assert "agent group main has MCP server tickets" in added
    listed = await run(clawden, stack, "groups", "mcp", "list", "main")
    assert "tickets" in listed and "router" in listed and f"python3 {IN_CONTAINER}" in listed

    stack.fake.script(
        ToolCall("ToolSearch", {"query": "select:mcp__tickets__lookup_ticket", "max_results": 1}),
        ToolCall("mcp__tickets__lookup_ticket", {"id": "42"}),
    )
    async with Terminal(stack, "tickets") as term:
        reply = await term.ask("what is ticket 42 about?", timeout=180)
        await stack.wait_until_idle(reply.session_id, timeout=120)

    [upstream] = [r for r in stack.fake.requests if r.headers.get("host") == SITE]
    assert (upstream.method, upstream.path) == ("GET", "/v1/tickets/42")
    assert upstream.headers["authorization"] == f"Bearer {SECRET}"  # put on the wire by the vault
    turns = [r.body for r in stack.fake.messages_requests(with_tools=True)]
    assert any("HTTP 404" in json.dumps(t["messages"][-1]) for t in turns)  # the upstream's answer, to the model
    # Inside the container, the server holds the placeholder and nothing holds the secret.
    container = container_of(stack, reply.session_id)
    environs = container.exec_run(["sh", "-c", "cat /proc/[0-9]*/environ | tr '\\0' '\\n'"]).output
    assert b"TICKETS_TOKEN=clawden-managed" in environs
    assert SECRET.encode() not in environs
    assert SECRET not in json.dumps(container.attrs["Config"]["Env"])
    assert not any(SECRET in str(r.body) for r in stack.fake.messages_requests())


async def test_a_server_that_fails_to_start_is_told_once_shows_in_status_and_the_agent_answers(stack: Stack) -> None:
    run = asyncio.to_thread
    await run(
        clawden,
        stack,
        *("groups", "mcp", "add", "main", "broken", "--command", "python3"),
        *("--arg", IN_CONTAINER, "--arg=--broken"),
    )
    async with Terminal(stack, "broken") as term:
        await term.send("hello")
        first = [await term.reply(timeout=180), await term.reply(timeout=60)]
        notice = next(r for r in first if r.text.startswith(NOTICE))
        assert "- broken: " in notice.text
        assert any("hello" in r.text for r in first if r is not notice)
        folder = stack.home / "sessions" / "main" / notice.session_id

        again = await term.ask("still there?", timeout=120)
        assert "still there?" in again.text
        await stack.wait_until_idle(notice.session_id, timeout=120)

        with sqlite3.connect(folder / sessiondb.OUTBOUND) as conn:
            told = conn.execute("SELECT COUNT(*) FROM messages_out WHERE id LIKE 'mcp:%'").fetchone()[0]
        assert told == 1  # two turns, two Claude Code inits reporting it failed: one notice
        status = await run(clawden, stack, "status", ok=False)
        assert f"MCP server broken of main failed to start in session {notice.session_id}: " in status
        report = json.loads(await run(clawden, stack, "status", "--json", ok=False))
        [row] = [c for c in report["containers"]["running"] if c["session_id"] == notice.session_id]
        assert set(row["mcp_failed"]) == {"broken"}

    removed = await run(clawden, stack, "groups", "mcp", "remove", "main", "broken")
    assert "no longer has MCP server broken" in removed
    refused = await run(clawden, stack, "groups", "mcp", "remove", "main", "broken", ok=False)
    assert "has no MCP server broken" in refused
    assert "broken" not in await run(clawden, stack, "groups", "mcp", "list", "main")


async def test_the_router_refuses_a_server_out_of_bounds_and_keeps_the_groups_servers(stack: Stack) -> None:
    cfg = config.load(stack.home)
    get = ctl.GroupGet(name="main")
    before = (await asyncio.to_thread(control.run, cfg, ctl.GROUPS_GET, get)).container.mcp
    leaky = McpServer(command="python3", env={"HTTPS_PROXY": "http://elsewhere"})

    with pytest.raises(control.ControlError) as refused:
        await asyncio.to_thread(
            control.run,
            cfg,
            ctl.GROUPS_UPDATE,
            ctl.GroupUpdate(name="main", container=ctl.ContainerSettings(mcp={"leaky": leaky})),
        )

    assert "MCP server 'leaky': environment variable HTTPS_PROXY" in str(refused.value)
    assert (await asyncio.to_thread(control.run, cfg, ctl.GROUPS_GET, get)).container.mcp == before
    # The command line says so before it asks.
    said = await asyncio.to_thread(
        clawden, stack, "groups", "mcp", "add", "main", "x", "--url", "http://plain.example", ok=False
    )
    assert "give an https:// address" in said


async def test_a_remote_mcp_server_is_reached_through_the_vault_with_its_secret(
    stack: Stack, remote: RemoteServer
) -> None:
    run = asyncio.to_thread
    await run(
        clawden,
        stack,
        *("secrets", "add", "helpdesk", "--type", "generic", "--host", REMOTE_SITE),
        *("--header", "Authorization", "--format", "Bearer {value}", "--agent", "main"),
        stdin=REMOTE_SECRET,
    )
    await run(clawden, stack, "groups", "mcp", "add", "main", "helpdesk", "--url", f"https://{REMOTE_SITE}/mcp")
    stack.fake.script(
        ToolCall("ToolSearch", {"query": "select:mcp__helpdesk__lookup_ticket", "max_results": 1}),
        ToolCall("mcp__helpdesk__lookup_ticket", {"id": "7"}),
    )

    async with Terminal(stack, "helpdesk") as term:
        reply = await term.ask("what is helpdesk ticket 7 about?", timeout=180)
        await stack.wait_until_idle(reply.session_id, timeout=120)

    posts = [headers for method, path, headers in remote.requests if (method, path) == ("POST", "/mcp")]
    assert posts and all(h["authorization"] == f"Bearer {REMOTE_SECRET}" for h in posts)
    turns = [r.body for r in stack.fake.messages_requests(with_tools=True)]
    assert any("ticket 7 is about a paper jam" in json.dumps(t["messages"][-1]) for t in turns)
    container = container_of(stack, reply.session_id)
    assert REMOTE_SECRET not in json.dumps(container.attrs["Config"]["Env"])
