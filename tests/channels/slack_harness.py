"""The real Slack bridge process (`clawden run channel@slack`) against the fake Slack, and a bus client for the
`slack` channel's subjects (the Telegram harness's Bus, pointed at another channel)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from tests.channels.harness import Bus, ChannelProcess, wait_for
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
    """The bus side of a test, on the Slack bridge's subjects."""

    channel = "slack"
