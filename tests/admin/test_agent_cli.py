"""`clawden` inside a real agent container, driven by the fake model's Bash calls (and, for the hostile agent, by
raw writes to the session's admin socket from inside the container): the host checks every call against the
group's cli_scope, answers reads at once, holds writes for an admin, and audits each call."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from clawden import config as config_mod
from clawden import control
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_api
from clawden.bus.ctl import scheduler as scheduler_api
from tests.e2e.harness import Stack, Terminal, service_pid
from tests.e2e.test_credential_approval import button, card_for, click
from tests.e2e.test_tools import run_tool
from tests.eventually import eventually

pytestmark = pytest.mark.docker
OWNER = f"local:{getpass.getuser()}"  # the login that ran the router first owns the install


class Audit:
    """The runner's `clawden` audit events, as anyone reading `clawden.event.runner.cli` sees them."""

    def __init__(self) -> None:
        self.events: list[ev.AuditEvent] = []

    async def on_msg(self, msg: Msg) -> None:
        event = ev.decode(msg.data)
        assert isinstance(event, ev.AuditEvent)
        self.events.append(event)

    def outcomes(self, **fields: str) -> list[str]:
        return [e.fields["outcome"] for e in self.events if all(e.fields.get(k) == v for k, v in fields.items())]


@pytest.fixture
async def audit(stack: Stack) -> AsyncIterator[Audit]:
    a = Audit()
    nc = await stack.connect()
    await nc.subscribe("clawden.event.runner.cli", cb=a.on_msg)
    await nc.flush()
    yield a
    await nc.close()


@pytest.fixture(scope="module")
def other_group(stack: Stack) -> str:
    """A second agent group with a task of its own, and a task of main's."""
    cfg = config_mod.load(stack.home)
    control.run(cfg, router_api.GROUPS_CREATE, router_api.GroupCreate(name="ops"))
    for group, prompt in (("ops", "rotate the ops pager"), ("main", "water the plants")):
        control.run(
            cfg,
            scheduler_api.ADD,
            scheduler_api.AddRequest(
                agent_group=group,
                session_id=f"s-{group}",
                route=ev.Route(channel="local", chat_id=f"{group}-chat"),
                prompt=prompt,
                schedule="0 8 * * 1",
            ),
        )
    return "ops"


@pytest.fixture
async def term(stack: Stack, other_group: str) -> AsyncIterator[Terminal]:
    # "terminal" is also the owner's direct chat, where approval cards go.
    async with Terminal(stack, "terminal") as t:
        await stack.wait_until_idle((await t.ask("hello", timeout=90)).session_id)
        yield t


async def set_scope(stack: Stack, scope: router_api.CliScope) -> None:
    cfg = config_mod.load(stack.home)
    update = router_api.GroupUpdate(name="main", container=router_api.ContainerSettings(cli_scope=scope))
    await control.ask(cfg, router_api.GROUPS_UPDATE, update)


async def reply_with(term: Terminal, text: str, timeout: float = 60) -> ev.OutboundMessage:
    """The first reply in the chat that says `text` (the agent's own replies and cards come in between)."""
    while text not in (reply := await term.reply(timeout=timeout)).text:
        pass
    return reply


def in_container(stack: Stack, script: str, *argv: str) -> list[dict[str, object]]:
    """Run python in main's running container, as its agent; one JSON answer per printed line."""
    [box] = [c for c in stack.containers() if c.labels.get("dev.clawden.agent-group") == "main"]
    result = box.exec_run(["python", "-c", script, *argv])
    return [json.loads(line) for line in result.output.decode().splitlines() if line.startswith("{")]


async def test_a_group_agent_lists_its_own_tasks_and_is_refused_another_groups(
    stack: Stack, term: Terminal, audit: Audit
) -> None:
    own = await run_tool(stack, term, "Bash", {"command": "clawden tasks list", "description": "my tasks"})
    other = await run_tool(stack, term, "Bash", {"command": "clawden tasks list --group ops", "description": "theirs"})

    assert "water the plants" in own and "rotate the ops pager" not in own
    assert "refused: agent group main may only see and change its own group, not ops" in other
    assert "rotate the ops pager" not in other
    await eventually(lambda: audit.outcomes(agent_group="main") == ["read", "refused"])
    assert {e.fields["session_id"] for e in audit.events} == {(await term.reply()).session_id}


