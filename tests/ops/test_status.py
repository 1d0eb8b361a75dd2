"""`clawden status` against a whole running Clawden: what answers, what it did, what waits."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from clawden import config as config_mod
from clawden import control, natsauth, runtime
from clawden.bus import ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import approvals
from clawden.bus.streams import bridge_lanes, ensure_consumer
from clawden.cli.main import main
from clawden.cli.status import gather, healthy, render
from clawden.owner import Unreachable
from tests.e2e.harness import Stack, Terminal
from tests.ops.conftest import Core, fresh_home


def cfg_of(stack: Stack) -> config_mod.Config:
    return config_mod.load(stack.home, environ={})


def endpoint(report: dict[str, Any], service: str, name: str) -> dict[str, Any]:
    [found] = [e for s in report["services"] for e in s["endpoints"] if s["name"] == service and e["name"] == name]
    return dict(found)


@pytest.mark.docker
async def test_every_core_service_answers_with_its_version_pid_and_uptime(stack: Stack) -> None:
    report = await gather(cfg_of(stack))

    assert report["down"] == [] and healthy(report)
    services = {s["name"]: s for s in report["services"]}
    assert set(services) == set(natsauth.CORE)
    for s in services.values():
        os.kill(s["pid"], 0)  # a live process on this machine
        assert s["version"] == runtime.VERSION and s["ready"] is True and s["uptime"] > 0
        assert "ping" in [e["name"] for e in s["endpoints"]]


async def test_each_endpoint_counts_its_requests_but_not_a_callers_mistake_as_its_error(core: Core) -> None:
    before = endpoint(await gather(core.cfg), "approvals", "list")

    await control.ask(core.cfg, approvals.LIST, approvals.ListRequest())
    with pytest.raises(control.Refused, match="status 'bogus'"):  # a CLI typo: refused, and said so
        await control.ask(core.cfg, approvals.LIST, approvals.ListRequest(status="bogus"))

    after = endpoint(await gather(core.cfg), "approvals", "list")
    # status itself asked `list` once more each time (pending approvals)
    assert after["requests"] == before["requests"] + 3
    assert after["errors"] == before["errors"] == 0


@pytest.mark.docker
async def test_a_chat_with_its_agent_shows_its_running_container(stack: Stack) -> None:
    async with Terminal(stack, "ops-status") as chat:
        reply = await chat.ask("hello")

    report = await gather(cfg_of(stack))

    running = {c["session_id"]: c for c in report["containers"]["running"]}
    assert running[reply.session_id]["agent_group"] == "main"
    assert running[reply.session_id]["state"] == "running"
    [container] = [c for c in stack.containers() if c.labels.get("dev.clawden.session") == reply.session_id]
    assert running[reply.session_id]["container"] == container.id[:12]
    assert reply.session_id in render(report)


@pytest.mark.docker
async def test_a_pending_approval_is_counted_and_listed(stack: Stack) -> None:
    request = ev.ApprovalRequest(
        id=f"ops-{uuid.uuid4().hex[:8]}",
        kind="question",
        requester="runner",
        agent_group="main",
        card=ev.Card(title="Tea or coffee?", buttons=(ev.Button(id="tea", label="Tea"),)),
        route=ev.Route(channel="local", chat_id="ops-approvals"),
        expires_at=time.time() + 600,
    )
    nc = await stack.connect()
    try:
        cards: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_card(msg: Msg) -> None:
            await cards.put(msg.data)

        await nc.subscribe(subjects.outbound_all("local"), cb=on_card)
        await publish(nc.jetstream(), subjects.APPROVAL_REQUEST, request, msg_id=f"ops:{request.id}")
        while b"Tea or coffee?" not in await asyncio.wait_for(cards.get(), 20):
            pass  # the card leaves once the approval is stored as pending
    finally:
        await nc.close()

    report = await gather(cfg_of(stack))

    pending = report["approvals"]
    assert request.id in [a["id"] for a in pending["items"]]
    assert pending["pending"] == len(pending["items"]) >= 1
    assert f"pending approvals: {pending['pending']}" in render(report)


@pytest.mark.docker
async def test_a_bridge_that_is_down_is_listed_with_what_it_has_not_delivered(stack: Stack) -> None:
    token = stack.home / "keys" / "telegram"  # a token makes the bridge one that should run
    token.write_text("123456:not-a-real-token\n")
    token.chmod(0o600)
    nc = await stack.connect()
    js = nc.jetstream()
    lanes = bridge_lanes("telegram")
    chats = ("42", next(c for c in map(str, range(100)) if subjects.lane(c) != subjects.lane("42")))
    try:
        await ensure_streams(js)
        for consumer in lanes:  # as the bridge left them when it stopped
            await ensure_consumer(js, consumer)
        for chat in chats:
            message = ev.OutboundMessage(
                id=f"ops-undelivered-{chat}", route=ev.Route(channel="telegram", chat_id=chat), text="hello"
            )
            await publish(js, subjects.outbound("telegram", chat), message, msg_id=message.id)

        report = await gather(cfg_of(stack))
    finally:
        token.unlink()
        for consumer in lanes:
            await js.delete_consumer("CLAWDEN_OUTBOUND", consumer.durable)
        await nc.close()

    assert report["down"] == ["channel-telegram"] and not healthy(report)
    # The eight lanes are one row, their backlogs summed.
    [backlog] = [r for r in report["streams"] if r["durable"] == "channel-telegram-0..7"]
    assert (backlog["pending"], backlog["ack_pending"], backlog["owner"], backlog["lanes"]) == (
        2,
        0,
        "channel-telegram",
        8,
    )
    assert not [r for r in report["streams"] if r["durable"].startswith("channel-telegram-") and r is not backlog]
    text = render(report)
    assert "channel-telegram  DOWN" in text and "channel-telegram-0..7" in text


@pytest.mark.docker
def test_the_command_prints_a_table_or_json(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(stack.home), "status"]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"NATS {stack.nats_url}\n") and "SERVICE" in table and "pending approvals:" in table

    assert main(["--home", str(stack.home), "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {s["name"] for s in report["services"]} >= set(natsauth.CORE)
    assert set(report) == {"nats", "at", "services", "down", "containers", "streams", "approvals", "deliveries"}


def test_without_nats_it_says_so_and_how_to_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fresh_home(tmp_path / "home")

    assert main(["--home", str(tmp_path / "home"), "status"]) == 1

    err = capsys.readouterr().err
    assert f"cannot reach NATS at {cfg.nats_url}" in err and "\n  fix: " in err
    assert "Traceback" not in err and "nats error" not in err


async def test_a_nats_that_refuses_the_cli_identity_is_named_as_such(secured_nats: config_mod.Config) -> None:
    seed = natsauth.seed_path(secured_nats, natsauth.CLI)
    seed.write_text(natsauth.new_seed() + "\n")  # not the key nats.conf names

    with pytest.raises(Unreachable, match="refused the owner's CLI identity") as refused:
        await gather(secured_nats)
    assert "clawden init" in refused.value.fix


@pytest.mark.docker
async def test_an_added_runners_durables_are_named_as_its_own(stack: Stack) -> None:
    """A runner for another host (`clawden runners add b`) that has not started yet: its wake durable is missing,
    and the row says whose it is."""
    cfg = cfg_of(stack)
    natsauth.ensure_seed(cfg, natsauth.runner_identity("b"))
    try:
        report = await gather(cfg)
    finally:
        natsauth.seed_path(cfg, natsauth.runner_identity("b")).unlink()
    [wake] = [r for r in report["streams"] if r["durable"] == "runner-b"]
    assert wake["owner"] == "runner-b" and wake["missing"]


@pytest.mark.docker
async def test_the_web_apps_lanes_are_not_listed_missing_where_it_is_not_configured(stack: Stack) -> None:
    """No `[web] listen`: the web app runs nowhere, so its durables are never made, and status does not call them
    missing (it listed `channel-web-0..7 web missing` on every new install)."""
    cfg = cfg_of(stack)
    assert not cfg.web.listen and not cfg.webhooks.listen
    report = await gather(cfg)
    assert not [r for r in report["streams"] if r.get("owner") in ("web", "webhooks")], report["streams"]
