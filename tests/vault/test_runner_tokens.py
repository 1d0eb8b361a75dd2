"""The vault for containers on other hosts (issue 25 item 4): each runner registers its containers' tokens at its
own subject, which only its NATS identity may publish, and only for a session the router placed on it; the TCP
listener speaks TLS (forced here on loopback, as it is by default off it) and the relay verifies it with the
gateway CA. A real secured nats-server running the `nats.conf` `clawden init` and `clawden runners add` write,
and `clawden run vault` connecting as its own identity."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import config as config_mod
from clawden import control, natsauth, natsserver, setup
from clawden.bus import events as ev
from clawden.bus import placements, publish, subjects
from clawden.bus.ctl import vault as vault_ctl
from clawden.cli.main import main
from clawden.vaultfiles import CA_FILE, trust_dir
from services.runner.vaultroute import new_token
from tests.eventually import eventually
from tests.fakes.anthropic import make_tls
from tests.runtime.test_runner_identities import As
from tests.vault.sites import FakeUpstream, load_relay
from tests.vault.test_service import short_home, spawn_vault

__all__ = ["short_home"]  # the fixture, used here
pytestmark = [pytest.mark.timeout(90), pytest.mark.nats]
relay = load_relay()
SECRET = "ghp_runner-tokens-secret-0123456789"


@dataclass
class Stack:
    cfg: config_mod.Config  # the install: its own runner is `a`, runner `b` added
    nats: object
    vault: object
    log: Path
    upstream: FakeUpstream
    other_ca: str  # a CA that is not the gateway's

    def logs(self) -> str:
        return self.log.read_text()


async def _answers(cfg: config_mod.Config) -> bool:
    try:
        await control.ask(cfg, vault_ctl.AUDIT, vault_ctl.AuditQuery(limit=1))
    except control.ControlError:
        return False
    return True


@pytest.fixture
async def stack(short_home: Path) -> AsyncIterator[Stack]:
    tls = make_tls(["api.example.test"], str(short_home))
    site = await FakeUpstream().start(tls.server_context)
    home = short_home / "home"
    setup.init(home)
    (home / "config.toml").write_text(f"""\
