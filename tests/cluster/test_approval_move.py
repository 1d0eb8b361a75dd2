"""What an agent asked an admin for on a runner that is then lost is carried out once, on the runner its session moved
to (shared storage): a `clawden` write (`wire add`, asked from the agent's container on runner b) and a
`create_agent` request (the fake model calls the tool on b). Host b goes (runner and container), the session moves
to runner a (an Adopt at epoch 2, as the router sends it), and the owner decides through the approvals service:
after the adoption, with runner b back from its home meanwhile (its runner.db still holds the write, its index the
session) and handed the decision too; or before it, while the session is nobody's, so that a's durable drops the
decision and a reads it back when it adopts the session. The command runs once and the agent is told once, by a; b
carries out nothing. Real NATS, router, approvals, runners, Docker and Claude Code; the fake model scripts the
tool call."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator

import docker
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from clawden import control, sessiondb
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import approvals as approvals_api
from clawden.bus.ctl import router as router_api
from clawden.bus.streams import runner_decisions
from services.runner import newagent
from services.runner.containers import LABEL_INSTALL, LABEL_SESSION
from tests.cluster.runnerloss import ROUTE, SESSION, TURN, Shared, send, shared, taken, wake  # noqa: F401  (fixture)
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process]
WIRE = ["wire", "add", "local", "room-moved", "main"]
POET = newagent.NewAgent("poet", "You are the poet.", None)
MAKE_POET = ToolCall("create_agent", {"name": POET.name, "instructions": POET.instructions})


class Moving:
    """The pair of runners, a connection that watches the chat and the runners' `clawden` audit events, and what
    each step of the tests waits for."""

    def __init__(self, pair: Shared, nc: Client) -> None:
        self.pair, self.nc = pair, nc
        self.audit: list[ev.AuditEvent] = []

    async def watch(self) -> None:
        async def on(msg: Msg) -> None:
            event = ev.decode(msg.data)
            assert isinstance(event, ev.AuditEvent)
            self.audit.append(event)

        await self.pair.watch(self.nc)
        await self.nc.subscribe(subjects.event("runner", "cli"), cb=on)

    def outcomes(self, approval: str) -> list[str]:
        return [e.fields["outcome"] for e in self.audit if e.fields.get("approval") == approval]

    async def turn_on_b(self, text: str) -> None:
        """A message answered on runner b, and the folder at rest: b's container waits for the next one."""
        await send(self.nc, "b", wake(text, 1))
        await eventually(lambda: self.pair.replies(text), TURN, lambda: self.pair.b.log.read_text()[-3000:])
        await eventually(self.pair.settled, TURN)

    def lose_b(self) -> None:
        """Host b is gone: its runner and its agent container with it."""
        self.pair.kill_b()
        client = docker.from_env()
        try:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL_INSTALL}={self.pair.b.install_id}"}):
                c.remove(force=True)
        finally:
            client.close()

    def clawden_on_b(self, *argv: str) -> str:
        """`clawden <argv>` in the session's container on b, as its agent runs it: the approval id of the write."""
        client = docker.from_env()
        try:
            labels = [f"{LABEL_SESSION}={SESSION}", f"{LABEL_INSTALL}={self.pair.b.install_id}"]
            (box,) = client.containers.list(filters={"label": labels})
            code, output = box.exec_run(["clawden", *argv])
        finally:
            client.close()
        said = output.decode()
        assert code == 0 and "approval pending (" in said, said
        return said.split("approval pending (", 1)[1].split(")", 1)[0]

    async def adopted_by_a(self) -> None:
        """The session moved to a, as the router moves it (an Adopt at epoch 2), and a's handler done with it."""
        adopt = ev.Adopt(session_id=SESSION, agent_group="main", route=ROUTE, epoch=2, from_runner="b")
        seq = await send(self.nc, "a", adopt)
        await eventually(lambda: taken(self.nc, "a", seq), TURN, lambda: self.a_log()[-3000:])

    def a_log(self) -> str:
        return (self.pair.stack.home / "logs" / "runner.log").read_text()

    def a_took_over(self, approval: str, how: str) -> bool:
        """Whether a said so of the approval when it adopted the session ("is decided here", or "was decided before
        the move")."""
        return f"session {SESSION}: {approval}, asked on runner b, {how}" in self.a_log()

    async def b_back(self) -> None:
        """Runner b again, from its home as it was: its runner.db holds the session and what it asked."""
        logged = len(self.pair.b.log.read_text())
        self.pair.restart_b()
        await eventually(lambda: self.pair.b_said("runner ready", after=logged), TURN)

    async def approve(self, approval: str) -> int:
        """The owner approves at the machine (`clawden approvals approve`), once the approvals service has the
        request; the decision's stream sequence, once it is on the stream."""

        async def decided() -> bool:
            decide = approvals_api.DecideRequest(id=approval, choice="approve", by="local:owner")
            try:
                await control.ask_on(self.nc, approvals_api.DECIDE, decide, timeout=30)
            except control.ControlError as exc:
                if "no approval" in str(exc):
                    return False  # the request is on its way to the service
                raise
            return True

        await eventually(decided, TURN)
        js, stream = self.nc.jetstream(), runner_decisions("a").stream

        async def stored() -> int | None:
            try:
                return (await js.get_last_msg(stream, subjects.approval_decision(approval))).seq
            except NotFoundError:  # not published yet (the service's outbox flushes it)
                return None

        return await eventually(stored, TURN)

    async def taken(self, runner: str, seq: int) -> None:
        """The runner's decisions durable has handled everything up to `seq`."""
        decisions = runner_decisions(runner)

        async def done() -> bool:
            info = await self.nc.jetstream().consumer_info(decisions.stream, decisions.durable)
            return (info.ack_floor.stream_seq or 0) >= seq and not info.num_ack_pending

        await eventually(done, TURN)

    def notes(self) -> dict[str, str]:
        """What the host told the agent (`Runner.note`), by note id."""
        with sqlite3.connect(self.pair.folder / sessiondb.INBOUND) as conn:
            rows = conn.execute("SELECT id, content FROM messages_in WHERE sender_id = 'clawden'").fetchall()
        return {str(key): json.loads(content)["text"] for key, content in rows}

    def echoed(self, text: str) -> list[ev.OutboundMessage]:
        """The replies in the chat that pass on what the agent was told (the fake model's default turn echoes it)."""
        return [e for e in self.pair.sent if isinstance(e, ev.OutboundMessage) and text in e.text]

    async def wirings(self) -> list[router_api.Wiring]:
        return await control.ask_on(
            self.nc, router_api.WIRINGS_LIST, router_api.WiringList(channel="local", chat_id="room-moved"), timeout=30
        )

    async def groups(self) -> list[str]:
        return [g.name for g in await control.ask_on(self.nc, router_api.GROUPS_LIST, router_api.ListAll(), timeout=30)]


