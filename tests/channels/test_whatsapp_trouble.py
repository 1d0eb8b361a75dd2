"""What the WhatsApp bridge says is wrong (its ping's `trouble`, which `clawden status` shows as degraded): its reach
is its Graph API calls (what people write comes through the front door), so a call WhatsApp refuses or cannot take
sets the trouble in WhatsApp's terms and the next call it answers ends it; never a timer, and never a delivery, which
says nothing of the Graph. The bridge and the front door run as processes against the fake Graph, with real NATS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl.common import PING
from clawden.cli import status
from clawden.natsserver import free_port
from services.channels import whatsapp as whatsapp_bridge
from services.channels.reach import line
from services.channels.retry import PlatformError
from tests.channels.whatsapp_harness import WhatsApp, whatsapp
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.threaded import ThreadedServer
from tests.fakes.whatsapp import FakeGraph, GraphError

pytestmark = pytest.mark.process
ADA = "447700900123"
AT = time.mktime((2026, 12, 6, 21, 14, 0, 0, 0, -1))  # the lines' "since": 21:14 local time


@pytest.fixture
async def wa(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[WhatsApp]:
    async with whatsapp(tmp_path, nats_server.url) as running:
        yield running


async def trouble(wa: WhatsApp) -> str:
    return (await status.ask(wa.bus.nc, PING.at("channel-whatsapp"), Nothing())).trouble


async def on_the_bus(wa: WhatsApp, wamid: str) -> None:
    async def stored() -> bool:
        return any(e.message_id == wamid for e in await wa.bus.inbound())

    await eventually(stored, 30, wa.bridge.output)


async def settled(wa: WhatsApp, outbound_id: str) -> bool:
    """Whether the reply went, once its final receipt is in."""

    async def final() -> list[ev.DeliveryReceipt] | None:
        return [r for r in await wa.bus.receipts() if r.outbound_id == outbound_id and r.final] or None

    [receipt] = await eventually(final, 30, wa.bridge.output)
    return receipt.ok


async def test_a_token_whatsapp_refuses_is_said_with_the_fix_until_a_graph_call_is_answered(wa: WhatsApp) -> None:
    """The token expires while the bridge runs: the first reply it refuses makes `clawden status` say WhatsApp refuses
    the credentials and how to mend them; a person writing meanwhile (through the front door) does not end it, and
    the next reply WhatsApp takes does."""
    wamid, _ = await wa.graph.user_writes(ADA, "hi")
    await on_the_bus(wa, wamid)
    assert await trouble(wa) == ""
    token, wa.graph.token = wa.graph.token, "EAAexpiredForTests"
    await wa.bus.send_to(ADA, "refused", id="out-1")
    assert not await settled(wa, "out-1")
    said = await trouble(wa)
    assert said.startswith("WhatsApp refuses the bridge's credentials since ") and "Invalid OAuth access token" in said
    assert said.endswith("nothing comes in or goes out until they are mended: " + whatsapp_bridge.WHATSAPP_FIX)

    wamid, _ = await wa.graph.user_writes(ADA, "still there?")
    await on_the_bus(wa, wamid)
    assert await trouble(wa) == said, "a delivery through the front door ended the Graph's trouble"

    wa.graph.token = token
    await wa.bus.send_to(ADA, "taken", id="out-2")
    assert await settled(wa, "out-2")
    assert await trouble(wa) == ""


async def test_a_throughput_limit_holds_the_bridge_back_until_the_send_goes(wa: WhatsApp) -> None:
    wamid, _ = await wa.graph.user_writes(ADA, "hi")
    await on_the_bus(wa, wamid)
    wa.graph.inject("messages", *[GraphError(429, 130429, "Rate limit hit", retry_after=2)] * 3)
    await wa.bus.send_to(ADA, "after the limit", id="out-429")

    async def held_back() -> str | None:
        now = await trouble(wa)
        return now if now.startswith("WhatsApp is holding the bridge back since ") else None

    assert "(it asks the bridge to wait 2s)" in await eventually(held_back, 30, wa.bridge.output)
    assert await settled(wa, "out-429")
    assert await trouble(wa) == ""


async def test_a_graph_api_away_at_start_is_said_at_once_and_ended_when_it_answers(wa: WhatsApp) -> None:
    """Started while the Graph API cannot be reached: READY, and degraded with why; the bridge asks again until it
    answers, and then the trouble is gone without anything being sent."""
    port = free_port()
    away = wa.bridge.env() | {"CLAWDEN_WHATSAPP_GRAPH_URL": f"http://127.0.0.1:{port}/v21.0"}
    assert wa.bridge.stop() == 0
    wa.bridge.start(env=away)
    said = await trouble(wa)
    assert said.startswith("cannot reach WhatsApp since ") and "(connection refused)" in said, said

    graph = FakeGraph(token=wa.graph.token)
    ThreadedServer._serve_in_thread(graph, "127.0.0.1", port, "fake-graph-late")  # type: ignore[arg-type]
    try:

        async def clear() -> bool:
            return await trouble(wa) == ""

        await eventually(clear, 60, wa.bridge.output)
    finally:
        graph.stop_thread()


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (
            whatsapp_bridge.graph_error(401, {"error": {"message": "Invalid OAuth access token", "code": 190}}, None),
            "WhatsApp refuses the bridge's credentials since 21:14 (WhatsApp: Invalid OAuth access token: the token in "
            "keys/whatsapp is invalid or expired); nothing comes in or goes out until they are mended: "
            + whatsapp_bridge.WHATSAPP_FIX,
        ),
        (
            whatsapp_bridge.graph_error(400, {"error": {"message": "Rate limit hit", "code": 130429}}, "3"),
            "WhatsApp is holding the bridge back since 21:14 (it asks the bridge to wait 3s); messages wait and go "
            "through once it answers",
        ),
        (
            whatsapp_bridge.graph_error(500, {"error": {"message": "Service unavailable", "code": 131000}}, None),
            "cannot reach WhatsApp since 21:14 (it answers WhatsApp: Service unavailable); messages wait and go "
            "through once it answers",
        ),
        (
            PlatformError("WhatsApp unreachable", "transient", connection=True),
            "cannot reach WhatsApp since 21:14 (no connection); messages wait and go through once it answers",
        ),
    ],
)
def test_a_graph_failure_that_is_whatsapps_is_said_in_its_terms(exc: PlatformError, said: str) -> None:
    trouble = whatsapp_bridge.graph_trouble(exc)
    assert trouble is not None and line("WhatsApp", trouble, AT, AT) == said


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 131047), (400, 131056), (400, 100)],  # the window closed, one person's pair limit, a bad request
)
def test_a_graph_answer_about_the_call_alone_is_no_trouble(status: int, code: int) -> None:
    assert whatsapp_bridge.graph_trouble(whatsapp_bridge.graph_error(status, {"error": {"code": code}}, None)) is None