async def test_wire_add_makes_a_card_and_the_wiring_exists_only_after_an_admin_approves(
    stack: Stack, term: Terminal, audit: Audit
) -> None:
    cfg = config_mod.load(stack.home)
    wired = router_api.WiringList(channel="local", chat_id="room-42")
    asked = await run_tool(
        stack, term, "Bash", {"command": "clawden wire add local room-42 main --engage mention", "description": "wire"}
    )
    assert "approval pending" in asked
    card = await card_for(term)
    assert card.card is not None
    assert "clawden wire add local room-42 main --engage mention" in card.card.body
    assert "Agent group main would answer chat room-42 on local (engage mention)." in card.card.body
    assert await control.ask(cfg, router_api.WIRINGS_LIST, wired) == []

    await click(term, card, button(card, approve=True), "local:stranger")  # not an approver: nothing changes
    await reply_with(term, "Nothing was changed")
    assert await control.ask(cfg, router_api.WIRINGS_LIST, wired) == []
    await click(term, card, button(card, approve=True), OWNER)

    # The agent is told in its session; the fake model's default turn echoes what it was told to the chat.
    told = await reply_with(term, "was approved by")
    assert f"`clawden wire add local room-42 main --engage mention` was approved by {OWNER} and done" in told.text
    [wiring] = await control.ask(cfg, router_api.WIRINGS_LIST, wired)
    assert (wiring.agent_group, wiring.engage_mode) == ("main", "mention")
    await eventually(lambda: audit.outcomes(agent_group="main") == ["asked", "done"])


async def test_a_global_agent_lists_every_group(stack: Stack, term: Terminal, audit: Audit) -> None:
    await set_scope(stack, "global")
    try:
        listed = await run_tool(stack, term, "Bash", {"command": "clawden groups list", "description": "groups"})
        tasks = await run_tool(stack, term, "Bash", {"command": "clawden tasks --group ops", "description": "ops"})
    finally:
        await set_scope(stack, "group")
    assert '"name": "main"' in listed and '"name": "ops"' in listed
    assert "rotate the ops pager" in tasks
    await eventually(lambda: audit.outcomes(agent_group="main") == ["read", "read"])


RUN_CLI = """
import json, subprocess, sys
r = subprocess.run(["clawden", *sys.argv[1:]], capture_output=True, text=True)
print(json.dumps({"code": r.returncode, "out": r.stdout, "err": r.stderr}))
"""


def run_cli(stack: Stack, *argv: str) -> dict[str, object]:
    """`clawden <argv>` run in main's container as its agent would: exit code, stdout and stderr."""
    [answer] = in_container(stack, RUN_CLI, *argv)
    return answer


async def test_a_disabled_scope_refuses_everything_and_counts_at_once(stack: Stack, term: Terminal) -> None:
    await set_scope(stack, "disabled")
    try:
        disabled = await asyncio.to_thread(run_cli, stack, "groups")
    finally:
        await set_scope(stack, "group")
    allowed = await asyncio.to_thread(run_cli, stack, "groups")
    help_ = await asyncio.to_thread(run_cli, stack)

    assert disabled == {
        "code": 1,
        "out": "",
        "err": "clawden: refused: the clawden command is disabled for agent group main\n",
    }
    assert allowed["code"] == 0 and '"name": "main"' in str(allowed["out"]) and '"ops"' not in str(allowed["out"])
    assert "clawden wire add CHANNEL CHAT_ID AGENT_GROUP (needs an admin's approval)" in str(help_["out"])
    assert "dropped" not in str(help_["out"])  # not for a `group` agent


