"""The vault over TCP (`runner.vault_transport = "tcp"`, Docker Desktop): the in-container relay shows its
container's token on the gateway's TCP listener, which names the group by it as a socket does.

The hostile-agent tests of the socket mode run here again with the relay in tcp mode (the `rig` below
replaces conftest's): the same relay code, the same gateway listener and token check as on Docker
Desktop; only the dial is to 127.0.0.1 instead of host.docker.internal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import h11
import httpx
import pytest

from services.vault import tcpauth
from services.vault.audit import AuditRecord
from services.vault.catalog import Catalog
from services.vault.gateway import Gateway
from services.vault.tcpauth import token_hash
from tests.fakes.anthropic import FakeTLS
from tests.vault.conftest import GROUP, SITES, RigFactory, relay, rig_factory, secret
from tests.vault.sites import FakeUpstream, Received, Reply, respond_json

# The hostile-agent and injection tests of the socket mode, collected here again with the tcp rig.
from tests.vault.test_gateway import (  # noqa: F401
    lax_site,
    test_a_blocked_path_gets_403_and_never_reaches_the_site,
    test_a_body_on_a_get_is_refused_so_it_cannot_become_a_request_no_rule_saw,
    test_a_rate_limited_host_answers_429_after_the_limit,
    test_a_secret_value_sent_to_another_host_is_blocked,
    test_a_stored_value_in_a_streamed_body_is_redacted_and_a_disguised_one_refused,
    test_an_approval_gated_request_waits_then_passes_on_approve,
    test_each_secret_type_is_injected_its_own_way,
    test_hop_by_hop_headers_are_stripped_both_ways,
    test_https_request_gets_the_real_key_and_the_agent_never_sees_it,
    test_names_that_resolve_to_private_addresses_are_not_reached,
    test_no_secret_value_reaches_logs_audit_or_errors,
    test_sse_flows_event_by_event_through_the_tunnel,
)
from tests.vault.test_path_injection import test_the_site_gets_the_value_in_the_path_and_the_agent_never_sees_it  # noqa: F401

pytestmark = pytest.mark.timeout(20)

OTHER = "other"
KEY = "sk-ant-api03-real-key-for-tcp-tests"


@pytest.fixture
def rig(site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> RigFactory:
    """conftest's rig with the relay in tcp mode: the gateway's TCP listener, this container's token."""

    async def by_tcp(gateway: Gateway) -> tuple[asyncio.Server, Path]:
        return await tcp_relay(gateway, GROUP, sock_dir, monkeypatch), sock_dir / "none.sock"

    return rig_factory(site, site_tls, by_tcp)


async def tcp_relay(
    gateway: Gateway, group: str, folder: Path, monkeypatch: pytest.MonkeyPatch, *, token: str = ""
) -> asyncio.Server:
    """A container's relay for `group`: its token registered with the gateway and left in a file for the relay."""
    token = token or f"clt_{os.urandom(32).hex()}"
    gateway.update_tokens({**gateway._tokens, token_hash(token): group})
    port = gateway_port(gateway) or await gateway.listen_tcp("127.0.0.1", 0)
    token_file = folder / f"token-{group}"
    token_file.write_text(token)
    monkeypatch.setenv(relay.TOKEN_FILE_ENV, str(token_file))
    # hide=False: this is pytest's own process; the container test checks the non-dumpable relay.
    server: asyncio.Server = await relay.serve_relay(f"tcp://127.0.0.1:{port}", hide=False)
    assert not token_file.exists()  # taken: read and deleted before any agent could run
    return server


def gateway_port(gateway: Gateway) -> int:
    return next((int(key.rsplit(":", 1)[1]) for key in gateway._servers if key.startswith("tcp:")), 0)


def basic(token: str, user: str = "x") -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


# ---- pure parts, as tables ----


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("/run/clawden/gateway/gateway.sock", relay.Target(path="/run/clawden/gateway/gateway.sock")),
        (
            "tcp://host.docker.internal:8471",
            relay.Target(host="host.docker.internal", port=8471, token=True, name="host.docker.internal"),
        ),
        ("tcp://[::1]:8471", relay.Target(host="::1", port=8471, token=True, name="::1")),
        ("tcp+unix:/run/clawden/gateway/tcp.sock", relay.Target(path="/run/clawden/gateway/tcp.sock", token=True)),
        # the listener speaking TLS: its certificate must name the host dialed, or the name after #
        (
            "tls://vault.home.arpa:8471",
            relay.Target(host="vault.home.arpa", port=8471, token=True, tls=True, name="vault.home.arpa"),
        ),
        (
            "tls+unix:/run/clawden/gateway/tcp.sock#127.0.0.1",
            relay.Target(path="/run/clawden/gateway/tcp.sock", token=True, tls=True, name="127.0.0.1"),
        ),
    ],
)
def test_the_relay_reads_its_gateway_as_a_socket_or_the_tcp_listener(text: str, target: object) -> None:
    assert relay.parse_target(text) == target


