"""The whole system for each module here, as in tests/e2e: real `clawden up`, real agent containers, the fake model.
And, for the runner's side of a `clawden` write alone, its AdminDesk and Installer as the runner wires them, on real
NATS (with the real router process, as tests/router has it), a real runner.db and a real session folder."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.config import Config
from clawden.runtime import ServiceContext
from clawden.sdnotify import Notifier
from services.runner import admin
from services.runner.images import Installer
from services.runner.sessions import SessionIndex, SessionInfo, prepare_folder, record_cli_write
from tests.e2e.harness import Stack, start_stack
from tests.router.conftest import router

__all__ = ["router"]

INFO = SessionInfo("s-42", "main", ev.Route(channel="local", chat_id="kitchen"))
RUNNER_IMAGE = "clawden-agent:admin-tests"  # never built: no test here gets as far as a build


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str
) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("home"), **getattr(request.module, "STACK_OPTIONS", {}))
    yield s
    s.stop()


class Desk:
    """The runner's admin desk for session INFO, with what it tells the agent and the sessions it restarts kept."""

    def __init__(self, nc: Client, index: SessionIndex, tmp: Path) -> None:
        self.index, self.sessions = index, tmp / "sessions"
        prepare_folder(self.folder, None)
        self.notes: dict[str, str] = {}
        self.restarted: list[str] = []
        self.ctx = ServiceContext(
            name="runner", config=Config(home=str(tmp)), nc=nc, js=nc.jetstream(), notifier=Notifier()
        )
        self.admin = admin.AdminDesk(
            self.ctx, index, tmp / "run", None, self.note, lambda info: self.sessions / info.id
        )
        self.installer = Installer(nc, index, RUNNER_IMAGE, self.restart, self.admin.done)
        self.admin.doers["groups packages add"] = self.installer.do
        self.admin.doers["groups mcp add"] = self.installer.add_server

    @property
    def folder(self) -> Path:
        return self.sessions / INFO.id

    async def note(self, info: SessionInfo, key: str, text: str) -> None:
        self.notes.setdefault(key, text)  # as sessiondb.insert_inbound: one row per key, the first one

    async def restart(self, session_id: str) -> bool:
        self.restarted.append(session_id)
        return True

    async def ask(self, *argv: str) -> admin.CliReply:
        """`clawden <argv>` as the agent sends it on its socket."""
        return await self.admin.handle(INFO, json.dumps({"argv": list(argv)}).encode())

    async def kept(self, *argv: str) -> str:
        """A write kept as `AdminDesk` keeps one it asks about (in the folder, then runner.db), its approval
        request not published: a runner stopped in between. Its approval id."""
        request_id = admin.write_id(INFO.id, list(argv), "0123456789abcdef")
        record_cli_write(self.folder, request_id, list(argv))
        await self.index.run(self.index.put_cli_write, request_id, INFO.id, list(argv))
        return request_id

    async def requests(self) -> list[ev.ApprovalRequest]:
        """The approval requests on the stream, as the approvals service would read them."""
        stream = await self.ctx.js.stream_info("CLAWDEN_APPROVALS")
        found: list[ev.ApprovalRequest] = []
        for seq in range(stream.state.first_seq, stream.state.last_seq + 1) if stream.state.messages else ():
            msg = await self.ctx.js.get_msg("CLAWDEN_APPROVALS", seq)
            if msg.subject == subjects.APPROVAL_REQUEST and isinstance(
                event := ev.decode(msg.data or b""), ev.ApprovalRequest
            ):
                found.append(event)
        return found


@pytest.fixture
async def desk(nc: Client, tmp_path: Path) -> AsyncIterator[Desk]:
    index = await SessionIndex.start(tmp_path / "runner.db")
    await index.run(index.put, INFO)
    d = Desk(nc, index, tmp_path)
    yield d
    d.ctx.stopping.set()
    d.admin.close_all()
    await index.stop()


def approved(request_id: str) -> ev.ApprovalDecision:
    return ev.ApprovalDecision(id=request_id, decision="approved", decided_by="local:owner")
