"""The vault's HTTP API as a OneCLI client sees it: `clawden run vault` with `[vault] api_listen` on a real NATS
server, a key from `clawden api-keys create`, and plain httpx calls to the paths OneCLI documents."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest
from nats.aio.client import Client

from clawden import config as config_mod
from clawden import control, natsserver, setup
from clawden.bus import connect
from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as vault_ctl
from clawden.runtime import ConfigurationError
from services.vault.api import api_address
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.anthropic import make_tls
from tests.vault.sites import FakeUpstream

pytestmark = [pytest.mark.timeout(90), pytest.mark.nats, pytest.mark.process]

SITE = "api.example.test"
VALUE = "ghp_api-test-value-0123456789abcdef"


@dataclass
class Vault:
    home: Path
    cfg: config_mod.Config
    proc: subprocess.Popen[bytes]
    log: Path
    site: FakeUpstream
    url: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CLAWDEN_HOME=str(self.home))
        return subprocess.run(
            [sys.executable, "-m", "clawden", *args], env=env, capture_output=True, text=True, timeout=30
        )

    async def new_key(self, name: str) -> str:
        done = await asyncio.to_thread(self.cli, "api-keys", "create", name)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def client(self, key: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, trust_env=False)


def spawn_vault(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", "vault"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture
def short_home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="clawden-va-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
async def vault(nats_server: NatsServer, short_home: Path) -> AsyncIterator[Vault]:
    tls = make_tls([SITE], str(short_home))
    site = await FakeUpstream().start(tls.server_context)
    home = short_home / "home"
    setup.init(home)
    api_port, tcp_port = natsserver.free_port(), natsserver.free_port()
    (home / "config.toml").write_text(f"""\
