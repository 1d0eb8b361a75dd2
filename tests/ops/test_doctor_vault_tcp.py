"""`clawden doctor`'s `vault tcp` row: where the vault's TCP listener binds and whether it speaks TLS, for which
names; off loopback in clear fails; with the vault running, the listener dialled as a runner's relay dials it (the
gateway CA alone, the name the runner checks) and asked for a 407. Every listener here binds 127.0.0.1: a
listener only reachable off loopback is never dialled (the loopback TLS case is `tcp_tls = true`)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clawden import config as config_mod
from clawden import control, natsserver, setup
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as vault_ctl
from clawden.cli.doctor import (
    Answer,
    Listener,
    Probe,
    Result,
    check_vault_tcp,
    checks,
    dial_listener,
    read_listener,
    same_name,
    vault_tcp_result,
)
from clawden.pki import CertificateAuthority
from clawden.vaultfiles import CA_CERT, CA_KEY
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.anthropic import make_tls
from tests.ops.conftest import fresh_home
from tests.vault.test_service import short_home, spawn_vault

__all__ = ["short_home"]  # the fixture, used here
HOST = socket.gethostname()


# ---- the pure decision, as tables ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Vault.Home.Arpa.", "vault.home.arpa", True),
        ("::1", "0:0:0:0:0:0:0:1", True),  # an address written two ways
        ("[::1]", "::1", True),
        ("192.0.2.7", "192.0.2.70", False),
        ("vault.home.arpa", "vault", False),
    ],
)
def test_certificate_names_compare_as_names_and_addresses(a: str, b: str, same: bool) -> None:
    assert same_name(a, b) is same


TLS = Listener("192.0.2.7:8471", "192.0.2.7", 8471, True, ("192.0.2.7", "vault.home.arpa"))
PLAIN = Listener("127.0.0.1:8471", "127.0.0.1", 8471, False, ())
ANSWERED = Answer(names=("192.0.2.7", "vault.home.arpa"))


@pytest.mark.parametrize(
    ("listener", "answer", "status", "says", "fix"),
    [
        (TLS, ANSWERED, "ok", "checking 192.0.2.7, then a 407", ""),
        (replace(TLS, runner_dials="VAULT.home.arpa"), ANSWERED, "ok", "checking VAULT.home.arpa", ""),
        (PLAIN, Answer(), "ok", "plain TCP on loopback; it answers a request without a token with 407", ""),
        (replace(TLS, port=None), None, "FAIL", "is not host:port", "host:port"),
        # in clear off loopback: a bind to an address, and to every address
        (replace(TLS, tls=False, names=()), None, "FAIL", "without TLS", "tcp_tls = true or auto"),
        (Listener("0.0.0.0:8471", "0.0.0.0", 8471, False, ()), None, "FAIL", "without TLS", "tcp_tls = true"),
        (Listener(":8471", "", 8471, False, ()), None, "FAIL", "in clear", "tcp_tls = true"),
        (replace(TLS, names=()), None, "FAIL", "no name", "tcp_names"),
        # the runner here dials a name the certificate would not carry: found without dialling
        (replace(TLS, runner_dials="192.0.2.8"), ANSWERED, "FAIL", "dials 192.0.2.8", 'add "192.0.2.8" to'),
        (TLS, None, "ok", "not dialled: the vault does not run", ""),
        (replace(TLS, port=0), None, "ok", "not dialled: the vault picks its port", ""),
        (TLS, Answer("unreachable", "nothing answers on 192.0.2.7:8471"), "FAIL", "nothing answers", "restart"),
        (TLS, Answer("no_tls", "no TLS handshake"), "FAIL", "no TLS handshake", "listens in clear"),
        (TLS, Answer("untrusted", "not one the gateway CA issued"), "FAIL", "gateway CA", "another program"),
        (TLS, Answer("name", "does not name 192.0.2.7"), "FAIL", "does not name", "restart the vault"),
        (PLAIN, Answer("not_gateway", "does not answer as the vault's gateway"), "FAIL", "gateway", "speaks TLS"),
        # the vault started with other names than config.toml gives now
        (TLS, Answer(names=("192.0.2.7",)), "FAIL", "names 192.0.2.7, not vault.home.arpa", "restart the vault"),
        # a wildcard bind with no tcp_names: this machine's name only
        (
            Listener("0.0.0.0:8471", "0.0.0.0", 8471, True, ("homeserver",), named=False),
            Answer(names=("homeserver",)),
            "WARN",
            "only this machine's name, since it binds 0.0.0.0",
            "in [vault] tcp_names",
        ),
    ],
)
def test_the_vault_tcp_row_says_where_it_listens_and_what_stops_runners(
    listener: Listener, answer: Answer | None, status: str, says: str, fix: str
) -> None:
    result = vault_tcp_result(listener, answer)
    assert result.status == status and says in result.detail, result
    assert fix in result.fix and bool(result.fix) == (status != "ok")
    assert listener.listen in result.detail or "dials" in result.detail


def config(home: Path, text: str) -> config_mod.Config:
    setup.init(home)
    (home / "config.toml").write_text(text)
    return config_mod.load(home, environ={})


@pytest.mark.parametrize(
    ("text", "by_tcp", "expected"),
    [
        ('[vault]\ntcp_listen = "127.0.0.1:8471"\n', False, PLAIN),
        (
            '[vault]\ntcp_listen = "127.0.0.1:8471"\ntcp_tls = true\n',
            False,
            Listener("127.0.0.1:8471", "127.0.0.1", 8471, True, ("127.0.0.1",)),
        ),
        (
            '[vault]\ntcp_listen = "192.0.2.7:8471"\ntcp_tls = false\n',
            False,
            Listener("192.0.2.7:8471", "192.0.2.7", 8471, False, ()),
        ),
        (
            '[vault]\ntcp_listen = "0.0.0.0:8471"\n',
            False,
            Listener("0.0.0.0:8471", "0.0.0.0", 8471, True, (HOST,), named=False),
        ),
        (  # the runner here reaches the vault over TCP: the name it dials is the one it checks
            '[vault]\ntcp_listen = "0.0.0.0:8471"\ntcp_names = ["vault.home.arpa", "192.0.2.7"]\n'
            '[runner]\nvault_transport = "tcp"\nvault_tcp_host = "vault.home.arpa"\n',
            True,
            Listener(
                "0.0.0.0:8471", "0.0.0.0", 8471, True, ("vault.home.arpa", "192.0.2.7"), runner_dials="vault.home.arpa"
            ),
        ),
        (  # through a unix: route the relay checks the certificate's first name: nothing more to check
            '[vault]\ntcp_listen = "127.0.0.1:8471"\n[runner]\nvault_transport = "tcp"\n'
            'vault_tcp_host = "unix:/run/vault.sock"\n',
            True,
            PLAIN,
        ),
    ],
)
def test_the_listener_is_read_from_config_toml_as_the_vault_makes_it(
    tmp_path: Path, text: str, by_tcp: bool, expected: Listener
) -> None:
    assert read_listener(config(tmp_path / "home", text), by_tcp) == expected


def test_the_row_is_there_only_where_tcp_listen_is_set(tmp_path: Path) -> None:
    without = config(tmp_path / "a", "")
    with_it = config(tmp_path / "b", '[vault]\ntcp_listen = "127.0.0.1:8471"\n')
    assert "vault tcp" not in [c.name for c in checks(without, {})]
    assert "vault tcp" in [c.name for c in checks(with_it, {})]


async def test_with_the_vault_down_the_listener_is_judged_but_not_dialled(tmp_path: Path) -> None:
    cfg = fresh_home(tmp_path / "home")  # its NATS port is free: nothing answers
    cfg = variant(cfg, vault={"tcp_listen": "127.0.0.1:8471", "tcp_tls": True})
    result = await row(cfg)
    assert (result.status, result.detail) == (
        "ok",
        "127.0.0.1:8471, TLS for 127.0.0.1; not dialled: the vault does not run",
    )


async def test_without_the_gateway_ca_nothing_is_trusted(tmp_path: Path) -> None:
    cfg = fresh_home(tmp_path / "home")  # never started: no CA
    answer = await dial_listener(cfg, Listener("127.0.0.1:1", "127.0.0.1", 1, True, ("127.0.0.1",)))
    assert answer.problem == "untrusted" and "cannot be loaded" in answer.detail


async def test_a_listener_with_another_cas_certificate_is_not_trusted(short_home: Path) -> None:
    """Another program on the port, with a certificate the gateway CA did not issue: refused as a relay refuses it."""
    cfg = fresh_home(short_home / "home")
    CertificateAuthority.load_or_create(cfg.keys_dir / CA_KEY, cfg.keys_dir / CA_CERT, "this install")
    other = make_tls(["127.0.0.1"], str(short_home))
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=other.server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await dial_listener(cfg, Listener(f"127.0.0.1:{port}", "127.0.0.1", port, True, ("127.0.0.1",)))
    finally:
        server.close()
        await server.wait_closed()
    assert answer.problem == "untrusted" and "not one the gateway CA issued" in answer.detail, answer


# ---- against a real vault ----------------------------------------------------------------------------


def variant(cfg: config_mod.Config, vault: dict[str, Any] | None = None, runner: dict[str, Any] | None = None) -> Any:
    """`cfg` as config.toml would give it after an edit the running vault has not seen."""
    return msgspec.structs.replace(
        cfg,
        vault=msgspec.structs.replace(cfg.vault, **(vault or {})),
        runner=msgspec.structs.replace(cfg.runner, **(runner or {})),
    )


async def row(cfg: config_mod.Config) -> Result:
    """The `vault tcp` row as `clawden doctor` makes it, its NATS connection closed after."""
    probe = Probe(cfg, {})
    try:
        return await check_vault_tcp(probe)
    finally:
        await probe.close()


async def vault_answers(cfg: config_mod.Config) -> bool:
    try:
        await control.ask(cfg, vault_ctl.SECRETS_LIST, Nothing())
    except control.ControlError:
        return False
    return True


@pytest.fixture
async def vault(request: pytest.FixtureRequest, nats_server: NatsServer, short_home: Path) -> AsyncIterator[Any]:
    """`clawden run vault` with its TCP listener on loopback, `tcp_tls` as the test's parameter says."""
    home = short_home / "home"
    cfg = setup.init(home)
    cfg.path("config.toml").write_text(f"""\
install_id = "dtcp"
[nats]
url = "{nats_server.url}"
[vault]
tcp_listen = "127.0.0.1:{natsserver.free_port()}"
tcp_tls = {request.param}
""")
    cfg = config_mod.load(home, environ={})
    log = short_home / "vault.log"
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    env.pop("ANTHROPIC_API_KEY", None)
    proc = spawn_vault(env, log)
    try:
        await eventually(lambda: vault_answers(cfg), timeout=30, message=log.read_text)
        yield cfg
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()


