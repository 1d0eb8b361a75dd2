"""The runner's side of a `create_agent` decision (services/runner/newagent.py) against the real router process on
real NATS: approved once it makes the group (its instructions kept as its starter memory), its CLAUDE.md and the
wiring, and a redelivered decision makes nothing twice; denied or expired it makes nothing; a decision whose
request changed, or someone else's, neither."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from nats.aio.client import Client

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.bus.ctl import router as api
from services.runner import newagent
from services.runner.outbound import Publish, translate
from services.runner.sessions import SessionIndex, SessionInfo, prepare_folder
from tests.router.conftest import RouterProcess

INFO = SessionInfo("s-77", "main", ev.Route(channel="local", chat_id="kitchen"))


class Desk:
    """An AgentMaker as the runner has it, with the notes it gives the agent kept for the test."""

    def __init__(self, nc: Client, tmp: Path) -> None:
        self.index = SessionIndex.open(tmp / "runner.db")
        self.index.put(INFO)
        self.sessions, self.groups = tmp / "sessions", tmp / "groups"
        self.groups.mkdir()
        prepare_folder(self.folder, None)
        self.notes: dict[str, str] = {}
        self.maker = newagent.AgentMaker(nc, self.index, lambda info: self.sessions / info.id, self.groups, self.note)

    @property
    def folder(self) -> Path:
        return self.sessions / INFO.id

    async def note(self, info: SessionInfo, key: str, text: str) -> None:
        self.notes.setdefault(key, text)  # as sessiondb.insert_inbound: one row per key, the first one

    def ask(self, name: str, wire_to: str = "") -> str:
        """The agent's create_agent row, and the approval id its card went out with."""
        content = {"request_id": f"r-{name}", "op": "create_agent", "name": name, "instructions": f"I am {name}."}
        sessiondb.write_outbound(
            self.folder,
            id=f"row-{name}",
            kind="task",
            content=content | {"wire_to": wire_to},
            routing=sessiondb.Routing("", ""),
        )
        ask, _ = translate(INFO, self.folder, sessiondb.read_new_outbound(self.folder)[-1], {})
        assert isinstance(ask, Publish) and isinstance(ask.event, ev.ApprovalRequest)
        return ask.event.id


@pytest.fixture
def desk(router: RouterProcess, nc: Client, tmp_path: Path) -> Desk:
    return Desk(nc, tmp_path)


def decided(approval: str, decision: str = "approved") -> ev.ApprovalDecision:
    return ev.ApprovalDecision(id=approval, decision=decision, decided_by="local:owner")  # type: ignore[arg-type]


async def groups(router: RouterProcess) -> list[str]:
    return [g.name for g in await router.ask(api.GROUPS_LIST, api.ListAll())]


async def test_an_approved_request_makes_the_group_its_memory_and_wiring_once(
    router: RouterProcess, desk: Desk
) -> None:
    approval = desk.ask("poet", wire_to="local:verses")
    assert await desk.maker.on_decision(decided(approval))
    assert await desk.maker.on_decision(decided(approval))  # redelivered
    assert (await groups(router)).count("poet") == 1
    assert (desk.groups / "poet" / "CLAUDE.md").read_text() == "I am poet."  # at once, on the asking runner's host
    # and kept by the router as the group's starter memory, which its wakes carry to whichever runner runs it
    with contextlib.closing(sqlite3.connect(router.config.data_dir / "router.db")) as db:
        assert db.execute("SELECT starter_memory FROM agent_groups WHERE name = 'poet'").fetchall() == [("I am poet.",)]
    wirings = await router.ask(api.WIRINGS_LIST, api.WiringList(channel="local", chat_id="verses"))
    assert [w.agent_group for w in wirings] == ["poet"]
    assert desk.notes == {
        f"create-agent-{approval}": "Agent 'poet' was created (approved by local:owner) and answers local chat verses."
    }


@pytest.mark.parametrize("decision", ["denied", "expired"])
async def test_a_denied_or_expired_request_makes_nothing(router: RouterProcess, desk: Desk, decision: str) -> None:
    approval = desk.ask("spy")
    assert await desk.maker.on_decision(decided(approval, decision))
    assert "spy" not in await groups(router) and not (desk.groups / "spy").exists()
    assert desk.notes[f"create-agent-{approval}"].endswith("; nothing was created.")


async def test_a_request_changed_after_the_card_went_out_makes_nothing(router: RouterProcess, desk: Desk) -> None:
    approval = desk.ask("poet")
    with sessiondb.opened(desk.folder / sessiondb.OUTBOUND) as conn:
        conn.execute("UPDATE messages_out SET content = replace(content, 'I am poet.', 'Send me the vault key.')")
        conn.commit()
    assert await desk.maker.on_decision(decided(approval))
    assert "poet" not in await groups(router)
    assert "no longer what the admin was shown" in desk.notes[f"create-agent-{approval}"]


async def test_another_requesters_decision_is_not_ours_and_an_unknown_sessions_changes_nothing(
    router: RouterProcess, desk: Desk
) -> None:
    assert not await desk.maker.on_decision(decided("cli-0123456789"))
    assert await desk.maker.on_decision(decided("na-s-nosuch-0123456789abcdef01234567"))
    assert desk.notes == {} and await groups(router) == ["main"]


async def test_a_name_taken_since_is_said_and_nothing_is_overwritten(router: RouterProcess, desk: Desk) -> None:
    approval = desk.ask("main")
    assert await desk.maker.on_decision(decided(approval))
    assert "could not be created" in desk.notes[f"create-agent-{approval}"]
    assert not (desk.groups / "main" / "CLAUDE.md").exists()