@pytest.fixture
async def moving(shared: Shared) -> AsyncIterator[Moving]:  # noqa: F811
    nc = await shared.stack.connect()
    m = Moving(shared, nc)
    await m.watch()
    try:
        yield m
    finally:
        await nc.close()


async def wire_told_once(m: Moving, approval: str) -> None:
    """The write done once, by a, and the agent told once (and its reply, from a's container, once)."""
    told = "`clawden wire add local room-moved main` was approved by local:owner and done"
    note = await eventually(lambda: m.notes().get(f"cli-outcome-{approval}"), TURN, lambda: m.pair.stack.output[-40:])
    assert told in note
    [wiring] = await m.wirings()
    assert wiring.agent_group == "main"
    await eventually(lambda: m.echoed(told), TURN, lambda: m.pair.stack.output[-40:])
    await eventually(m.pair.settled, TURN)
    await m.nc.flush()
    assert m.outcomes(approval) == ["asked", "done"]  # asked on b, done once (a audits; b, fenced, does nothing)
    assert len(m.echoed(told)) == 1
    assert sessiondb.fence(m.pair.folder) == sessiondb.Fence(2, "a")


async def test_a_clawden_write_approved_after_the_move_is_done_once_by_the_runner_the_session_moved_to(
    moving: Moving,
) -> None:
    m = moving
    await m.turn_on_b("hello on b")
    approval = m.clawden_on_b(*WIRE)
    m.lose_b()
    await m.adopted_by_a()
    await m.b_back()  # fenced: the write in its runner.db is a's to carry out now

    seq = await m.approve(approval)

    await wire_told_once(m, approval)
    await m.taken("b", seq)  # b had the decision too
    assert "of sess-fenced is left to the runner its session moved to" in m.pair.b.log.read_text()
    assert m.a_took_over(approval, "is decided here")