install_id = "va"
[nats]
url = "{nats_server.url}"
[vault]
extra_ca_file = "{tls.ca_file}"
host_map = {{"{SITE}" = "{site.address}"}}
tcp_listen = "127.0.0.1:{tcp_port}"
api_listen = ":{api_port}"
""")
    cfg = config_mod.load(home)
    log = short_home / "vault.log"
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    env.pop("ANTHROPIC_API_KEY", None)
    proc = spawn_vault(env, log)
    v = Vault(home, cfg, proc, log, site, f"http://127.0.0.1:{api_port}")

    async def answers() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            await control.ask(cfg, vault_ctl.API_KEYS_LIST, Nothing(), timeout=2)
        except control.ControlError:
            return False
        return True

    try:
        await eventually(answers, timeout=30, message=lambda: log.read_text())
        yield v
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
        await site.close()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await connect(nats_server.url, "test-audit")
    yield nc
    await nc.close()


def test_api_listen_is_loopback_unless_an_address_is_written() -> None:
    assert api_address(":8792") == ("127.0.0.1", 8792)
    assert api_address("localhost:8792") == ("127.0.0.1", 8792)
    assert api_address("[::1]:8792") == ("::1", 8792)
    assert api_address("192.0.2.7:8792") == ("192.0.2.7", 8792)  # written out: the vault warns and serves
    with pytest.raises(ConfigurationError, match=r"api_listen.*not a name"):
        api_address("myhost:8792")
    with pytest.raises(ConfigurationError, match="api_listen"):
        api_address("8792")


async def test_a_onecli_client_sets_up_an_agent_and_its_request_carries_the_secret(vault: Vault) -> None:
    key = await vault.new_key("orchestrator")
    async with vault.client(key) as api:
        agent = await api.post("/v1/agents", json={"name": "Builder", "identifier": "builder"})
        assert agent.status_code == 201, agent.text
        assert agent.json()["identifier"] == "builder"
        secret = await api.post(
            "/v1/secrets",
            json={
                "name": "github",
                "type": "generic",
                "value": VALUE,
                "hostPattern": SITE,
                "injectionConfig": {"headerName": "Authorization", "valueFormat": "Bearer {value}"},
            },
        )
        assert secret.status_code == 201, secret.text
        rule = await api.post(
            "/v1/rules", json={"name": "no-deletes", "hostPattern": SITE, "method": "DELETE", "action": "block"}
        )
        assert rule.status_code == 201, rule.text
        assert [a["identifier"] for a in (await api.get("/v1/agents")).json()] == ["builder"]
        assert [s["name"] for s in (await api.get("/v1/secrets")).json()] == ["github"]
        assert [(r["name"], r["action"], r["method"]) for r in (await api.get("/v1/rules")).json()] == [
            ("no-deletes", "block", "DELETE")
        ]
        config = (await api.get("/v1/container-config", params={"agent": "builder"})).json()
        ca = (await api.get("/v1/gateway/ca")).text
    assert config["caCertificate"] == ca and "BEGIN CERTIFICATE" in ca
    env = config["env"]
    assert env["NODE_EXTRA_CA_CERTS"] == config["caCertificateContainerPath"]
    # What the orchestrator's container would do with that env: its HTTPS goes through the gateway.
    trust = ssl.create_default_context(cadata=config["caCertificate"])
    async with httpx.AsyncClient(proxy=env["HTTPS_PROXY"], verify=trust, trust_env=False, timeout=10) as agent_http:
        got = await agent_http.get(f"https://{SITE}/user")
        blocked = await agent_http.delete(f"https://{SITE}/repo")
    assert got.status_code == 200
    assert vault.site.received[-1].header(b"authorization") == f"Bearer {VALUE}".encode()
    assert blocked.status_code == 403 and blocked.json()["error"] == "blocked_by_policy"
    assert all(r.method != b"DELETE" for r in vault.site.received)


async def test_every_request_needs_a_live_key(vault: Vault) -> None:
    key = await vault.new_key("script")
    async with vault.client(None) as anonymous, vault.client("oc_" + "0" * 64) as forged, vault.client(key) as api:
        for client in (anonymous, forged):
            refused = await client.get("/v1/secrets")
            assert refused.status_code == 401
            assert refused.json()["error"] == "unauthorized"
        assert (await anonymous.post("/v1/agents", json={"name": "x", "identifier": "x"})).status_code == 401
        assert (await api.get("/v1/secrets")).status_code == 200
        revoked = await asyncio.to_thread(vault.cli, "api-keys", "revoke", "script")
        assert revoked.returncode == 0, revoked.stderr
        after = await api.get("/v1/secrets")
    assert after.status_code == 401 and after.json() == {
        "error": "unauthorized",
        "message": "invalid or revoked API key",
    }
    listed = await asyncio.to_thread(vault.cli, "api-keys", "list")
    assert "script" in listed.stdout and key not in listed.stdout
    assert key not in (vault.home / "data").joinpath("vault", "vault.db").read_bytes().decode("latin-1")


async def test_a_secret_value_is_in_no_response_and_changes_are_audited_by_key(vault: Vault, bus: Client) -> None:
    events: list[ev.AuditEvent] = []

    async def record(msg: object) -> None:
        events.append(msgspec.json.decode(msg.data, type=ev.AuditEvent))  # type: ignore[attr-defined]

    await bus.subscribe("clawden.event.vault.>", cb=record)
    await bus.flush()
    key = await vault.new_key("ci")
    bodies: list[str] = []
    async with vault.client(key) as api:
        await api.post("/v1/agents", json={"name": "CI", "identifier": "ci"})
        new = {"name": "token", "type": "generic", "value": VALUE, "hostPattern": SITE}
        new["injectionConfig"] = {"headerName": "X-Token"}  # type: ignore[assignment]
        for response in (
            await api.post("/v1/secrets", json=new),
            await api.post("/v1/secrets", json=new),  # again: 409
            await api.get("/v1/secrets"),
            await api.get("/v1/container-config", params={"agent": "ci"}),
            await api.delete("/v1/secrets/token"),
        ):
            bodies.append(response.text)
    assert [b for b in bodies if VALUE in b] == []
    assert '"conflict"' in bodies[1] and "a secret named token exists" in bodies[1]
    added = await eventually(lambda: [e for e in events if e.kind == "api-secret-added"])
    assert added[0].fields["actor"] == "api-key:ci" and VALUE not in msgspec.json.encode(events).decode()
    await eventually(lambda: [e for e in events if e.kind == "api-secret-removed"])


async def test_a_secret_that_would_tie_with_another_is_refused_with_the_ways_out(vault: Vault) -> None:
    key = await vault.new_key("ties")
    first = {"name": "token", "type": "generic", "value": VALUE, "hostPattern": SITE}
    first["injectionConfig"] = {"headerName": "Authorization"}  # type: ignore[assignment]
    async with vault.client(key) as api:
        await api.post("/v1/secrets", json=first)
        tied = await api.post("/v1/secrets", json=first | {"name": "token2"})
        narrower = await api.post("/v1/secrets", json=first | {"name": "token3", "agents": ["ci"]})
        listed = await api.get("/v1/secrets")
    assert tied.status_code == 409, tied.text
    assert tied.json()["message"].startswith(
        f"token2 would set authorization on the same requests as token ({SITE}, granted to every agent group)"
    )
    assert "--replace" in tied.json()["message"] and "--agent GROUP" in tied.json()["message"]
    assert narrower.status_code == 201, narrower.text
    assert sorted(s["name"] for s in listed.json()) == ["token", "token3"]


async def test_bad_input_gets_the_clis_messages_and_onecli_statuses(vault: Vault) -> None:
    key = await vault.new_key("checks")
    async with vault.client(key) as api:
        bad_type = await api.post(
            "/v1/secrets", json={"name": "s", "type": "bearer", "value": "v", "hostPattern": SITE}
        )
        unknown_field = await api.post("/v1/rules", json={"name": "r", "hostPattern": SITE, "action": "block", "x": 1})
        bad_action = await api.post("/v1/rules", json={"name": "r", "hostPattern": SITE, "action": "maybe"})
        bad_identifier = await api.post("/v1/agents", json={"name": "A", "identifier": "Has Spaces"})
        too_big = await api.post(
            "/v1/secrets", content=b'{"value":"' + b"x" * 70_000 + b'"}', headers={"content-type": "application/json"}
        )
        not_json = await api.post("/v1/rules", content=b"{nope")
        missing = await api.delete("/v1/rules/none-such")
        no_agent = await api.get("/v1/container-config", params={"agent": "nobody"})
        bad_decision = await api.post("/v1/approvals/abc/decision", json={"decision": "maybe"})
        nothing_held = await api.get("/v1/approvals/pending", params={"timeout": "0"})
        listed = await api.get("/v1/secrets")
    assert bad_type.status_code == 400
    assert bad_type.json()["message"] == "--type must be anthropic, openai, generic or aws, not 'bearer'"
    assert unknown_field.status_code == 400 and "x" in unknown_field.json()["message"]
    assert bad_action.status_code == 400
    assert bad_action.json()["message"] == "--action must be block, manual_approval, rate_limit or allow"
    assert bad_identifier.status_code == 400 and "identifier" in bad_identifier.json()["message"]
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["message"]
    assert missing.status_code == 404 and missing.json()["message"] == "no rule named 'none-such'"
    assert no_agent.status_code == 404 and no_agent.json()["error"] == "agent_not_found"
    assert bad_decision.status_code == 422
    assert nothing_held.json() == {"requests": [], "timeoutSeconds": 0.0}
    assert listed.json() == []  # nothing was half-made by the refusals
