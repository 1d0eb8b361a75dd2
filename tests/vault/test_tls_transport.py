"""The vault's TCP listener over TLS (`[vault] tcp_tls`, a runner on another host): the hostile-agent and
injection tests of the socket mode run here again with the relay dialing `tls://` to a listener served with a
gateway-CA leaf (`ListenerTls`), the agent's own TLS to the gateway running inside that TLS."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from services.vault.certs import ListenerTls
from services.vault.gateway import Gateway
from services.vault.tcpauth import token_hash
from tests.eventually import eventually
from tests.fakes.anthropic import FakeTLS
from tests.vault.conftest import GROUP, RigFactory, relay, rig_factory
from tests.vault.sites import FakeUpstream

# The hostile-agent and injection tests of the socket mode, collected here again with the TLS rig.
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

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def rig(site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> RigFactory:
    """conftest's rig with the relay dialing the TCP listener over TLS, trusting the gateway CA alone."""

    async def by_tls(gateway: Gateway) -> tuple[asyncio.Server, Path]:
        token = f"clt_{os.urandom(32).hex()}"
        gateway.update_tokens({token_hash(token): GROUP})
        listener = ListenerTls(gateway.ca, sock_dir / "listener", ("127.0.0.1",))
        port = await gateway.listen_tcp("127.0.0.1", 0, listener.context)
        (sock_dir / "token").write_text(token)
        (sock_dir / "ca.pem").write_bytes(gateway.ca.cert_pem)
        monkeypatch.setenv(relay.TOKEN_FILE_ENV, str(sock_dir / "token"))
        monkeypatch.setenv(relay.CA_FILE_ENV, str(sock_dir / "ca.pem"))
        server: asyncio.Server = await relay.serve_relay(f"tls://127.0.0.1:{port}", hide=False)
        return server, sock_dir / "none.sock"

    return rig_factory(site, site_tls, by_tls)


async def test_a_connection_the_agent_closes_ends_at_the_gateway_too(rig: RigFactory) -> None:
    """TLS has no half-close in asyncio: the relay ends the listener's connection when the agent ends its own,
    or the gateway would hold it until its read timeout (10 minutes)."""
    async with rig() as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.relay_port)
        writer.write(b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert len(r.gateway._connections) == 1
        writer.close()
        await eventually(lambda: not r.gateway._connections, timeout=5, message="the gateway still holds it")
