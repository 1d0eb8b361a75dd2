"""WhatsApp as it runs: the fake Graph API (in a thread) posting signed webhooks to the real front door
process, and the real bridge process (`clawden run channel@whatsapp`) reading them from JetStream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawden.bus import connect, ensure_streams, publish, subjects
from clawden.bus import events as ev
from tests.channels.harness import Bus, ChannelProcess
from tests.fakes.whatsapp import PHONE_NUMBER_ID, FakeGraph
from tests.webhooks.harness import FrontDoorProcess, make_home


class WhatsAppProcess(ChannelProcess):
    channel = "whatsapp"

    def __init__(self, home: Path, nats_url: str, graph: FakeGraph, **settings: str) -> None:
        self.graph = graph
        super().__init__(home, nats_url, **settings)

    def credentials(self) -> dict[str, str]:
        return {
            "CLAWDEN_WHATSAPP_TOKEN": self.graph.token,
            "CLAWDEN_WHATSAPP_GRAPH_URL": f"{self.graph.url}/v21.0",
            "CLAWDEN_WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        }


class WhatsAppBus(Bus):
    async def send_to(
        self,
        wa_id: str,
        text: str,
        *,
        id: str,
        card: ev.Card | None = None,
        reply_to: str | None = None,
        files: tuple[str, ...] = (),
        seq: int = 0,
        session_id: str = "",
    ) -> ev.OutboundMessage:
        event = ev.OutboundMessage(
            id=id,
            route=ev.Route(channel="whatsapp", chat_id=wa_id),
            text=text,
            card=card,
            reply_to=reply_to,
            files=files,
            seq=seq,
            session_id=session_id,
        )
        await publish(self.js, subjects.outbound("whatsapp", wa_id), event, msg_id=event.id)
        return event

    async def inbound(self) -> list[Any]:
        return [e for _, e in await self.stored(subjects.inbound("whatsapp"))]

    async def receipts(self) -> list[ev.DeliveryReceipt]:
        return [e for _, e in await self.stored(subjects.receipt("whatsapp"))]


@dataclass
class WhatsApp:
    graph: FakeGraph
    door: FrontDoorProcess
    bridge: WhatsAppProcess
    bus: WhatsAppBus
    home: Path


@asynccontextmanager
async def whatsapp(tmp_path: Path, nats_url: str, door_settings: str = "", **settings: str) -> AsyncIterator[WhatsApp]:
    home = tmp_path / "home"
    port = make_home(home, settings=door_settings)
    door = FrontDoorProcess(home, nats_url, port, tmp_path / "webhooks.log")
    graph = FakeGraph(door.sender()).start_in_thread()
    bridge: WhatsAppProcess | None = None
    bus = WhatsAppBus(await connect(nats_url, "test-bus"))
    await ensure_streams(bus.js)
    try:
        await door.start()
        bridge = WhatsAppProcess(home, nats_url, graph, **settings).start()
        yield WhatsApp(graph, door, bridge, bus, home)
    finally:
        await bus.close()
        if bridge is not None:
            bridge.close()
        door.stop()
        graph.stop_thread()
