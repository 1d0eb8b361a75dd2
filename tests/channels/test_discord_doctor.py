"""`clawden doctor` for Discord: GET /users/@me with the bot token, against the fake Discord; a token Discord
rejects is said to be rejected, with where the right one goes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clawden.cli.doctor import Probe, channel_check
from tests.fakes.discord import BOT_ID, TOKEN, FakeDiscord
from tests.ops.conftest import fresh_home


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    fake = await FakeDiscord().start()
    yield fake
    await fake.stop()


async def test_the_token_is_checked_where_the_bridge_would_use_it(tmp_path: Path, discord: FakeDiscord) -> None:
    cfg = fresh_home(tmp_path / "home")
    (cfg.keys_dir / "discord").write_text(f"{TOKEN}\n")
    (cfg.keys_dir / "discord").chmod(0o600)

    result = await channel_check("discord")(Probe(cfg, {"CLAWDEN_DISCORD_API_URL": discord.url}))

    assert result.status == "ok", result
    assert result.detail == f"token accepted: clawden ({BOT_ID})"
    assert [(c.method, c.path) for c in discord.calls] == [("GET", "/api/v10/users/@me")]


async def test_a_rejected_token_fails_with_where_the_right_one_goes(tmp_path: Path, discord: FakeDiscord) -> None:
    cfg = fresh_home(tmp_path / "home")
    env = {"CLAWDEN_DISCORD_API_URL": discord.url, "CLAWDEN_DISCORD_TOKEN": "MTAx.revoked.000000000000000"}

    result = await channel_check("discord")(Probe(cfg, env))

    assert result.status == "FAIL" and result.detail.startswith("discord rejected the token (401 GET /users/@me")
    assert "CLAWDEN_DISCORD_TOKEN" in result.fix