@pytest.mark.parametrize(
    "text",
    [
        "tcp://host",
        "tcp://:80",
        "tcp://h:0",
        "tcp://h:99999",
        "tls://h",
        "tcp+unix:relative.sock",
        "tls+unix:/run/x.sock",  # no name to check
        "tls+unix:relative.sock#h",
        "gateway.sock",
        "",
    ],
)
def test_a_gateway_the_relay_cannot_read_stops_it_loudly(text: str) -> None:
    with pytest.raises(relay.RelayError):
        relay.parse_target(text)


@pytest.mark.parametrize(
    ("head", "out"),
    [
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", b"CONNECT a:443 HTTP/1.1\r\nPA\r\nHost: a:443\r\n\r\n"),
        # the agent's own token, however spelled, goes: only the container's is shown
        (
            b"CONNECT a:443 HTTP/1.1\r\nproxy-AUTHORIZATION : Basic Zm9yZ2Vk\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nPA\r\nHost: a\r\n\r\n",
        ),
        (b"GET http://a/ HTTP/1.1\nHost: a\n\n", b"GET http://a/ HTTP/1.1\r\nPA\r\nHost: a\r\n\r\n"),
        # what a gateway might read otherwise: refused, never passed on
        (b"GET / HTTP/1.1\r\nX: a\rProxy-Authorization: Basic Zm9yZ2Vk\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nX: a\r\n Proxy-Authorization: Basic Zm9yZ2Vk\r\n\r\n", None),
        (b"GET / HTTP/1.1\n\nProxy-Authorization: Basic Zm9yZ2Vk\r\n\r\n", None),
        (b"\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\n", None),
    ],
)
def test_the_relay_puts_its_token_in_place_of_any_the_agent_wrote(head: bytes, out: bytes | None) -> None:
    expected = out.replace(b"PA", f"Proxy-Authorization: {basic('tok', 'clawden')}".encode()) if out else None
    assert relay.with_token(head, "tok") == expected