async def test_a_clawden_write_approved_before_the_adoption_is_done_once_by_the_runner_the_session_moved_to(
    moving: Moving,
) -> None:
    m = moving
    await m.turn_on_b("hello on b")
    approval = m.clawden_on_b(*WIRE)
    m.lose_b()
    seq = await m.approve(approval)  # while b is gone and before the move: the write is nobody's
    await m.taken("a", seq)  # a had the decision, and dropped it: the write was not known there

    await m.adopted_by_a()

    await wire_told_once(m, approval)
    assert m.a_took_over(approval, "was decided before the move")


async def made_once(m: Moving, approval: str) -> None:
    """The group made once, by a, and the agent told once."""
    note = await eventually(lambda: m.notes().get(f"create-agent-{approval}"), TURN, lambda: m.pair.stack.output[-40:])
    assert note == "Agent 'poet' was created (approved by local:owner)."
    assert (await m.groups()).count("poet") == 1
    assert (m.pair.storage / "groups" / "poet" / "CLAUDE.md").read_text() == POET.instructions
    await eventually(lambda: m.echoed(note), TURN, lambda: m.pair.stack.output[-40:])
    await eventually(m.pair.settled, TURN)
    await m.nc.flush()
    assert len(m.echoed(note)) == 1


async def ask_for_a_poet_on_b(m: Moving) -> str:
    """The agent on b calls create_agent; b publishes the request (the approvals service has it once it decides)."""
    m.pair.stack.fake.script(MAKE_POET, Text("asked"))
    await send(m.nc, "b", wake("make a poet", 1))
    await eventually(lambda: m.pair.stack.fake.pending_script == 0, TURN, lambda: m.pair.b.log.read_text()[-3000:])
    await eventually(m.pair.settled, TURN)
    return newagent.approval_id(SESSION, POET)


async def test_a_new_agent_approved_after_the_move_is_made_once_by_the_runner_the_session_moved_to(
    moving: Moving,
) -> None:
    m = moving
    approval = await ask_for_a_poet_on_b(m)
    m.lose_b()
    await m.adopted_by_a()
    await m.b_back()  # its index still has the session: it must not make the group, nor try to

    seq = await m.approve(approval)

    await made_once(m, approval)
    await m.taken("b", seq)
    log = m.pair.b.log.read_text()
    assert f"create_agent {approval}: " in log  # b had the decision
    assert f"create_agent {approval}: Agent" not in log and f"create_agent {approval}: Your request" not in log
    assert m.a_took_over(approval, "is decided here")


async def test_a_new_agent_approved_before_the_adoption_is_made_once_by_the_runner_the_session_moved_to(
    moving: Moving,
) -> None:
    m = moving
    approval = await ask_for_a_poet_on_b(m)
    m.lose_b()
    seq = await m.approve(approval)
    await m.taken("a", seq)  # dropped there: a did not hold the session yet

    await m.adopted_by_a()

    await made_once(m, approval)
    assert m.a_took_over(approval, "was decided before the move")
