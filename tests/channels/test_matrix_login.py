"""`clawden channels login matrix` against the real Synapse: a password once, only the token and device id
kept (mode 0600); `clawden doctor` asks the homeserver who that token is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clawden import config as config_mod
from clawden import setup
from clawden.cli.doctor import Probe, channel_check, configured_channels
from tests.servers.synapse.fixture import Synapse

pytestmark = pytest.mark.process


def login(home: Path, synapse: Synapse, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "clawden",
            "channels",
            "login",
            "matrix",
            "--homeserver",
            synapse.url,
            "--user",
            user,
            "--password-stdin",
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, CLAWDEN_HOME=str(home)),
        check=False,
    )


async def test_login_keeps_only_the_token_and_device_id_and_doctor_accepts_them(
    tmp_path: Path, synapse: Synapse
) -> None:
    cfg = setup.init(tmp_path / "home")
    bot = synapse.register("Bot")
    done = login(cfg.home_path, synapse, bot.user_id, bot.password)
    assert done.returncode == 0, done.stderr
    key = cfg.keys_dir / "matrix"
    assert key.stat().st_mode & 0o777 == 0o600
    stored = json.loads(key.read_text())
    assert set(stored) == {"access_token", "device_id"} and bot.password not in key.read_text()
    cfg = config_mod.load(cfg.home_path)
    assert "matrix" in configured_channels(cfg, {})  # config.toml now names the homeserver

    result = await channel_check("matrix")(Probe(cfg, {}))
    assert result.status == "ok", result
    assert result.detail == f"token accepted: {bot.user_id} (device {stored['device_id']})"


async def test_a_wrong_password_stores_nothing_and_a_revoked_token_fails_the_doctor_row(
    tmp_path: Path, synapse: Synapse
) -> None:
    cfg = setup.init(tmp_path / "home")
    bot = synapse.register("Bot")
    refused = login(cfg.home_path, synapse, bot.user_id, "not-the-password")
    assert refused.returncode == 1 and "M_FORBIDDEN" in refused.stderr and "Traceback" not in refused.stderr
    assert not (cfg.keys_dir / "matrix").exists()

    env = {"CLAWDEN_MATRIX_TOKEN": "syt_revoked_0000000000", "CLAWDEN_MATRIX_HOMESERVER": synapse.url}
    result = await channel_check("matrix")(Probe(cfg, env))
    assert result.status == "FAIL" and result.detail.startswith("matrix rejected the token (401")
    assert "clawden channels login matrix" in result.fix
