"""`clawden doctor` and `clawden channels login` for the email channel: they log in to IMAP and to SMTP, on the real
Postfix + Dovecot, the way the bridge would, and say which login failed and where the password goes."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from clawden import config as config_mod
from clawden import setup
from clawden.cli.doctor import Probe, channel_check, configured_channels
from tests.channels.email_harness import unique
from tests.ops.conftest import fresh_home
from tests.servers.mail.fixture import MailServer


def settings(server: MailServer, address: str, **more: str) -> dict[str, str]:
    values = {
        "address": address,
        "imap_host": server.host,
        "imap_port": str(server.imap_port),
        "imap_security": "none",
        "smtp_port": str(server.smtp_port),
        "smtp_security": "none",
    } | more
    return {f"CLAWDEN_EMAIL_{k.upper()}": v for k, v in values.items()}


async def test_the_imap_and_smtp_logins_are_checked_where_the_bridge_would_log_in(
    tmp_path: Path, mail_server: MailServer
) -> None:
    cfg = fresh_home(tmp_path / "home")
    address = unique("assistant")
    env = settings(mail_server, address) | {"CLAWDEN_EMAIL_TOKEN": mail_server.password}
    assert "email" in configured_channels(cfg, env) and "email" not in configured_channels(cfg, {})

    result = await channel_check("email")(Probe(cfg, env))

    assert result.status == "ok", result
    assert f"{address}: IMAP 127.0.0.1:{mail_server.imap_port} (INBOX, 0 mails)" in result.detail
    assert f"SMTP 127.0.0.1:{mail_server.smtp_port} (none) logins accepted" in result.detail


async def test_a_wrong_password_fails_with_where_to_put_the_right_one(tmp_path: Path, mail_server: MailServer) -> None:
    cfg = fresh_home(tmp_path / "home")
    (cfg.keys_dir / "email").write_text("not-the-password\n")
    (cfg.keys_dir / "email").chmod(0o600)

    result = await channel_check("email")(Probe(cfg, settings(mail_server, unique("assistant"))))

    assert result.status == "FAIL" and result.detail.startswith("email rejected the token (401 IMAP login as")
    assert str(cfg.keys_dir / "email") in result.fix


async def test_an_unreachable_server_is_not_mistaken_for_a_wrong_password(
    tmp_path: Path, mail_server: MailServer
) -> None:
    cfg = fresh_home(tmp_path / "home")
    env = settings(mail_server, unique("assistant"), imap_port="1") | {"CLAWDEN_EMAIL_TOKEN": mail_server.password}

    result = await channel_check("email")(Probe(cfg, env))

    assert result.status == "FAIL" and result.detail.startswith("could not ask email")


def login(home: Path, server: MailServer, address: str, password: str) -> subprocess.CompletedProcess[str]:
    """`clawden channels login email` as the owner types it, the test server's ports and certificate given the
    way any setting can be (`CLAWDEN_EMAIL_<KEY>`)."""
    env = dict(
        os.environ,
        CLAWDEN_HOME=str(home),
        CLAWDEN_EMAIL_IMAP_PORT=str(server.imaps_port),
        CLAWDEN_EMAIL_SMTP_PORT=str(server.smtp_port),
        CLAWDEN_EMAIL_CA_FILE=str(server.ca_file),
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "clawden",
            "channels",
            "login",
            "email",
            "--server",
            server.host,
            "--user",
            address,
            "--password-stdin",
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.process
async def test_login_checks_both_logins_then_keeps_the_password_0600_and_the_settings(
    tmp_path: Path, mail_server: MailServer
) -> None:
    cfg = setup.init(tmp_path / "home")
    address = unique("assistant")
    refused = login(cfg.home_path, mail_server, address, "wrong")
    assert refused.returncode == 1 and "IMAP login as" in refused.stderr and "refused" in refused.stderr
    assert not (cfg.keys_dir / "email").exists()

    done = login(cfg.home_path, mail_server, address, mail_server.password)
    assert done.returncode == 0, done.stderr
    key = cfg.keys_dir / "email"
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_text() == mail_server.password + "\n"
    table = tomllib.loads(cfg.path("config.toml").read_text())["channels"]["email"]
    assert table == {
        "address": address,
        "imap_host": "127.0.0.1",
        "imap_port": mail_server.imaps_port,
        "smtp_port": mail_server.smtp_port,
        "ca_file": str(mail_server.ca_file),
    }
    result = await channel_check("email")(Probe(config_mod.load(cfg.home_path), {}))  # config.toml alone now
    assert result.status == "ok" and "(starttls) logins accepted" in result.detail, result