HOSTILE = r"""
import json, socket
forged = [
    {"argv": ["tasks", "list"], "agent_group": "ops"},
    {"argv": ["tasks", "list"], "caller": "local:owner"},
    {"argv": ["groups", "list"], "cli_scope": "global"},
    {"argv": ["tasks", "list"], "session_id": "s-ops"},
    {"argv": ["tasks", "list", "--group", "ops"]},
    {"argv": ["sessions", "--group=ops"]},
    {"argv": ["dropped"]},
    {"argv": ["wire", "add", "local", "room-7", "ops"]},
    {"argv": ["secrets", "list"]},
    {"argv": "tasks list"},
    "tasks list",
    "x" * 70000,
]
s = socket.socket(socket.AF_UNIX)
s.connect("/run/clawden/admin/admin.sock")
f = s.makefile("rwb")
for request in forged:
    f.write((request if isinstance(request, str) else json.dumps(request)).encode() + b"\n")
    f.flush()
    print(f.readline().decode().strip())
"""


async def test_a_hostile_agent_forging_caller_scope_or_group_is_refused_and_audited(
    stack: Stack, term: Terminal, audit: Audit
) -> None:
    answers = await asyncio.to_thread(in_container, stack, HOSTILE)

    assert len(answers) == 12
    assert all(a["ok"] is False and str(a["error"]).startswith("refused: ") for a in answers), answers
    assert "unknown field" in str(answers[0]["error"]) and "agent_group" in str(answers[0]["error"])
    assert "longer than" in str(answers[-1]["error"])
    assert not any("rotate the ops pager" in json.dumps(a) for a in answers)
    session = (await term.ask("still there?")).session_id
    await eventually(lambda: len(audit.events) == 12)
    assert audit.outcomes() == ["refused"] * 12
    assert all(e.fields["session_id"] == session and e.fields["agent_group"] == "main" for e in audit.events)
    cfg = config_mod.load(stack.home)
    assert await control.ask(cfg, router_api.WIRINGS_LIST, router_api.WiringList(chat_id="room-7")) == []
    [replace] = await asyncio.to_thread(in_container, stack, REPLACE_SOCKET)
    assert replace == {"replaced": False, "why": "Read-only file system"}  # nor can it put its own in its place


REPLACE_SOCKET = """
import json, os
try:
    os.unlink("/run/clawden/admin/admin.sock")
    print(json.dumps({"replaced": True}))
except OSError as e:
    print(json.dumps({"replaced": False, "why": e.strerror}))
"""


async def test_a_denied_write_changes_nothing_and_the_agent_is_told(stack: Stack, term: Terminal, audit: Audit) -> None:
    cfg = config_mod.load(stack.home)
    add = "clawden members add main local:mallory"
    asked = await run_tool(stack, term, "Bash", {"command": add, "description": "add a member"})
    assert "approval pending" in asked
    card = await card_for(term)
    assert card.card is not None and "local:mallory would become a member of agent group main." in card.card.body

    await click(term, card, button(card, approve=False), OWNER)

    told = await reply_with(term, "was denied")
    assert f"`{add}` was denied by {OWNER}; nothing was changed." in told.text
    members = await control.ask(cfg, router_api.MEMBERS_LIST, router_api.GroupFilter(agent_group="main"))
    assert "local:mallory" not in [m.user_id for m in members]
    await eventually(lambda: audit.outcomes(agent_group="main") == ["asked", "denied"])


async def test_a_waiting_write_and_the_agents_clawden_survive_a_runner_restart(
    stack: Stack, term: Terminal, audit: Audit
) -> None:
    cfg = config_mod.load(stack.home)
    asked = await asyncio.to_thread(run_cli, stack, "wire", "add", "local", "room-9", "main")
    assert "approval pending" in str(asked["out"])
    card = await card_for(term)

    old = await service_pid(stack, "runner")
    os.kill(old, signal.SIGKILL)  # the container lives on and is adopted; the waiting write is in runner.db
    assert await service_pid(stack, "runner") != old

    async def clawden_answers() -> bool:  # the adopted container's socket is bound again
        return (await asyncio.to_thread(run_cli, stack, "groups"))["code"] == 0

    await eventually(clawden_answers, timeout=60)
    await click(term, card, button(card, approve=True), OWNER)
    told = await reply_with(term, "was approved by")
    assert "`clawden wire add local room-9 main` was approved" in told.text
    [wiring] = await control.ask(cfg, router_api.WIRINGS_LIST, router_api.WiringList(chat_id="room-9"))
    assert wiring.agent_group == "main"


