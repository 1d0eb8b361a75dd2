"""The real Slack bridge process (`clawden run channel@slack`) against the fake Slack, and a bus client for the
`slack` channel's subjects (the Telegram harness's Bus, pointed at another channel)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from clawden import setup
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from tests.channels.harness import Bus, OutboundEvent, wait_for
from tests.fakes.slack import FakeSlack


class SlackBridge:
    """One Slack bridge process; start() waits until it is READY (systemd notify) and has its socket."""

    def __init__(self, home: Path, nats_url: str, fake: FakeSlack, **settings: str) -> None:
        self.home = home
        self.nats_url = nats_url
        self.slack = fake
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "logs" / "slack-bridge.log"
        self._mark = 0
        setup.init(home)

    def env(self) -> dict[str, str]:
        env = dict(os.environ, CLAWDEN_HOME=str(self.home), CLAWDEN_NATS_URL=self.nats_url,
                   CLAWDEN_SLACK_TOKEN=self.slack.token, CLAWDEN_SLACK_API_URL=self.slack.url)
        env.update({f"CLAWDEN_SLACK_{k.upper()}": v for k, v in self.settings.items()})
        env.pop("NOTIFY_SOCKET", None)
        return env

    def start(self) -> SlackBridge:
        connections = self.slack.connections
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "clawden", "run", "channel@slack"],
                                         env=self.env(), stdout=out, stderr=out, start_new_session=True)
        wait_for(lambda: "channel@slack ready" in self.output()[self._mark:], 30,
                 lambda: f"the bridge did not get ready:\n{self.output()}")
        wait_for(lambda: self.slack.connections > connections, 30, lambda: f"no socket:\n{self.output()}")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._mark = len(self.output())
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SlackBus(Bus):
    async def send(self, chat_id: int | str, text: str, *, id: str, card: ev.Card | None = None,
                   reply_to: str | None = None, files: tuple[str, ...] = (), thread_id: str | None = None,
                   seq: int = 0, session_id: str = "") -> ev.OutboundMessage:
        event = ev.OutboundMessage(id=id, route=ev.Route(channel="slack", chat_id=str(chat_id), thread_id=thread_id),
                                   text=text, card=card, reply_to=reply_to, files=files, seq=seq, session_id=session_id)
        await publish(self.js, subjects.outbound("slack", str(chat_id)), event, msg_id=event.id)
        return event

    async def publish(self, event: OutboundEvent, msg_id: str, *, legacy: bool = False) -> None:
        await publish(self.js, subjects.outbound("slack", event.route.chat_id), event, msg_id=msg_id)

    async def inbound(self) -> list[object]:
        return [e for _, e in await self.stored(subjects.inbound("slack"))]

    async def receipts(self) -> list[ev.DeliveryReceipt]:
        return [e for _, e in await self.stored(subjects.receipt("slack"))]
