"""A `clawden` write waiting for an admin, as the session folder keeps it for whichever runner holds the session
(services/runner/sessions.py, admin.py): its approval id commits to the session and the command, so a row the agent
changed is no write an admin was shown; the folder's record is written only by the runner its fence names, and a
runner the session moved away from no longer holds it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import sessiondb
from clawden.bus import Retry
from clawden.bus.ctl import router as api
from services.runner import admin
from services.runner.sessions import (
    claim_folder,
    cli_writes_in,
    forget_cli_write,
    holds,
    prepare_folder,
    record_cli_write,
    told,
)
from tests.admin.conftest import INFO, Desk, approved
from tests.eventually import eventually
from tests.router.conftest import RouterProcess

WIRE = ["wire", "add", "local", "room-1", "main"]


def test_an_approval_id_checks_out_only_for_the_session_and_command_it_was_made_for() -> None:
    approval = admin.write_id("s-1", WIRE, "0123456789abcdef")

    assert approval.startswith("cli-0123456789abcdef-") and len(approval) <= 64  # one subject token
    assert admin.checks_out(approval, "s-1", WIRE)
    assert not admin.checks_out(approval, "s-1", [*WIRE[:3], "room-2", "main"])  # the agent changed the row
    assert not admin.checks_out(approval, "s-2", WIRE)  # another session's
    assert not admin.checks_out(approval.replace("0123", "3210"), "s-1", WIRE)
    assert not admin.checks_out("na-s-1-0123", "s-1", WIRE)
    assert admin.write_id("s-1", WIRE, "fedcba9876543210") != approval


@pytest.fixture
def as_runner() -> Iterator[None]:
    sessiondb.write_as("a", follows_own=True)
    yield
    sessiondb.write_as(None)


def test_a_write_kept_in_the_folder_is_listed_until_forgotten_and_rows_not_commands_are_left_out(
    tmp_path: Path, as_runner: None
) -> None:
    folder = tmp_path / "s-1"
    claim_folder(folder, 1, "a")
    prepare_folder(folder, None)
    assert cli_writes_in(folder) == []  # a file made before the table: nothing kept, nothing fails
    first, second = admin.write_id("s-1", WIRE, "1" * 16), admin.write_id("s-1", ["members", "add"], "2" * 16)
    record_cli_write(folder, first, WIRE)
    record_cli_write(folder, second, ["members", "add"])
    record_cli_write(folder, first, ["other"])  # the same id again keeps the first
    with sessiondb.opened(folder / sessiondb.INBOUND) as conn:  # what the agent could write in
        conn.execute("INSERT INTO cli_writes VALUES ('cli-x', '{\"not\": \"argv\"}', 9e9)")
        conn.execute("INSERT INTO cli_writes VALUES ('cli-y', 'not json', 9e9)")

    assert cli_writes_in(folder) == [(first, WIRE), (second, ["members", "add"])]
    forget_cli_write(folder, first)
    assert cli_writes_in(folder) == [(second, ["members", "add"])]
    assert not told(folder, admin.outcome_key(second))


def test_a_runner_the_session_moved_away_from_neither_holds_it_nor_writes_its_record(
    tmp_path: Path, as_runner: None
) -> None:
    folder = tmp_path / "s-1"
    claim_folder(folder, 1, "a")
    prepare_folder(folder, None)
    approval = admin.write_id("s-1", WIRE, "1" * 16)
    record_cli_write(folder, approval, WIRE)
    assert holds(folder)

    sessiondb.write_as("b", follows_own=True)
    claim_folder(folder, 2, "b")  # the session moved to runner b
    sessiondb.write_as("a", follows_own=True)
    sessiondb.hold(folder, 1)

    assert not holds(folder)
    with pytest.raises(sessiondb.Fenced):
        forget_cli_write(folder, approval)
    with pytest.raises(sessiondb.Fenced):
        record_cli_write(folder, admin.write_id("s-1", WIRE, "2" * 16), WIRE)
    assert cli_writes_in(folder) == [(approval, WIRE)]  # still there for b


# --- the runner's side: a write asked, decided and carried out once (tests/admin/conftest.py's Desk) ---------------


async def test_a_write_decided_while_the_router_is_away_stays_decided_and_the_agent_hears_nothing_yet(
    desk: Desk,
) -> None:
    request_id = await desk.kept(*WIRE)  # no router runs: nobody answers on the group's cli_scope

    with pytest.raises(Retry):
        await desk.admin.on_decision(approved(request_id))

    assert [(d.id, argv) for d, _, argv in await desk.index.run(desk.index.decided_cli_writes)] == [(request_id, WIRE)]
    assert desk.notes == {}
    assert cli_writes_in(desk.folder) == [(request_id, WIRE)]


async def test_a_write_the_router_does_not_answer_stays_decided_to_be_done_again(desk: Desk, nc: Client) -> None:
    # The router as far as the group's cli_scope, then away: only `groups get` is answered.
    group = api.GroupDetail(
        wirings=[],
        members=[],
        admins=[],
        destinations=[],
        name="main",
        folder="main",
        assistant_name="",
        provider="claude",
        model="",
        container=api.ContainerSettings(),
        created_at=0,
    )

    async def answer(msg: Msg) -> None:
        await msg.respond(msgspec.json.encode(group))

    await nc.subscribe(api.GROUPS_GET.subject, cb=answer)
    request_id = await desk.kept(*WIRE)

    with pytest.raises(Retry):
        await desk.admin.on_decision(approved(request_id))

    assert [d.id for d, _, _ in await desk.index.run(desk.index.decided_cli_writes)] == [request_id]
    assert desk.notes == {}


async def test_one_decision_arriving_twice_at_once_is_carried_out_once(
    router: RouterProcess, desk: Desk, nc: Client
) -> None:
    asked: list[Msg] = []

    async def seen(msg: Msg) -> None:
        asked.append(msg)

    await nc.subscribe(api.WIRINGS_CREATE.subject, cb=seen)  # beside the router: every `wire add` it is asked
    reply = await desk.ask(*WIRE)

    # The decisions durable's delivery and resume()'s (or an adoption's read-back) of the same decision.
    assert await asyncio.gather(*(desk.admin.on_decision(approved(reply.pending)) for _ in range(2))) == [True, True]

    assert len(asked) == 1
    [told] = desk.notes.values()
    assert "`clawden wire add local room-1 main` was approved by local:owner and done" in told
    assert await desk.index.run(desk.index.decided_cli_writes) == []


async def test_a_request_the_bus_did_not_take_goes_out_once_it_does(router: RouterProcess, desk: Desk) -> None:
    stream = (await desk.ctx.js.stream_info("CLAWDEN_APPROVALS")).config
    await desk.ctx.js.update_stream(dataclasses.replace(stream, max_msg_size=16))  # every request refused

    reply = await desk.ask(*WIRE)
    assert reply.ok and reply.pending
    assert await desk.requests() == []

    await desk.ctx.js.update_stream(stream)
    [request] = await eventually(desk.requests, timeout=10)
    assert request.id == reply.pending and request.agent_group == "main"


async def test_a_write_kept_but_never_asked_about_is_asked_at_start(router: RouterProcess, desk: Desk) -> None:
    request_id = await desk.kept(*WIRE)

    await desk.admin.resume()

    [request] = await desk.requests()
    assert request.id == request_id and request.card.body.startswith("clawden wire add local room-1 main\n")


async def test_a_write_kept_but_never_asked_about_is_asked_by_the_runner_that_adopts_it(
    router: RouterProcess, desk: Desk
) -> None:
    request_id = await desk.kept(*WIRE)
    await desk.index.run(desk.index.done_cli_write, request_id)  # the folder keeps it, where an adopting runner looks

    assert await desk.admin.take_over(INFO) == [request_id]
    assert [r.id for r in await desk.requests()] == [request_id]
    await desk.admin.resume()  # asked again at a start: the same request, still one
    assert [r.id for r in await desk.requests()] == [request_id]