async def test_a_write_approved_while_the_runner_dies_is_done_when_it_comes_back(stack: Stack, term: Terminal) -> None:
    """The runner has the decision (kept in runner.db with the write) but cannot finish: the router, which it must
    ask first, is stopped. SIGKILLed then, the runner that starts next does the write and tells the agent once."""
    cfg = config_mod.load(stack.home)
    asked = await asyncio.to_thread(run_cli, stack, "wire", "add", "local", "room-7", "main")
    request_id = str(asked["out"]).split("approval pending (", 1)[1].split(")", 1)[0]
    await card_for(term)
    router, runner = await service_pid(stack, "router"), await service_pid(stack, "runner")

    def decided() -> bool:
        with sqlite3.connect(cfg.data_dir / "runner.db") as db:
            row = db.execute("SELECT decision FROM cli_writes WHERE id = ?", (request_id,)).fetchone()
        return row is not None and row[0] is not None

    os.kill(router, signal.SIGSTOP)
    try:
        approve = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "clawden", "approvals", "approve", request_id],
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert approve.returncode == 0, approve.stderr
        await eventually(decided, timeout=60)  # and now it waits on the stopped router for the group's scope
        os.kill(runner, signal.SIGKILL)
    finally:
        os.kill(router, signal.SIGCONT)

    told = await reply_with(term, "was approved by", timeout=120)
    assert "`clawden wire add local room-7 main` was approved" in told.text
    [wiring] = await control.ask(cfg, router_api.WIRINGS_LIST, router_api.WiringList(chat_id="room-7"))
    assert wiring.agent_group == "main"
    runner_log = stack.home / "logs" / "runner.log"
    assert await eventually(lambda: not decided() and "doing again the decided" in runner_log.read_text(), 30)


async def test_an_approved_change_of_its_own_settings_applies_to_the_group(stack: Stack, term: Terminal) -> None:
    cfg = config_mod.load(stack.home)
    asked = await asyncio.to_thread(run_cli, stack, "groups", "update", "main", "--effort", "high")
    assert "approval pending" in str(asked["out"])
    card = await card_for(term)
    assert card.card is not None
    assert "Agent group main's settings would change: effort high (at its next container start)." in card.card.body
    assert (await control.ask(cfg, router_api.GROUPS_GET, router_api.GroupGet(name="main"))).container.effort is None

    await click(term, card, button(card, approve=True), OWNER)

    await reply_with(term, "`clawden groups update main --effort high` was approved by")
    group = await control.ask(cfg, router_api.GROUPS_GET, router_api.GroupGet(name="main"))
    assert group.container.effort == "high"


CARDS = """
import json, subprocess
for i in range(6):
    r = subprocess.run(["clawden", "wire", "add", "local", f"cap-{i}", "main"], capture_output=True, text=True)
    print(json.dumps({"code": r.returncode, "out": r.stdout, "err": r.stderr}))
"""


async def test_an_agent_cannot_bury_its_admins_in_cards(stack: Stack, term: Terminal, audit: Audit) -> None:
    answers = await asyncio.to_thread(in_container, stack, CARDS)

    assert [a["code"] for a in answers] == [0, 0, 0, 0, 0, 1]
    assert all("approval pending" in str(a["out"]) for a in answers[:5])
    assert answers[5]["err"] == "clawden: refused: 5 commands already wait for an admin's decision\n"
    await eventually(lambda: audit.outcomes(agent_group="main") == ["asked"] * 5 + ["refused"])
