"""The vault service as it runs: `clawden run vault` against a real NATS server, managed through the
`clawden secrets|rules|audit|egress` commands, asking for approvals on the bus."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from clawden import agentcontainer, control, setup
from clawden import config as config_mod
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import Nothing, Verb
from clawden.bus.ctl import vault as vault_ctl
from clawden.cli.commands.vault import parse_since
from clawden.control import Rep, Req
from clawden.owner import connect_cli
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.anthropic import make_tls
from tests.vault.sites import FakeUpstream, load_relay

pytestmark = pytest.mark.timeout(60)

BOOT_KEY = "sk-ant-api03-bootstrap-key-from-file"
GITHUB = "ghp_service-test-token-0123456789abcdef"
relay = load_relay()


@dataclass
class Vault:
    home: Path
    cfg: config_mod.Config
    proc: subprocess.Popen[bytes]
    log: Path
    site: FakeUpstream

    def env(self) -> dict[str, str]:
        env = dict(os.environ, CLAWDEN_HOME=str(self.home))
        env.pop("ANTHROPIC_API_KEY", None)
        return env

    async def ask(self, verb: Verb[Req, Rep], request: Req) -> Rep:
        return await control.ask(self.cfg, verb, request)

    async def refusal(self, verb: str, body: bytes) -> str:
        """What the vault says to a request no typed client can send (a field missing): its error, or ""."""
        nc = await connect_cli(self.cfg, 5)
        try:
            reply = await nc.request(subjects.ctl("vault", verb), body, timeout=5)
        finally:
            await nc.close()
        return (reply.headers or {}).get("Nats-Service-Error", "")

    async def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "clawden", *args],
            input=stdin,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def logs(self) -> str:
        return self.log.read_text()


def spawn_vault(env: dict[str, str], log: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "clawden", "run", "vault"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture
def vault_prefix() -> tuple[str, ...]:
    """What the vault process is started under (a test may drop a capability, as a unit's sandbox does)."""
    return ()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def short_home() -> Iterator[Path]:
    # The gateway socket lives under the home; pytest's tmp_path is too long for sun_path.
    with tempfile.TemporaryDirectory(prefix="clawden-vs-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
async def vault(nats_server: NatsServer, short_home: Path, vault_prefix: tuple[str, ...]) -> AsyncIterator[Vault]:
    tls = make_tls(["api.example.test", "api.anthropic.com"], str(short_home))
    site = await FakeUpstream().start(tls.server_context)
    home = short_home / "home"
    cfg = setup.init(home)
    (cfg.keys_dir / "anthropic").write_text(BOOT_KEY + "\n")
    (cfg.keys_dir / "anthropic").chmod(0o600)
    cfg.path("config.toml").write_text(f"""\
install_id = "vt"
[nats]
url = "{nats_server.url}"
[vault]
extra_ca_file = "{tls.ca_file}"
host_map = {{"api.example.test" = "{site.address}", "api.anthropic.com" = "{site.address}"}}
approval_timeout = 5
""")
    cfg = config_mod.load(home)
    log = short_home / "vault.log"
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    env.pop("ANTHROPIC_API_KEY", None)
    proc = spawn_vault(env, log, vault_prefix)
    v = Vault(home, cfg, proc, log, site)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await v.ask(vault_ctl.GATEWAY, vault_ctl.GroupRequest(agent_group="main"))
                break
            except control.ControlError:
                assert proc.poll() is None and time.monotonic() < deadline, v.logs()
                await asyncio.sleep(0.2)
        yield v
    finally:
        v.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(v.proc.wait, 20)
        await site.close()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Client]:
    from clawden.bus import connect

    nc = await connect(nats_server.url, "test-approver")
    yield nc
    await nc.close()


async def agent_client(v: Vault, group: str = "main") -> tuple[httpx.AsyncClient, asyncio.Server]:
    """An agent of `group` as its container sees things: the relay, and the mounted CA bundle."""
    reply = await v.ask(vault_ctl.GATEWAY, vault_ctl.GroupRequest(agent_group=group))
    server = await relay.serve_relay(reply.socket)
    context = ssl.create_default_context(cafile=reply.ca_file)
    client = httpx.AsyncClient(
        proxy=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", verify=context, trust_env=False, timeout=10
    )
    return client, server


def test_since_takes_durations_dates_and_epochs() -> None:
    now = 1_800_000_000.0
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2d", now) == now - 2 * 86400
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("2026-11-21T08:00:00+00:00", now) == 1_795_248_000.0


async def test_the_model_key_from_keys_anthropic_is_sealed_and_injected(vault: Vault) -> None:
    reply = await vault.ask(vault_ctl.GATEWAY, vault_ctl.GroupRequest(agent_group="main"))
    trust = Path(reply.trust_dir)
    assert stat.S_IMODE((vault.cfg.keys_dir / "gateway-ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((vault.cfg.keys_dir / "vault.key").stat().st_mode) == 0o600
    files = folder_files(trust)
    assert set(files) == {"clawden-ca.pem", "bundle.pem"}
    assert b"PRIVATE" not in b"".join(files.values())

    client, server = await agent_client(vault)
    async with client:
        response = await client.post(
            "https://api.anthropic.com/v1/messages", content=b"{}", headers={"x-api-key": "clawden-managed"}
        )
    server.close()

    assert response.status_code == 200
    assert vault.site.received[-1].header(b"x-api-key") == BOOT_KEY.encode()
    db = (vault.cfg.data_dir / "vault" / "vault.db").read_bytes()
    assert BOOT_KEY.encode() not in db
    assert stat.S_IMODE((vault.cfg.data_dir / "vault").stat().st_mode) == 0o700


def connects_as(uid: int, path: Path) -> str:
    """Connect to the Unix socket at `path` as user `uid` (a child that drops to it): "ok" or the error's name. The
    folder is opened first, as a container's bind mount reaches it: past the host folders above it."""
    script = f"""
import errno, os, socket
folder = os.open({str(path.parent)!r}, os.O_PATH)
os.setgid({uid}); os.setuid({uid})
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(f"/proc/self/fd/{{folder}}/{path.name}"); print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=10).stdout.strip()


@pytest.mark.skipif(os.getuid() != 0, reason="other users are made by setuid, which needs root")
async def test_only_the_groups_containers_may_connect_to_its_gateway_socket(vault: Vault) -> None:
    reply = await vault.ask(vault_ctl.GATEWAY, vault_ctl.GroupRequest(agent_group="main"))
    sock, folder = os.stat(reply.socket), os.stat(Path(reply.socket).parent)
    assert stat.S_IMODE(sock.st_mode) == 0o600
    assert sock.st_uid == agentcontainer.AGENT_UID  # a root install's containers run as the image's user
    assert stat.S_IMODE(folder.st_mode) == 0o711 and folder.st_uid == 0
    assert connects_as(agentcontainer.AGENT_UID, Path(reply.socket)) == "ok"
    assert connects_as(agentcontainer.AGENT_UID + 1, Path(reply.socket)) == "EACCES"  # any other local user


@pytest.mark.skipif(os.getuid() != 0, reason="a root vault's sandbox, made by setpriv, as root")
@pytest.mark.parametrize("vault_prefix", [("setpriv", "--bounding-set", "-chown", "--")])
async def test_a_root_vault_that_may_not_chown_still_serves_the_containers_user(vault: Vault) -> None:
    # Its unit drops CAP_CHOWN: the socket cannot be given to the image's user, so it is left open to every user
    # rather than to none (the group's agents would get no model calls), and the log says so.
    reply = await vault.ask(vault_ctl.GATEWAY, vault_ctl.GroupRequest(agent_group="main"))
    sock = os.stat(reply.socket)
    assert stat.S_IMODE(sock.st_mode) == 0o666 and sock.st_uid == 0
    assert connects_as(agentcontainer.AGENT_UID, Path(reply.socket)) == "ok"
    assert "it is open to every local user" in vault.logs()


async def test_secrets_rules_and_audit_through_the_cli(vault: Vault) -> None:
    added = await vault.cli(
        "secrets",
        "add",
        "github",
        "--type",
        "generic",
        "--host",
        "api.example.test",
        "--header",
        "Authorization",
        "--format",
        "Bearer {value}",
        "--agent",
        "main",
        stdin=GITHUB + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert "stored github: Authorization: Bearer {value} for api.example.test (any path)" in added.stdout
    listed = await vault.cli("secrets", "list")
    assert "github" in listed.stdout and "anthropic" in listed.stdout
    rule = await vault.cli(
        "rules",
        "add",
        "two-a-minute",
        "--action",
        "rate_limit",
        "--host",
        "api.example.test",
        "--limit",
        "2",
        "--agent",
        "main",
    )
    assert rule.returncode == 0, rule.stderr
    assert "rate_limit 2/minute * api.example.test for main" in rule.stdout
    bad = await vault.cli("rules", "add", "x", "--action", "block", "--host", "https://api.example.test")
    assert bad.returncode != 0 and "hostname" in bad.stderr

    client, server = await agent_client(vault)
    async with client:  # five, so the limit bites in some minute wherever a minute ends among them
        statuses = [(await client.get("https://api.example.test/user")).status_code for _ in range(5)]
    server.close()
    assert vault.site.received[-1].header(b"authorization") == f"Bearer {GITHUB}".encode()

    def user_lines(audit: subprocess.CompletedProcess[str]) -> list[str]:
        return [line for line in audit.stdout.splitlines() if "api.example.test/user" in line]

    async def audited() -> subprocess.CompletedProcess[str] | None:  # the log is flushed every half second
        audit = await vault.cli("audit", "--agent", "main", "--since", "5m")
        assert audit.returncode == 0, audit.stderr
        return audit if len(user_lines(audit)) >= 5 else None

    audit = await eventually(audited, timeout=15)
    lines = user_lines(audit)
    assert ["rate_limited (two-a-minute)" in line for line in lines] == [status == 429 for status in statuses]
    assert "github" in lines[0]
    # Two a minute, in the vault's own fixed minute windows (by its clock, not this test's): in each, the first
    # two pass and the rest get 429.
    records = json.loads((await vault.cli("audit", "--agent", "main", "--since", "5m", "--json")).stdout)
    windows = [int(r["at"] // 60) for r in sorted(records, key=lambda r: r["at"]) if r["path"] == "/user"]
    assert statuses == [200 if windows[:i].count(w) < 2 else 429 for i, w in enumerate(windows)], windows
    assert (await vault.cli("audit", "--agent", "nobody")).stdout.strip() == "no audited requests match"

    assert (await vault.cli("rules", "remove", "two-a-minute")).returncode == 0
    revoked = await vault.cli("secrets", "grant", "github", "--agent", "main", "--revoke")
    assert "granted to: nobody" in revoked.stdout
    assert (await vault.cli("secrets", "remove", "github")).returncode == 0
    gone = await vault.cli("secrets", "remove", "github")
    assert gone.returncode != 0 and "no secret named 'github'" in gone.stderr

    everything = (
        vault.logs()
        + added.stdout
        + listed.stdout
        + audit.stdout
        + (await vault.cli("secrets", "list", "--json")).stdout
    )
    assert GITHUB not in everything and BOOT_KEY not in everything


async def test_egress_allowlist_is_set_per_group(vault: Vault) -> None:
    set_ = await vault.cli("egress", "kids", "allowlist")
    assert set_.stdout.strip() == "kids: egress allowlist"
    assert (await vault.cli("egress", "main")).stdout.strip() == "main: egress open"
    client, server = await agent_client(vault, "kids")
    async with client:
        model = await client.post("https://api.anthropic.com/v1/messages", content=b"{}")
        other = await client.get("https://api.example.test/")
    server.close()
    assert model.status_code == 200  # the model key is granted to every group
    assert other.status_code == 403 and other.json()["error"] == "blocked_by_default_policy"


async def test_a_held_request_waits_for_a_decision_on_the_bus(vault: Vault, bus: Client) -> None:
    await vault.ask(
        vault_ctl.SECRETS_ADD,
        vault_ctl.AddSecret(name="bank", type="generic", value=GITHUB, host="api.example.test", header="Authorization"),
    )
    await vault.ask(
        vault_ctl.RULES_ADD,
        vault_ctl.AddRule(
            name="ask-pay", action="manual_approval", host="api.example.test", path="/pay/*", method="POST"
        ),
    )
    requests: asyncio.Queue[ev.ApprovalRequest] = asyncio.Queue()

    async def on_request(msg: Any) -> None:
        event = ev.decode(msg.data)
        assert isinstance(event, ev.ApprovalRequest)
        await requests.put(event)

    await bus.subscribe(subjects.APPROVAL_REQUEST, cb=on_request)
    events: list[ev.Event] = []

    async def on_audit(msg: Any) -> None:
        events.append(ev.decode(msg.data))

    await bus.subscribe(subjects.event("vault", "audit"), cb=on_audit)
    await bus.flush()

    client, server = await agent_client(vault)
    async with client:
        body = b'{"amount": 12, "note": "' + GITHUB.encode() + b'"}'
        approved_call = asyncio.create_task(client.post("https://api.example.test/pay/1", content=body))
        ask = await asyncio.wait_for(requests.get(), 10)
        assert not approved_call.done()
        await bus.publish(
            subjects.approval_decision(ask.id),
            ev.encode(ev.ApprovalDecision(id=ask.id, decision="approved", decided_by="owner")),
        )
        approved = await approved_call

        denied_call = asyncio.create_task(client.post("https://api.example.test/pay/2", content=b"{}"))
        ask2 = await asyncio.wait_for(requests.get(), 10)
        await bus.publish(
            subjects.approval_decision(ask2.id), ev.encode(ev.ApprovalDecision(id=ask2.id, decision="denied"))
        )
        denied = await denied_call

        started = time.monotonic()
        expired = await client.post("https://api.example.test/pay/3", content=b"{}")  # nobody answers
        waited = time.monotonic() - started
    server.close()

    assert approved.status_code == 200
    assert (
        vault.site.received[-1].target == b"/pay/1"
        and vault.site.received[-1].header(b"authorization") == GITHUB.encode()
    )
    assert (ask.kind, ask.requester, ask.agent_group) == ("credential", "vault", "main")
    assert ask.context["method"] == "POST" and ask.context["path"] == "/pay/1"
    assert [b.id for b in ask.card.buttons] == ["approve", "deny"]
    assert '"amount": 12' in ask.card.body and GITHUB not in ev.encode(ask).decode()
    assert denied.status_code == 403 and denied.json()["error"] == "manual_approval_denied"
    assert expired.status_code == 403 and "timed out" in expired.json()["message"] and 4 < waited < 10

    def paid() -> list[ev.AuditEvent]:  # audit events are published as the log is flushed, every half second
        audited = [e for e in events if isinstance(e, ev.AuditEvent) and e.fields["path"].startswith("/pay/")]
        return audited if len(audited) >= 3 else []

    audited = await eventually(paid, timeout=15, message=lambda: events)
    assert [e.fields["decision"] for e in audited] == ["approved", "denied", "expired"]
    assert GITHUB not in str(events) and GITHUB not in vault.logs()


async def test_secrets_survive_a_restart_and_bad_requests_are_refused(vault: Vault) -> None:
    with pytest.raises(control.ControlError, match="needs one of --header NAME, --param NAME"):
        await vault.ask(
            vault_ctl.SECRETS_ADD, vault_ctl.AddSecret(name="x", type="generic", value="v" * 10, host="a.test")
        )
    with pytest.raises(control.ControlError, match="'\\*' would hand it to every site"):
        await vault.ask(
            vault_ctl.SECRETS_ADD, vault_ctl.AddSecret(name="x", type="generic", value="v" * 10, host="*", header="X")
        )
    assert (await vault.refusal("secrets-add", b'{"name": "x"}')).startswith("bad request")
    await vault.ask(
        vault_ctl.SECRETS_ADD, vault_ctl.AddSecret(name="openai", type="openai", value="sk-proj-survivor-123456")
    )
    await restart(vault)
    listed = await vault.ask(vault_ctl.SECRETS_LIST, Nothing())
    assert {s.name for s in listed.secrets} == {"anthropic", "openai"}
    assert "sk-proj-survivor" not in vault.logs()


async def test_a_daily_rate_limit_is_not_forgiven_by_a_restart(vault: Vault) -> None:
    await vault.ask(
        vault_ctl.RULES_ADD,
        vault_ctl.AddRule(
            name="three-a-day",
            action="rate_limit",
            host="api.example.test",
            path="/send",
            agent="main",
            limit=3,
            window="day",
        ),
    )
    await vault.ask(
        vault_ctl.RULES_ADD,
        vault_ctl.AddRule(
            name="two-a-day",
            action="rate_limit",
            host="api.example.test",
            path="/read",
            agent="main",
            limit=2,
            window="day",
        ),
    )
    client, server = await agent_client(vault)
    async with client:
        before = [(await client.post("https://api.example.test/send")).status_code for _ in range(3)]
        before.append((await client.get("https://api.example.test/read")).status_code)
    server.close()
    assert before == [200, 200, 200, 200]

    await restart(vault)  # a clean stop: every count is written before the process exits

    client, server = await agent_client(vault)
    work, work_server = await agent_client(vault, "work")
    async with client, work:
        fourth = await client.post("https://api.example.test/send")
        reads = [(await client.get("https://api.example.test/read")).status_code for _ in range(2)]
        elsewhere = (await client.get("https://api.example.test/user")).status_code
        other_group = (await work.post("https://api.example.test/send")).status_code
    server.close()
    work_server.close()
    assert fourth.status_code == 429
    body = fourth.json()
    assert (body["error"], body["limit"], body["window"], body["rule_name"]) == (
        "rate_limited",
        3,
        "day",
        "three-a-day",
    )
    assert 0 < int(fourth.headers["retry-after"]) <= 86400
    assert reads == [200, 429]  # the other rule's one request before the restart still counts
    assert elsewhere == 200 and other_group == 200


async def restart(vault: Vault) -> None:
    """SIGTERM the vault, wait for a clean exit, start it again and wait until it answers."""
    vault.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(vault.proc.wait, 20) == 0, vault.logs()
    await start(vault)


async def start(vault: Vault) -> None:
    """Start the vault and wait until it answers."""
    vault.proc = spawn_vault(vault.env(), vault.log)
    deadline = time.monotonic() + 30
    while True:
        try:
            await vault.ask(vault_ctl.SECRETS_LIST, Nothing())
            return
        except control.ControlError:
            assert vault.proc.poll() is None and time.monotonic() < deadline, vault.logs()
            await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("*.com", "matches every site under the public suffix 'com'"),
        ("*.co.uk", "matches every site under the public suffix 'co.uk'"),
        ("*.github.io", "matches every site under the public suffix 'github.io'"),
        ("co.uk", "is a public suffix, not a site"),
        ("api.example.com*", "a * must stand for a whole label"),
        ("*.anthropic.com", "matches the model API (api.anthropic.com)"),
    ],
)
async def test_a_typo_in_a_host_pattern_never_sends_a_secret_to_the_wrong_place(
    vault: Vault, host: str, why: str
) -> None:
    before = await vault.ask(vault_ctl.SECRETS_LIST, Nothing())

    with pytest.raises(control.ControlError, match=re.escape(why)):
        await vault.ask(
            vault_ctl.SECRETS_ADD,
            vault_ctl.AddSecret(name="gh", type="generic", value=GITHUB, host=host, header="Authorization"),
        )

    assert await vault.ask(vault_ctl.SECRETS_LIST, Nothing()) == before


async def test_a_secret_is_replaced_only_when_asked_and_the_model_key_keeps_its_type_and_host(vault: Vault) -> None:
    await vault.ask(
        vault_ctl.SECRETS_ADD,
        vault_ctl.AddSecret(name="gh", type="generic", value=GITHUB, host="api.github.com", header="Authorization"),
    )
    before = await vault.ask(vault_ctl.SECRETS_LIST, Nothing())
    with pytest.raises(control.ControlError, match="a secret named gh exists; add --replace"):
        await vault.ask(
            vault_ctl.SECRETS_ADD,
            vault_ctl.AddSecret(name="gh", type="generic", value="x" * 20, host="evil.test", header="Authorization"),
        )
    with pytest.raises(control.ControlError, match="the anthropic secret is the model key"):
        await vault.ask(
            vault_ctl.SECRETS_ADD,
            vault_ctl.AddSecret(
                name="anthropic", type="generic", value="x" * 20, host="evil.test", header="X", replace=True
            ),
        )
    assert await vault.ask(vault_ctl.SECRETS_LIST, Nothing()) == before

    replaced = await vault.ask(
        vault_ctl.SECRETS_ADD,
        vault_ctl.AddSecret(
            name="gh",
            type="generic",
            value=GITHUB,
            replace=True,
            host="api.github.com",
            header="Authorization",
            agents=["main"],
        ),
    )
    forced = await vault.ask(
        vault_ctl.SECRETS_ADD,
        vault_ctl.AddSecret(
            name="proxy", type="generic", value="p" * 20, force=True, host="api.anthropic.com", header="X-Proxy-Key"
        ),
    )
    assert replaced.created is False and replaced.secret.grants == ["main"] and forced.created is True


async def test_rules_are_read_changed_disabled_and_enabled_through_the_cli(vault: Vault) -> None:
    added = await vault.cli(
        "rules", "add", "no-boss", "--action", "block", "--host", "api.example.test", "--method", "POST",
        "--json-equals", "/to=boss@example.com",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    client, server = await agent_client(vault)

    async def send(to: str) -> int:
        return (await client.post("https://api.example.test/send", json={"to": to, "text": "hi"})).status_code

    async with client:
        first = [await send("boss@example.com"), await send("ada@example.com")]
        assert (await vault.cli("rules", "disable", "no-boss")).stdout.strip() == (
            "rule no-boss is disabled: kept, not applied"
        )
        disabled = await send("boss@example.com")
        enabled = await vault.cli("rules", "enable", "no-boss")
        again = await send("boss@example.com")
        updated = await vault.cli(
            "rules", "update", "no-boss", "--json-equals", "/to=ada@example.com", "--large-body", "ignore"
        )
        after_update = [await send("boss@example.com"), await send("ada@example.com")]
    server.close()

    assert first == [403, 200] and disabled == 200 and again == 403, (first, disabled, again)
    assert enabled.returncode == 0 and "is enabled" in enabled.stdout
    assert updated.returncode == 0, updated.stderr
    assert "when the JSON body's /to is 'ada@example.com'" in updated.stdout
    assert "too large or compressed to test: the rule does not apply" in updated.stdout
    assert after_update == [200, 403]
    await restart(vault)
    shown = json.loads((await vault.cli("rules", "get", "no-boss", "--json")).stdout)
    assert shown["conditions"] == [{"operator": "equals", "value": "ada@example.com", "pointer": "/to"}]
    assert (shown["enabled"], shown["large_body"], shown["method"]) == (True, "ignore", "POST")
    refused = await vault.cli("rules", "update", "no-boss", "--limit", "3")
    assert refused.returncode != 0 and "belong to rate_limit rules" in refused.stderr
    missing = await vault.cli("rules", "get", "nope")
    assert missing.returncode != 0 and "no rule named 'nope'" in missing.stderr
    bad = await vault.cli("rules", "update", "no-boss", "--json-equals", "to=x")
    assert bad.returncode != 0 and "/pointer=value" in bad.stderr


async def test_a_tripped_rate_limit_sends_the_owner_one_card_per_window(vault: Vault, bus: Client) -> None:
    await vault.ask(
        vault_ctl.RULES_ADD,
        vault_ctl.AddRule(name="one-a-day", action="rate_limit", host="api.example.test", limit=1, window="day"),
    )
    cards: asyncio.Queue[ev.ApprovalRequest] = asyncio.Queue()

    async def on_request(msg: Any) -> None:
        event = ev.decode(msg.data)
        assert isinstance(event, ev.ApprovalRequest)
        await cards.put(event)

    await bus.subscribe(subjects.APPROVAL_REQUEST, cb=on_request)
    await bus.flush()
    client, server = await agent_client(vault)
    async with client:
        statuses = [(await client.get("https://api.example.test/user")).status_code for _ in range(3)]
        card = await asyncio.wait_for(cards.get(), 10)
        # The log line comes after the publish: by then a second card would have been published too.
        await eventually(lambda: "told the owner that rate limit one-a-day tripped" in vault.logs(), timeout=10)
        await bus.flush()
    server.close()

    assert statuses == [200, 429, 429]
    assert cards.empty()
    assert (card.requester, card.kind, card.agent_group, card.card.buttons) == ("vault", "credential", "main", ())
    assert card.card.title == "Agent main hit the rate limit one-a-day"
    assert "1 requests per day" in card.card.body and "clawden rules update one-a-day --limit N" in card.card.body
    assert card.id.startswith("limit-") and card.expires_at % 86400 == 0
    assert "host" not in card.context  # the approvals service shows the card as it is
