"""The vault service's TCP listener for runners with `vault_transport = "tcp"`: `clawden run vault` on a real
NATS server; a container's token registered by its sha256 (`container-token`), replaced when the container is
made again, kept across a restart, and granted to the runner's identity alone."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from clawden import config as config_mod
from clawden import control, natsauth, natsserver, setup
from clawden.bus.ctl import vault as vault_ctl
from clawden.owner import connect_cli
from clawden.vaultfiles import VAULT_DB, vault_dir
from services.runner.vaultroute import new_token
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.anthropic import make_tls
from tests.vault.sites import FakeUpstream, load_relay
from tests.vault.test_service import Vault, restart, short_home, spawn_vault

__all__ = ["short_home"]  # the fixture, used here
pytestmark = pytest.mark.timeout(60)
relay = load_relay()
SECRET = "ghp_tcp-service-secret-0123456789"


async def answers(v: Vault) -> bool:
    try:
        await v.ask(vault_ctl.AUDIT, vault_ctl.AuditQuery(limit=1))
    except control.ControlError:
        assert v.proc.poll() is None, v.logs()
        return False
    return True


@pytest.fixture
async def vault(nats_server: NatsServer, short_home: Path) -> AsyncIterator[Vault]:
    tls = make_tls(["api.example.test", "api.anthropic.com"], str(short_home))
    site = await FakeUpstream().start(tls.server_context)
    home = short_home / "home"
    cfg = setup.init(home)
    port = natsserver.free_port()
    cfg.path("config.toml").write_text(f"""\
install_id = "vtcp"
[nats]
url = "{nats_server.url}"
[vault]
extra_ca_file = "{tls.ca_file}"
host_map = {{"api.example.test" = "{site.address}", "api.anthropic.com" = "{site.address}"}}
tcp_listen = "127.0.0.1:{port}"
""")
    cfg = config_mod.load(home)
    log = short_home / "vault.log"
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    env.pop("ANTHROPIC_API_KEY", None)
    v = Vault(home, cfg, spawn_vault(env, log), log, site)
    try:
        await eventually(lambda: answers(v), timeout=30, message=v.logs)
        await v.ask(
            vault_ctl.SECRETS_ADD,
            vault_ctl.AddSecret(
                name="gh",
                type="generic",
                value=SECRET,
                host="api.example.test",
                header="Authorization",
                agents=["main"],
            ),
        )
        yield v
    finally:
        v.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(v.proc.wait, 20)
        await site.close()


async def register(v: Vault, session: str, digest: str) -> vault_ctl.TcpGateway:
    """As the install's own runner registers it: at its own subject, for a session with no placement record."""
    request = vault_ctl.ContainerToken(agent_group="main", session_id=session, sha256=digest)
    nc = await connect_cli(v.cfg, 5)
    try:
        at = vault_ctl.container_token_at(v.cfg.runner.id)
        return await control.ask_on(nc, vault_ctl.CONTAINER_TOKEN, request, subject=at, timeout=10)
    finally:
        await nc.close()


async def fetch(
    v: Vault, reply: vault_ctl.TcpGateway, token: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    """One request as that container's agent makes it: through a relay in tcp mode holding `token`."""
    token_file = folder / "token"
    token_file.write_text(token)
    monkeypatch.setenv(relay.TOKEN_FILE_ENV, str(token_file))
    server = await relay.serve_relay(f"tcp://127.0.0.1:{reply.port}", hide=False)
    context = ssl.create_default_context(cafile=str(Path(reply.trust_dir) / "clawden-ca.pem"))
    try:
        async with httpx.AsyncClient(
            proxy=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", verify=context, trust_env=False, timeout=10
        ) as http:
            try:
                return (await http.get("https://api.example.test/user")).status_code
            except httpx.ProxyError as exc:
                assert "407" in str(exc)
                return 407
    finally:
        server.close()
        await server.wait_closed()


async def test_a_registered_token_gets_the_groups_secret_until_its_container_is_made_again(
    vault: Vault, short_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, first_digest = new_token()
    reply = await register(vault, "s1", first_digest)
    assert await fetch(vault, reply, first, short_home, monkeypatch) == 200
    await restart(vault)  # only the hash is kept (in vault.db), and it still names the group
    assert await fetch(vault, reply, first, short_home, monkeypatch) == 200
    second, second_digest = new_token()
    await register(vault, "s1", second_digest)  # the session's container made again: a new token
    stale = await fetch(vault, reply, first, short_home, monkeypatch)
    fresh = await fetch(vault, reply, second, short_home, monkeypatch)
    await register(vault, "s1", "")  # withdrawn
    withdrawn = await fetch(vault, reply, second, short_home, monkeypatch)

    assert (stale, fresh, withdrawn) == (407, 200, 407)
    got = [r.header(b"authorization") for r in vault.site.received]
    assert got == [SECRET.encode()] * 3
    assert first not in vault.logs() and second not in vault.logs()
    stored = (vault_dir(vault.cfg) / VAULT_DB).read_bytes()
    assert first.encode() not in stored and second.encode() not in stored  # only sha256es were ever sent


async def test_a_registration_that_is_not_a_sha256_is_refused(vault: Vault) -> None:
    assert "bad request" in await vault.refusal(
        "container-token", b'{"agent_group": "main", "session_id": "s1", "sha256": "clt_the-raw-token"}'
    )
    assert "bad request" in await vault.refusal(
        "container-token", b'{"agent_group": "../x", "session_id": "s1", "sha256": ""}'
    )


def test_only_the_runner_may_register_container_tokens_each_at_its_own_subject(tmp_path: Path) -> None:
    cfg = setup.init(tmp_path / "home")
    table = natsauth.grants(cfg, ("telegram",), ("b",))
    shared = vault_ctl.CONTAINER_TOKEN.subject
    callers = {
        name: [s for s in natsauth.permissions(name, grant)["publish"]["allow"] if s.startswith(shared)]
        for name, grant in table.items()
    }
    assert {name: said for name, said in callers.items() if said} == {
        "runner": [vault_ctl.container_token_at(cfg.runner.id)],
        "runner-b": [vault_ctl.container_token_at("b")],
    }
