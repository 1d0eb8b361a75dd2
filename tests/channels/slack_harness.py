"""The real Slack bridge process (`clawden run channel@slack`) against the fake Slack, and a bus client for the
`slack` channel's subjects (the Telegram harness's Bus, pointed at another channel)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from clawden.bus import events as ev
from clawden.bus import publish, subjects
from tests.channels.harness import Bus, ChannelProcess, OutboundEvent, wait_for
from tests.fakes.slack import FakeSlack


class SlackBridge(ChannelProcess):
    """The Slack bridge against the fake Slack; start() also waits until it has its socket."""

    channel = "slack"

    def __init__(self, home: Path, nats_url: str, fake: FakeSlack, **settings: str) -> None:
        self.slack = fake
        super().__init__(home, nats_url, **settings)

    def credentials(self) -> dict[str, str]:
        return {"CLAWDEN_SLACK_TOKEN": self.slack.token, "CLAWDEN_SLACK_API_URL": self.slack.url}

    def start(self, *, wait: bool = True, env: dict[str, str] | None = None) -> Self:
        connections = self.slack.connections
        super().start(wait=wait, env=env)
        if wait:
            wait_for(lambda: self.slack.connections > connections, 30, lambda: f"no socket:\n{self.output()}")
        return self


class SlackBus(Bus):
    async def send(
        self,
        chat_id: int | str,
        text: str,
        *,
        id: str,
        card: ev.Card | None = None,
        reply_to: str | None = None,
        files: tuple[str, ...] = (),
        thread_id: str | None = None,
        seq: int = 0,
        session_id: str = "",
    ) -> ev.OutboundMessage:
        event = ev.OutboundMessage(
            id=id,
            route=ev.Route(channel="slack", chat_id=str(chat_id), thread_id=thread_id),
            text=text,
            card=card,
            reply_to=reply_to,
            files=files,
            seq=seq,
            session_id=session_id,
        )
        await publish(self.js, subjects.outbound("slack", str(chat_id)), event, msg_id=event.id)
        return event

    async def publish(self, event: OutboundEvent, msg_id: str) -> None:
        await publish(self.js, subjects.outbound("slack", event.route.chat_id), event, msg_id=msg_id)

    async def inbound(self) -> list[object]:
        return [e for _, e in await self.stored(subjects.inbound("slack"))]

    async def receipts(self) -> list[ev.DeliveryReceipt]:
        return [e for _, e in await self.stored(subjects.receipt("slack"))]
