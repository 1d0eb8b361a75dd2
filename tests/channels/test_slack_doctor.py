"""`clawden doctor` for Slack: auth.test with the bot token and apps.connections.open with the app-level token,
against the fake Slack; a token Slack rejects is said to be rejected, with where the right one goes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clawden.cli.doctor import Probe, channel_check
from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.ops.conftest import fresh_home


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack().start()
    yield fake
    await fake.stop()


async def test_both_tokens_are_checked_where_the_bridge_would_use_them(tmp_path: Path, slack: FakeSlack) -> None:
    cfg = fresh_home(tmp_path / "home")
    (cfg.keys_dir / "slack").write_text(f"{BOT_TOKEN}\n{APP_TOKEN}\n")
    (cfg.keys_dir / "slack").chmod(0o600)

    result = await channel_check("slack")(Probe(cfg, {"CLAWDEN_SLACK_API_URL": slack.url}))

    assert result.status == "ok", result
    assert result.detail == "token accepted: clawden (U0BOT) in Clawden Test; Socket Mode open"
    assert [c.method for c in slack.calls] == ["auth.test", "apps.connections.open"]


async def test_a_rejected_token_fails_with_where_the_right_one_goes(tmp_path: Path, slack: FakeSlack) -> None:
    cfg = fresh_home(tmp_path / "home")
    env = {"CLAWDEN_SLACK_API_URL": slack.url, "CLAWDEN_SLACK_TOKEN": f"xoxb-revoked-0000 {APP_TOKEN}"}

    result = await channel_check("slack")(Probe(cfg, env))

    assert result.status == "FAIL" and result.detail.startswith("slack rejected the token (401 auth.test: invalid_auth")
    assert "CLAWDEN_SLACK_TOKEN" in result.fix


async def test_a_credential_without_the_app_token_says_both_are_needed(tmp_path: Path, slack: FakeSlack) -> None:
    cfg = fresh_home(tmp_path / "home")
    env = {"CLAWDEN_SLACK_API_URL": slack.url, "CLAWDEN_SLACK_TOKEN": BOT_TOKEN}

    result = await channel_check("slack")(Probe(cfg, env))

    assert result.status == "FAIL" and "app-level token (xapp-" in result.detail
    assert slack.calls == []
