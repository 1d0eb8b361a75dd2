"""`[vault] max_tokenless_connections` and `tokenless_timeout`: the bounds on the TCP listener's connections that have
not shown a proxy token, checked when config.toml loads, and applied by `clawden run vault` on a real NATS, whose
bursts of drops `clawden audit` lists under `tcp:no-token`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clawden import config as config_mod
from clawden import natsserver, setup
from services.vault.gateway import MAX_UNAUTHENTICATED, TOKENLESS, UNAUTHENTICATED_TIMEOUT
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.vault.sites import FakeUpstream
from tests.vault.test_service import Vault, short_home, spawn_vault
from tests.vault.test_tcp_service import answers
from tests.vault.test_unauthenticated import closed_by_gateway

__all__ = ["short_home"]  # the fixture, used here
pytestmark = pytest.mark.timeout(60)


def load(tmp_path: Path, vault_section: str) -> config_mod.Config:
    (tmp_path / "config.toml").write_text(f"[vault]\n{vault_section}\n")
    return config_mod.load(tmp_path, environ={})


def test_by_default_the_tokenless_pool_is_as_the_gateway_bounds_it(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert (
        (cfg.vault.max_tokenless_connections, cfg.vault.tokenless_timeout)
        == (
            MAX_UNAUTHENTICATED,
            UNAUTHENTICATED_TIMEOUT,
        )
        == (256, 15.0)
    )
    cfg = load(tmp_path, "max_tokenless_connections = 1\ntokenless_timeout = 0.5")
    assert (cfg.vault.max_tokenless_connections, cfg.vault.tokenless_timeout) == (1, 0.5)


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("max_tokenless_connections = 0", "vault.max_tokenless_connections = 0: Expected `int` >= 1"),
        ("max_tokenless_connections = 5000", "vault.max_tokenless_connections = 5000: Expected `int` <= 4096"),
        (
            "max_tokenless_connections = 2.5",
            "vault.max_tokenless_connections = 2.5: expected a whole number, not a fraction",
        ),
        ("tokenless_timeout = 0", "vault.tokenless_timeout = 0: Expected `float` > 0.0"),
        ("tokenless_timeout = -1", "vault.tokenless_timeout = -1: Expected `float` > 0.0"),
        ("tokenless_timeout = nan", "vault.tokenless_timeout = nan: Expected `float` > 0.0"),
        ("tokenless_timeout = inf", "vault.tokenless_timeout = inf: Expected `float` <= 300.0"),
        (
            'tokenless_timeout = "soon"',
            "vault.tokenless_timeout = 'soon': expected a number of seconds, written without quotes or a unit"
            " (e.g. 90 or 1.5), not text",
        ),
    ],
)
def test_a_bad_tokenless_setting_is_refused_naming_it(tmp_path: Path, setting: str, said: str) -> None:
    with pytest.raises(config_mod.ConfigError) as refused:
        load(tmp_path, setting)
    assert str(refused.value) == f"{tmp_path / 'config.toml'}: {said}"


@pytest.fixture
async def vault(nats_server: NatsServer, short_home: Path) -> AsyncIterator[tuple[Vault, int]]:
    """`clawden run vault` with a TCP listener that keeps 2 tokenless connections, each for a minute."""
    site = await FakeUpstream().start(None)
    home = short_home / "home"
    cfg = setup.init(home)
    port = natsserver.free_port()
    cfg.path("config.toml").write_text(f"""\
install_id = "vtok"
[nats]
url = "{nats_server.url}"
[vault]
tcp_listen = "127.0.0.1:{port}"
max_tokenless_connections = 2
tokenless_timeout = 60
""")
    log = short_home / "vault.log"
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    env.pop("ANTHROPIC_API_KEY", None)
    v = Vault(home, config_mod.load(home), spawn_vault(env, log), log, site)
    try:
        await eventually(lambda: answers(v), timeout=30, message=v.logs)
        yield v, port
    finally:
        v.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(v.proc.wait, 20)
        await site.close()


async def test_the_vault_keeps_as_many_tokenless_connections_as_configured_and_audits_the_drops(
    vault: tuple[Vault, int],
) -> None:
    v, port = vault
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        first_dropped = await closed_by_gateway(silent[0][0])  # the third made room: the oldest went
    finally:
        for _, writer in silent:
            writer.close()

    async def listed() -> str | None:  # once the pool is back to half its cap, and the audit written
        shown = (await v.cli("audit", "--agent", TOKENLESS)).stdout
        return shown if TOKENLESS in shown else None

    shown = await eventually(listed, timeout=20, message=v.logs)
    (record,) = json.loads((await v.cli("audit", "--agent", TOKENLESS, "--json")).stdout)

    assert first_dropped
    assert "tcp:no-token" in shown and "too_many_tokenless" in shown, shown
    assert (record["agent_group"], record["decision"], record["status"], record["count"]) == (
        TOKENLESS,
        "too_many_tokenless",
        0,
        1,
    )
    assert "no audited requests match" in (await v.cli("audit", "--agent", "main")).stdout  # no group's records
