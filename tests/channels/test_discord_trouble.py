"""What the Discord bridge says is wrong (its ping's `trouble`, which `clawden status` shows as degraded) when its
listener cannot get through, in Discord's terms: a token refused (close 4004) with the owner's fix, held back by a 429,
or unreachable; and that it clears once the Gateway is heard again. The bridge runs as a process against the fake
Discord, with real NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import nats
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from clawden.bus.ctl import Nothing
from clawden.bus.ctl.common import PING
from clawden.cli import status
from services.channels import discord as discord_bridge
from services.channels.reach import Trouble, line
from tests.channels.discord_harness import DiscordBridge
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.discord import Error, FakeDiscord

AT = time.mktime((2026, 12, 6, 21, 14, 0, 0, 0, -1))  # the lines' "since": 21:14 local time


@pytest.fixture
def discord() -> Iterator[FakeDiscord]:
    fake = FakeDiscord().start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture
def bridge(tmp_path: Path, nats_server: NatsServer, discord: FakeDiscord) -> Iterator[DiscordBridge]:
    b = DiscordBridge(tmp_path / "home", nats_server.url, discord)
    yield b
    b.close()


async def trouble(nats_server: NatsServer) -> str:
    nc = await nats.connect(nats_server.url)
    try:
        return (await status.ask(nc, PING.at("channel-discord"), Nothing())).trouble
    finally:
        await nc.close()


def said(trouble: Trouble) -> str:
    return line("Discord", trouble, AT, AT)


async def test_a_token_discord_stops_taking_is_said_refused_with_the_fix_not_unreachable(
    discord: FakeDiscord, bridge: DiscordBridge, nats_server: NatsServer
) -> None:
    """The token reset in the developer portal while the bridge runs: its next resume is closed with 4004, and
    `clawden status` says Discord refuses the credentials and how the owner mends them."""
    await asyncio.to_thread(bridge.start)
    assert await trouble(nats_server) == ""
    discord.token = "MTAxRevokedAndReset.ForTests.Only"
    discord.drop_socket()

    async def refused() -> str | None:
        now = await trouble(nats_server)
        return now if now.startswith("Discord refuses") else None

    now = await eventually(refused, 30, bridge.output)
    assert "(Discord closed the Gateway with 4004: the token was refused)" in now
    assert now.endswith("nothing comes in or goes out until they are mended: " + discord_bridge.DISCORD_FIX)


async def test_a_discord_that_answers_5xx_then_holds_the_bridge_back_is_said_so_until_the_gateway_is_heard(
    discord: FakeDiscord, bridge: DiscordBridge, nats_server: NatsServer
) -> None:
    """Who the bot is cannot be asked at start (502): the bridge starts degraded; its listener's next ask is held back
    by a 429, which it says as such, waits out, and once the Gateway is heard the trouble is gone."""
    discord.inject("me", Error(502), Error(429, retry_after=4.0))
    starting = asyncio.create_task(asyncio.to_thread(bridge.start))

    async def held_back() -> str | None:
        now = await trouble(nats_server) if bridge.proc is not None and "ready" in bridge.output() else ""
        return now if now.startswith("Discord is holding the bridge back") else None

    now = await eventually(held_back, 30, bridge.output)
    assert "(it asks the bridge to wait 4s)" in now and now.endswith("messages wait and go through once it answers")
    await starting  # the Gateway session came

    async def clear() -> bool:
        return await trouble(nats_server) == ""

    await eventually(clear, 30, bridge.output)
    assert [c.outcome for c in discord.calls_to("me")] == [502, 429, 200]


def test_every_fatal_close_says_what_discord_refuses_and_4004_is_the_token_with_its_fix() -> None:
    token = said(discord_bridge.refused_trouble("Discord", discord_bridge.Refused(4004)))
    assert token == (
        "Discord refuses the bridge's credentials since 21:14 (Discord closed the Gateway with 4004: the token was "
        "refused); nothing comes in or goes out until they are mended: " + discord_bridge.DISCORD_FIX
    )
    intent = said(discord_bridge.refused_trouble("Discord", discord_bridge.Refused(4014)))
    assert intent.startswith("Discord refuses the bridge's Gateway session since 21:14 (Discord closed the Gateway")
    assert "switch on Message Content in the developer portal" in intent and "every 10 minutes" in intent


def handshake(status: int, **headers: str) -> aiohttp.WSServerHandshakeError:
    info = aiohttp.RequestInfo(URL("wss://gateway.invalid/"), "GET", CIMultiDictProxy(CIMultiDict()))
    return aiohttp.WSServerHandshakeError(info, (), status=status, headers=CIMultiDictProxy(CIMultiDict(headers)))


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (
            handshake(429, **{"Retry-After": "7"}),
            "Discord is holding the bridge back since 21:14 (it asks the bridge to wait 7s)",
        ),
        (handshake(401), "Discord refuses the bridge's credentials since 21:14 (the Gateway: HTTP 401 (code -))"),
        (handshake(502), "cannot reach Discord since 21:14 (it answers the Gateway: HTTP 502 (code -))"),
        (ConnectionRefusedError(111, "refused"), "cannot reach Discord since 21:14 (connection refused)"),
    ],
)
def test_a_gateway_connection_that_fails_says_why_in_discords_terms(exc: BaseException, text: str) -> None:
    assert said(discord_bridge.gateway_trouble("Discord", exc)).startswith(text)