install_id = "vrt"
[nats]
port = {natsserver.free_port()}
[runner]
id = "a"
[vault]
extra_ca_file = "{tls.ca_file}"
host_map = {{"api.example.test" = "{site.address}"}}
tcp_listen = "127.0.0.1:{natsserver.free_port()}"
tcp_tls = true
""")
    assert main(["--home", str(home), "runners", "add", "b"]) == 0
    cfg = config_mod.load(home, environ={})
    natsauth.write_server_config(cfg, ())
    server = natsserver.start(cfg.nats.port, cfg.data_dir / "nats", config_file=natsauth.conf_path(cfg))
    log = short_home / "vault.log"
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    for name in ("ANTHROPIC_API_KEY", "CLAWDEN_NATS_URL"):
        env.pop(name, None)
    vault = spawn_vault(env, log)
    try:
        await eventually(lambda: _answers(cfg), timeout=30, message=log.read_text)
        await control.ask(
            cfg,
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
        async with As(cfg, "router") as nc:  # where the router placed each session
            for session, runner in (("s-a", "a"), ("s-b", "b")):
                placed = ev.SessionPlaced(session_id=session, agent_group="main", runner=runner, epoch=1, at=1.0)
                await publish(nc.jetstream(), subjects.placement(session), placed, msg_id=f"{session}:1")
        yield Stack(cfg, server, vault, log, site, tls.ca_file)
    finally:
        vault.send_signal(signal.SIGTERM)
        await asyncio.to_thread(vault.wait, 20)
        server.terminate()
        await asyncio.to_thread(server.wait, 10)
        await site.close()


async def register(nc: Client, runner: str, session: str, digest: str, group: str = "main") -> vault_ctl.TcpGateway:
    request = vault_ctl.ContainerToken(agent_group=group, session_id=session, sha256=digest)
    at = vault_ctl.container_token_at(runner)
    return await control.ask_on(nc, vault_ctl.CONTAINER_TOKEN, request, subject=at, timeout=10)


async def refusal(nc: Client, runner: str, session: str, group: str = "main") -> str:
    with pytest.raises(control.Refused) as refused:
        await register(nc, runner, session, new_token()[1], group)
    return str(refused.value)


async def test_a_runner_registers_tokens_only_for_the_sessions_placed_on_it(stack: Stack) -> None:
    audited: list[ev.AuditEvent] = []

    async def on_audit(msg: Msg) -> None:
        audited.append(msgspec.json.decode(msg.data, type=ev.AuditEvent))

    async with As(stack.cfg, "runner-b") as b, As(stack.cfg, "runner") as a, As(stack.cfg, natsauth.CLI) as cli:
        await cli.subscribe(subjects.event("vault", "container-token-refused"), cb=on_audit)
        await cli.flush()
        other_runners = await refusal(b, "b", "s-a")
        other_group = await refusal(b, "b", "s-b", group="family")  # its own session, named as another group
        unplaced_b = await refusal(b, "b", "s-old")
        mine = await register(b, "b", "s-b", new_token()[1])
        unplaced_own = await register(a, "a", "s-old", new_token()[1])  # the install's own runner: as before
        withdraw_others = await refusal(b, "b", "s-a")  # nor may it withdraw another runner's
        moved = ev.SessionPlaced(session_id="s-a", agent_group="main", runner="b", epoch=2, at=2.0)
        async with As(stack.cfg, "router") as router:
            await publish(router.jetstream(), subjects.placement("s-a"), moved, msg_id="s-a:2")
        after_move = await register(b, "b", "s-a", new_token()[1])
        a_after_move = await refusal(a, "a", "s-a")
        await eventually(lambda: len(audited) == 5, message=lambda: audited)

    assert "it is placed on a" in other_runners and "runner b" in other_runners
    assert "the session belongs to main" in other_group
    assert "no placement record" in unplaced_b and "own runner (a)" in unplaced_b
    assert "it is placed on a" in withdraw_others and "it is placed on b" in a_after_move
    assert mine.port == unplaced_own.port == after_move.port and mine.tls_name == "127.0.0.1"
    assert mine.ca_pem == (trust_dir(stack.cfg) / CA_FILE).read_text()
    assert [(e.kind, e.fields["runner"], e.fields["session_id"]) for e in audited] == [
        ("container-token-refused", "b", "s-a"),
        ("container-token-refused", "b", "s-b"),
        ("container-token-refused", "b", "s-old"),
        ("container-token-refused", "b", "s-a"),
        ("container-token-refused", "a", "s-a"),
    ]
    assert "container token refused: runner b may not" in stack.logs()


async def test_nats_itself_refuses_a_runner_on_another_runners_subject_or_the_shared_one(stack: Stack) -> None:
    b = As(stack.cfg, "runner-b")
    async with b as nc:
        request = msgspec.json.encode(vault_ctl.ContainerToken(agent_group="main", session_id="s-a", sha256=""))
        for subject in (vault_ctl.container_token_at("a"), vault_ctl.CONTAINER_TOKEN.subject):
            with pytest.raises(Exception):  # noqa: B017  # no answer: the server dropped it
                await nc.request(subject, request, timeout=2)
        await eventually(
            lambda: b.refused("clawden.ctl.vault.container-token.a") and b.refused("clawden.ctl.vault.container-token"),
            message=lambda: b.errors,
        )
    async with As(stack.cfg, natsauth.CLI) as cli:  # the shared subject, asked by one who may: a clear refusal
        with pytest.raises(control.Refused, match="at its own subject"):
            await control.ask_on(
                cli, vault_ctl.CONTAINER_TOKEN, vault_ctl.ContainerToken(agent_group="main", session_id="s-a")
            )


async def test_the_vault_may_read_placements_and_a_runner_or_the_scheduler_may_not(stack: Stack) -> None:
    async with As(stack.cfg, "vault") as nc:
        placed = await placements.placed(nc.jetstream(), "s-b")
        assert placed is not None and placed.runner == "b"
        assert await placements.placed(nc.jetstream(), "s-never") is None
    # The scheduler hands due runs to the router, which knows where each session is: it reads no placement.
    for ident in ("runner-b", "scheduler"):
        await refused_placements(stack, ident)


async def refused_placements(stack: Stack, ident: str) -> None:
    who = As(stack.cfg, ident)
    async with who as nc:
        with pytest.raises(Exception):  # noqa: B017
            await placements.placed(nc.jetstream(), "s-b")
        await eventually(
            lambda: any("direct.get.clawden_placement" in e for e in who.errors), message=lambda: who.errors
        )


async def fetch(
    gateway: str, token: str, ca_file: str, stack: Stack, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> int | str:
    """One request as a container's agent makes it, through a relay holding `token` that dials `gateway` and
    trusts `ca_file`: the status, or what went wrong."""
    token_file = folder / "token"
    token_file.write_text(token)
    monkeypatch.setenv(relay.TOKEN_FILE_ENV, str(token_file))
    monkeypatch.setenv(relay.CA_FILE_ENV, ca_file)
    server = await relay.serve_relay(gateway, hide=False)
    gateway_ca = ssl.create_default_context(cafile=str(trust_dir(stack.cfg) / CA_FILE))  # the agent's trust
    try:
        async with httpx.AsyncClient(
            proxy=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
            verify=gateway_ca,
            trust_env=False,
            timeout=10,
        ) as http:
            try:
                return (await http.get("https://api.example.test/user")).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__
    finally:
        server.close()
        await server.wait_closed()


async def test_a_relay_reaches_the_tls_listener_verifying_it_with_the_gateway_ca(
    stack: Stack, short_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with As(stack.cfg, "runner-b") as b:
        token, digest = new_token()
        reply = await register(b, "b", "s-b", digest)
    gateway_ca = str(trust_dir(stack.cfg) / CA_FILE)
    over_tls = await fetch(f"tls://127.0.0.1:{reply.port}", token, gateway_ca, stack, short_home, monkeypatch)
    in_clear = await fetch(f"tcp://127.0.0.1:{reply.port}", token, gateway_ca, stack, short_home, monkeypatch)
    other_ca = await fetch(f"tls://127.0.0.1:{reply.port}", token, stack.other_ca, stack, short_home, monkeypatch)
    assert over_tls == 200
    assert in_clear != 200 and other_ca != 200  # the listener speaks only TLS; the relay trusts only the gateway CA
    got = [r.header(b"authorization") for r in stack.upstream.received]
    assert got == [SECRET.encode()]  # once: the request that came through TLS
    assert token not in stack.logs()


async def test_a_third_party_agents_proxy_url_is_an_https_proxy_when_the_listener_speaks_tls(stack: Stack) -> None:
    """The HTTP API's container-config and `proxy-token` name the listener as it is: over TLS, `https://`."""
    reply = await control.ask(stack.cfg, vault_ctl.PROXY_TOKEN, vault_ctl.GroupRequest(agent_group="main"))
    assert reply.proxy_url.startswith("https://main:clp_")
    gateway_ca = ssl.create_default_context(cafile=str(trust_dir(stack.cfg) / CA_FILE))
    proxy = httpx.Proxy(reply.proxy_url, ssl_context=gateway_ca)
    async with httpx.AsyncClient(proxy=proxy, verify=gateway_ca, trust_env=False, timeout=10) as http:
        status = (await http.get("https://api.example.test/user")).status_code
    assert status == 200
    assert [r.header(b"authorization") for r in stack.upstream.received] == [SECRET.encode()]
