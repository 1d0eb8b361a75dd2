"""Fixtures for the vault's tests: fake sites over TLS, a gateway that maps their names to loopback,
and an agent-side HTTP client that goes through the real in-container relay."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from clawden import agentcontainer
from services.vault.approvals import ApprovalAsk, LimitTrip, Outcome
from services.vault.audit import AuditRecord
from services.vault.catalog import Catalog, Credential, Rule, Secret
from services.vault.gateway import Gateway
from tests.fakes.anthropic import FakeTLS, make_tls
from tests.vault.sites import FakeUpstream, load_relay

GROUP = "family"
SITES = ["api.example.test", "other.example.test", "api.anthropic.com", "api.openai.com"]
relay = load_relay()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes, too short for pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="clawden-gw-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def site_tls(sock_dir: Path) -> FakeTLS:
    return make_tls(SITES, str(sock_dir))


@pytest.fixture
async def site(site_tls: FakeTLS) -> AsyncIterator[FakeUpstream]:
    """One TLS site answering for every name in SITES (the gateway's host map points them here)."""
    fake = await FakeUpstream().start(site_tls.server_context)
    yield fake
    await fake.close()


class ScriptedApprover:
    """Stands in for the bus: each ask waits for the next outcome given with ``answer``."""

    def __init__(self) -> None:
        self.asks: list[ApprovalAsk] = []
        self.asked = asyncio.Event()
        self.cancelled = 0
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self.trips: list[LimitTrip] = []

    async def tell_limit(self, trip: LimitTrip) -> None:
        self.trips.append(trip)

    def answer(self, *outcomes: Outcome) -> None:
        for outcome in outcomes:
            self._outcomes.put_nowait(outcome)

    async def ask(self, ask: ApprovalAsk) -> Outcome:
        self.asks.append(ask)
        self.asked.set()
        try:
            return await self._outcomes.get()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def secret(name: str, kind: str, host: str, value: str, grants: tuple[str, ...] = ("*",), **kw: Any) -> Credential:
    return Credential(Secret(name=name, kind=kind, host_pattern=host, grants=grants, **kw), value)  # type: ignore[arg-type]


def rule(name: str, action: str, host: str, **kw: Any) -> Rule:
    return Rule(name=name, action=action, host_pattern=host, **kw)  # type: ignore[arg-type]


@dataclass
class Rig:
    gateway: Gateway
    socket: Path
    site: FakeUpstream
    audit: list[AuditRecord]
    approver: ScriptedApprover
    relay_port: int

    def client(self, **kw: Any) -> httpx.AsyncClient:
        """An agent's HTTPS client: HTTPS_PROXY is the relay, and it trusts the gateway's CA."""
        context = ssl.create_default_context(cadata=self.gateway.ca.cert_pem.decode())
        return httpx.AsyncClient(
            proxy=f"http://127.0.0.1:{self.relay_port}",
            verify=context,
            trust_env=False,
            timeout=kw.pop("timeout", 5),
            **kw,
        )

    def plain(self) -> httpx.AsyncClient:
        """The compatibility path: plain HTTP to the socket, as ANTHROPIC_BASE_URL=http://relay sends it."""
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)), base_url="http://127.0.0.1:3128", timeout=5
        )


RigFactory = Callable[..., contextlib.AbstractAsyncContextManager[Rig]]


# Starts the agent's relay to the gateway: its server and the socket a plain client may use.
RelayFor = Callable[[Gateway], Awaitable[tuple[asyncio.Server, Path]]]


def rig_factory(site: FakeUpstream, site_tls: FakeTLS, relay_for: RelayFor) -> RigFactory:
    """A gateway with these credentials, rules and egress, behind the relay `relay_for` starts."""

    @contextlib.asynccontextmanager
    async def make(
        credentials: tuple[Credential, ...] = (),
        rules: tuple[Rule, ...] = (),
        egress: dict[str, str] | None = None,
        **kw: Any,
    ) -> AsyncIterator[Rig]:
        audit: list[AuditRecord] = []
        approver = ScriptedApprover()
        catalog = Catalog(credentials=credentials, rules=rules, egress=egress or {})  # type: ignore[arg-type]
        gateway = Gateway(
            kw.pop("model_upstream", "https://api.anthropic.com"),
            catalog=catalog,
            extra_ca_file=site_tls.ca_file,
            host_map=dict.fromkeys(SITES, kw.pop("site_address", None) or site.address),
            audit=audit.append,
            approver=approver,
            **kw,
        )
        server, path = await relay_for(gateway)
        try:
            yield Rig(gateway, path, site, audit, approver, server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()
            await gateway.close()

    return make


@pytest.fixture
def rig(site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path) -> RigFactory:
    """The socket mode: the group's gateway socket, and the relay in front of it."""

    async def by_socket(gateway: Gateway) -> tuple[asyncio.Server, Path]:
        path = sock_dir / GROUP / "gateway.sock"
        await gateway.listen(GROUP, path, agentcontainer.container_user()[1])  # as the vault: the agent's socket
        return await relay.serve_relay(str(path)), path

    return rig_factory(site, site_tls, by_socket)
