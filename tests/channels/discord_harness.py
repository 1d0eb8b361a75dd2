"""The real Discord bridge process (`clawden run channel@discord`) against the fake Discord, and a bus client for the
`discord` channel's subjects (the Telegram harness's, pointed at another channel)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from clawden import setup
from clawden.bus import events as ev
from tests.channels.harness import Bus, wait_for
from tests.fakes.discord import FakeDiscord


class DiscordBridge:
    """One bridge process; start() waits until it is READY (systemd notify) and has a Gateway session."""

    def __init__(self, home: Path, nats_url: str, fake: FakeDiscord, **settings: str) -> None:
        self.home = home
        self.nats_url = nats_url
        self.discord = fake
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "logs" / "discord-bridge.log"
        self._mark = 0
        setup.init(home)

    def env(self) -> dict[str, str]:
        env = dict(
            os.environ,
            CLAWDEN_HOME=str(self.home),
            CLAWDEN_NATS_URL=self.nats_url,
            CLAWDEN_DISCORD_TOKEN=self.discord.token,
            CLAWDEN_DISCORD_API_URL=self.discord.url,
            CLAWDEN_DISCORD_GATEWAY_URL=self.discord.gateway_url,
        )
        env.update({f"CLAWDEN_DISCORD_{k.upper()}": v for k, v in self.settings.items()})
        env.pop("NOTIFY_SOCKET", None)
        return env

    def start(self, *, session_timeout: float = 30) -> DiscordBridge:
        sessions = len(self.discord.identifies) + len(self.discord.resumes)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clawden", "run", "channel@discord"],
                env=self.env(),
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        wait_for(
            lambda: "channel@discord ready" in self.output()[self._mark :],
            30,
            lambda: f"the bridge did not get ready:\n{self.output()}",
        )
        wait_for(
            lambda: len(self.discord.identifies) + len(self.discord.resumes) > sessions,
            session_timeout,
            lambda: f"no Gateway session:\n{self.output()}",
        )
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


class DiscordBus(Bus):
    """The bus side of a test, on the Discord bridge's subjects."""

    channel = "discord"

    async def messages(self, count: int, timeout: float = 20) -> list[ev.InboundMessage]:
        """Waits for at least `count` inbound messages; returns every one stored."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in await self.inbound() if isinstance(e, ev.InboundMessage)]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{len(found)} of {count} inbound messages: {found[-3:]}"
            await asyncio.sleep(0.1)