@pytest.mark.parametrize("vault", ["true"], indirect=True)
async def test_a_running_tls_listener_is_dialled_as_a_runner_dials_it(vault: config_mod.Config) -> None:
    listen = vault.vault.tcp_listen
    result = await row(vault)
    assert result.status == "ok", result
    assert result.detail == (
        f"{listen}, TLS for 127.0.0.1; a TLS handshake trusting the gateway CA alone, checking 127.0.0.1,"
        " then a 407 to a request without a token"
    )

    # config.toml now names vault.test, which this host's runner dials, but the vault still runs with the old
    # certificate: the handshake checking that name fails, and the row says what the certificate names
    edited = variant(
        vault,
        vault={"tcp_names": ["vault.test"]},
        runner={"vault_transport": "tcp", "vault_tcp_host": "vault.test"},
    )
    stale = await row(edited)
    assert stale.status == "FAIL" and "does not name vault.test (it names 127.0.0.1)" in stale.detail, stale
    assert stale.fix.startswith("restart the vault")

    # config.toml says the listener is in clear; the vault speaks TLS there
    plain = await row(variant(vault, vault={"tcp_tls": False}))
    assert plain.status == "FAIL" and "does not answer as the vault's gateway" in plain.detail, plain

    # a port where nothing listens, the vault running
    elsewhere = variant(vault, vault={"tcp_listen": f"127.0.0.1:{natsserver.free_port()}"})
    silent = await row(elsewhere)
    assert silent.status == "FAIL" and "nothing answers on 127.0.0.1:" in silent.detail, silent


@pytest.mark.parametrize("vault", ['"auto"'], indirect=True)
async def test_a_running_plain_loopback_listener_answers_407(vault: config_mod.Config) -> None:
    result = await row(vault)
    assert result == Result(
        "ok", f"{vault.vault.tcp_listen}, plain TCP on loopback; it answers a request without a token with 407"
    )

    # config.toml now asks for TLS; the vault still listens in clear
    tls = await row(variant(vault, vault={"tcp_tls": True}))
    assert tls.status == "FAIL" and "no TLS handshake on 127.0.0.1:" in tls.detail, tls
    assert "listens in clear" in tls.fix