def test_the_token_file_is_read_once_and_deleted(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("clt_abc\n")
    assert relay.take_token(str(path)) == "clt_abc"
    assert not path.exists()
    with pytest.raises(relay.RelayError, match="cannot be taken"):
        relay.take_token(str(path))
    path.write_text("")
    with pytest.raises(relay.RelayError, match="empty"):
        relay.take_token(str(path))


# ---- through the real gateway's TCP listener ----


@contextlib.asynccontextmanager
async def two_groups(site: FakeUpstream, site_tls: FakeTLS, audit: list[AuditRecord]) -> AsyncIterator[Gateway]:
    """A gateway whose GitHub secret is OTHER's alone."""
    github = secret("gh", "generic", "api.example.test", "ghp_others", grants=(OTHER,), header_name="Authorization")
    gateway = Gateway(
        "https://api.anthropic.com",
        catalog=Catalog(credentials=(github,)),
        extra_ca_file=site_tls.ca_file,
        host_map=dict.fromkeys(SITES, site.address),
        audit=audit.append,
    )
    try:
        yield gateway
    finally:
        await gateway.close()


async def test_an_agent_that_writes_another_groups_token_is_still_its_own_group(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    others = f"clt_{os.urandom(32).hex()}"
    audit: list[AuditRecord] = []
    async with two_groups(site, site_tls, audit) as gateway:
        theirs = await tcp_relay(gateway, OTHER, sock_dir, monkeypatch, token=others)
        mine = await tcp_relay(gateway, GROUP, sock_dir, monkeypatch)
        context = ssl.create_default_context(cadata=gateway.ca.cert_pem.decode())
        try:
            # GROUP's agent learnt OTHER's token and puts it in its proxy URL: the relay shows its own instead.
            async with httpx.AsyncClient(
                proxy=f"http://x:{others}@127.0.0.1:{mine.sockets[0].getsockname()[1]}",
                verify=context,
                trust_env=False,
                timeout=5,
            ) as http:
                answer = await http.get("https://api.example.test/user")
        finally:
            for server in (mine, theirs):
                server.close()
                await server.wait_closed()

    assert answer.status_code == 200
    assert [a.agent_group for a in audit] == [GROUP]
    assert [a.injected for a in audit] == [()]
    assert [r.header(b"authorization") for r in site.received] == [None]  # OTHER's secret never went out


async def raw_exchange(port: int, *heads: str) -> list[bytes]:
    """Plain requests on one connection straight to the listener (an agent that dials it without the
    relay, as one on Docker Desktop could): each answer's status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return [await exchange(reader, writer, head) for head in heads]
    finally:
        writer.close()
        await writer.wait_closed()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str) -> bytes:
    """One request on an open connection: its answer's status line and body."""
    writer.write(head.encode())
    answer = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(
            (line.split(b":")[1] for line in answer.split(b"\r\n") if line.lower().startswith(b"content-length")),
            b"0",
        )
    )
    body = await reader.readexactly(length)
    return answer.split(b"\r\n")[0] + b" " + body


def model_call(token: str | None) -> str:
    auth = f"Proxy-Authorization: {basic(token)}\r\n" if token else ""
    return f"GET /v1/models HTTP/1.1\r\nHost: api.anthropic.com\r\n{auth}\r\n"


async def test_the_listener_refuses_no_token_a_stale_one_and_a_second_groups_on_one_connection(
    site: FakeUpstream, site_tls: FakeTLS
) -> None:
    audit: list[AuditRecord] = []
    async with two_groups(site, site_tls, audit) as gateway:
        gateway.update_tokens({token_hash("old"): GROUP})
        gateway.update_tokens({token_hash("new"): GROUP, token_hash("theirs"): OTHER})  # the container was made again
        port = await gateway.listen_tcp("127.0.0.1", 0)
        none = await raw_exchange(port, model_call(None))
        stale = await raw_exchange(port, model_call("old"))
        swapped = await raw_exchange(port, model_call("new"), model_call(None), model_call("theirs"))

    assert none[0].startswith(b"HTTP/1.1 407 ") and b'"error":"proxy_auth_required"' in none[0].replace(b" ", b"")
    assert tcpauth.NO_TOKEN.encode() in none[0]
    assert stale[0].startswith(b"HTTP/1.1 407 ") and b"no longer valid" in stale[0]
    first, tokenless, theirs = swapped
    assert first.startswith(b"HTTP/1.1 200 ") and tokenless.startswith(b"HTTP/1.1 200 ")
    assert theirs.startswith(b"HTTP/1.1 407 ") and b"another agent group" in theirs
    assert {a.agent_group for a in audit} == {GROUP}


async def test_a_withdrawn_token_ends_the_connections_already_open_with_it(
    site: FakeUpstream, site_tls: FakeTLS
) -> None:
    async def json_or_websocket(request: Received, reply: Reply) -> None:
        if request.target != b"/socket":
            return await respond_json(request, reply)
        switch = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
        await reply.send(h11.InformationalResponse(status_code=101, headers=switch))
        await asyncio.Event().wait()  # the site keeps its end of the WebSocket open

    site.respond = json_or_websocket
    audit: list[AuditRecord] = []
    async with two_groups(site, site_tls, audit) as gateway:
        gateway.update_tokens({token_hash("gone"): GROUP, token_hash("kept"): GROUP})
        port = await gateway.listen_tcp("127.0.0.1", 0)
        context = ssl.create_default_context(cadata=gateway.ca.cert_pem.decode())
        keep_alive = await asyncio.open_connection("127.0.0.1", port)
        tunnel = await asyncio.open_connection("127.0.0.1", port)
        websocket = await asyncio.open_connection("127.0.0.1", port)
        kept = await asyncio.open_connection("127.0.0.1", port)
        connect = (
            "CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n"
            f"Proxy-Authorization: {basic('gone')}\r\n\r\n"
        )
        get = "GET /user HTTP/1.1\r\nHost: api.example.test\r\n\r\n"
        upgrade = "GET /socket HTTP/1.1\r\nHost: api.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        try:
            assert (await exchange(*keep_alive, model_call("gone"))).startswith(b"HTTP/1.1 200 ")
            for reader, writer in (tunnel, websocket):
                assert (await exchange(reader, writer, connect)).startswith(b"HTTP/1.1 200 ")
                await writer.start_tls(context, server_hostname="api.example.test")
            assert (await exchange(*tunnel, get)).startswith(b"HTTP/1.1 200 ")
            assert (await exchange(*websocket, upgrade)).startswith(b"HTTP/1.1 101 ")
            assert (await exchange(*kept, model_call("kept"))).startswith(b"HTTP/1.1 200 ")

            gateway.update_tokens({token_hash("kept"): GROUP})  # the runner withdrew the container's token

            # Each connection that showed it is closed: no later request on it can use the withdrawn token.
            for reader, _ in (keep_alive, tunnel, websocket):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            assert (await exchange(*kept, model_call(None))).startswith(b"HTTP/1.1 200 ")  # a kept token's goes on
        finally:
            for _, writer in (keep_alive, tunnel, websocket, kept):
                writer.close()
    assert [r.target for r in site.received] == [b"/v1/models", b"/user", b"/socket", b"/v1/models", b"/v1/models"]


async def test_a_head_the_relay_will_not_rewrite_gets_400_and_never_reaches_the_gateway(
    site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit: list[AuditRecord] = []
    async with two_groups(site, site_tls, audit) as gateway:
        server = await tcp_relay(gateway, GROUP, sock_dir, monkeypatch)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            # A folded line: a gateway that unfolded it would read the agent's own Proxy-Authorization.
            writer.write(
                b"GET /v1/models HTTP/1.1\r\nHost: api.anthropic.com\r\n Proxy-Authorization: Basic eDp5\r\n\r\n"
            )
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert audit == [] and site.received == []


async def test_a_tls_gateway_whose_ca_is_not_mounted_stops_the_relay_before_it_takes_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("clt_not-taken")
    monkeypatch.setenv(relay.TOKEN_FILE_ENV, str(token))
    monkeypatch.setenv(relay.CA_FILE_ENV, str(tmp_path / "missing-ca.pem"))
    with pytest.raises(relay.RelayError, match=r"gateway CA at .*missing-ca\.pem cannot be loaded"):
        await relay.serve_relay("tls://127.0.0.1:8471", hide=False)
