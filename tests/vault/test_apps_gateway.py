"""App connections through the real gateway, driven as an agent drives it (the in-container relay, HTTPS
with the gateway's CA), against the fake Google and GitHub in tests/fakes/oauth.py. The connection is
made with the real authorization-code flow and PKCE; the access token is refreshed when its own expiry
says so or after a 401, and nothing the agent side receives holds a token."""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from clawden import agentcontainer
from services.vault.apps import PLACEHOLDER_TOKEN, PROVIDERS, authorize_url
from services.vault.audit import AuditRecord
from services.vault.catalog import Catalog, Credential, Secret
from services.vault.gateway import Gateway
from services.vault.oauth import Connection, OAuthClient
from services.vault.upstream import Upstream, client_tls
from tests.eventually import eventually
from tests.fakes.anthropic import make_tls
from tests.fakes.oauth import HOSTS, FakeOAuth
from tests.vault.conftest import GROUP, relay
from tests.vault.sites import FakeUpstream

pytestmark = pytest.mark.timeout(20)

GMAIL = "https://gmail.googleapis.com/gmail/v1/users/me/messages"
CLIENT_ID, CLIENT_SECRET = "1234-fake.apps.googleusercontent.com", "GOCSPX-fake-client-secret"
REDIRECT = "http://127.0.0.1:53682/callback"
STUB_REFRESH = {"grant_type": "refresh_token", "refresh_token": "stub", "client_id": "stub", "client_secret": "stub"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class AppRig:
    gateway: Gateway
    fake: FakeOAuth
    server: FakeUpstream
    ca_file: str
    clock: Clock
    relay_port: int
    seen: list[str] = field(default_factory=list)  # everything the agent side received
    audit: list[AuditRecord] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        context = ssl.create_default_context(cadata=self.gateway.ca.cert_pem.decode())
        return httpx.AsyncClient(
            proxy=f"http://127.0.0.1:{self.relay_port}",
            verify=context,
            trust_env=False,
            timeout=5,
            event_hooks={"response": [self._record]},
        )

    async def _record(self, response: httpx.Response) -> None:
        await response.aread()
        self.seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")

    async def connect(self, name: str, agents: tuple[str, ...] = ("*",)) -> Connection:
        """The real code flow: the authorize URL (PKCE S256), the provider's redirect, the code exchange."""
        app = PROVIDERS[name]
        verifier, state = secrets.token_urlsafe(48), secrets.token_urlsafe(16)
        url = urlsplit(authorize_url(app, CLIENT_ID, REDIRECT, state, verifier, app.default_scopes))
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=self.ca_file), trust_env=False) as http:
            consent = await http.get(
                f"https://{self.server.address}{url.path}?{url.query}",
                headers={"host": url.hostname or ""},
                extensions={"sni_hostname": url.hostname},
            )
        assert consent.status_code == 302, consent.text
        back = parse_qs(urlsplit(consent.headers["location"]).query)
        assert back["state"] == [state]
        upstream = Upstream(client_tls(self.ca_file), host_map=dict.fromkeys(HOSTS, self.server.address))
        try:
            grant = await OAuthClient(upstream, self.clock).exchange(
                app, CLIENT_ID, CLIENT_SECRET, back["code"][0], REDIRECT, verifier
            )
        finally:
            await upstream.close()
        assert not hasattr(grant, "error"), grant
        conn = Connection(
            provider=name,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            refresh_token=getattr(grant, "refresh_token", None) or "",
            access_token=getattr(grant, "access_token", ""),
            expires_at=getattr(grant, "expires_at", None),
            grants=agents,
        )
        self.gateway.apps.update([*self.gateway.apps._conns.values(), conn])
        return conn

    def leaked(self) -> list[str]:
        """Every token or client secret that shows up in anything the agent received."""
        values = [*self.fake.issued, CLIENT_SECRET]
        return [v for v in values for text in self.seen if v in text]


@pytest.fixture
async def apps(tmp_path: Path, sock_dir: Path) -> AsyncIterator[AppRig]:
    tls = make_tls(HOSTS, str(tmp_path))
    clock = Clock()
    fake = FakeOAuth(clock=clock)
    fake.client(CLIENT_ID, CLIENT_SECRET)
    server = await FakeUpstream(respond=fake.respond).start(tls.server_context)
    audit: list[AuditRecord] = []
    gateway = Gateway(
        extra_ca_file=tls.ca_file,
        host_map=dict.fromkeys(HOSTS, server.address),
        audit=audit.append,
        clock=clock,
    )
    path = sock_dir / GROUP / "gateway.sock"
    await gateway.listen(GROUP, path, agentcontainer.container_user()[1])  # as the vault: the agent's socket
    relay_server = await relay.serve_relay(str(path))
    try:
        yield AppRig(gateway, fake, server, tls.ca_file, clock, relay_server.sockets[0].getsockname()[1], audit=audit)
    finally:
        relay_server.close()
        await relay_server.wait_closed()
        await gateway.close()
        await server.close()


def bearer(**headers: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {PLACEHOLDER_TOKEN}", **headers}


async def test_gmail_call_is_signed_with_a_refreshed_token_after_the_provider_expires_the_first(apps: AppRig) -> None:
    await apps.connect("google")
    async with apps.client() as agent:
        # The in-container client library "refreshes" its stub credentials: the gateway answers.
        refreshed = await agent.post("https://oauth2.googleapis.com/token", data=STUB_REFRESH)
        first = await agent.get(GMAIL, headers=bearer())
        apps.fake.expire_access_tokens()  # the provider ends the token the vault still holds as good
        second = await agent.get(GMAIL, headers=bearer())

    assert refreshed.status_code == 200
    assert refreshed.json() == {"access_token": PLACEHOLDER_TOKEN, "expires_in": 3599, "token_type": "Bearer"}
    assert first.status_code == second.status_code == 200
    assert second.json()["messages"][0]["id"] == "18c1f0a2"
    gmail = "gmail.googleapis.com/gmail/v1/users/me/messages"
    assert apps.fake.api_calls == [(gmail, 200), (gmail, 401), (gmail, 200)]
    assert apps.fake.grants == ["authorization_code", "refresh_token"]
    assert apps.leaked() == []
    assert [(a.decision, a.injected, a.status) for a in apps.audit] == [
        ("app_token_synthetic", ("app:google",), 200),
        ("allowed", ("app:google",), 200),
        ("allowed", ("app:google",), 200),
    ]


async def test_a_token_due_by_its_own_expiry_is_refreshed_before_use_once_for_many_requests(apps: AppRig) -> None:
    await apps.connect("google")
    apps.clock.now += 3600 - 299  # within the refresh margin of the token's own end
    async with apps.client() as agent:
        answers = await asyncio.gather(*(agent.get(GMAIL, headers=bearer()) for _ in range(5)))

    assert [a.status_code for a in answers] == [200] * 5
    assert apps.fake.grants == ["authorization_code", "refresh_token"]  # single-flight
    assert all(status == 200 for _, status in apps.fake.api_calls)  # never sent a token the provider refused
    assert apps.leaked() == []


async def test_disconnecting_stops_injection_at_once(apps: AppRig) -> None:
    await apps.connect("google")
    async with apps.client() as agent:
        before = await agent.get(GMAIL, headers=bearer())
        apps.gateway.apps.remove("google")
        after = await agent.get(GMAIL, headers=bearer())
        token_call = await agent.post("https://oauth2.googleapis.com/token", data=STUB_REFRESH)

    assert before.status_code == 200
    assert after.status_code == 401
    assert after.json()["error"] == "app_not_connected"
    assert after.json()["connect_command"] == "clawden apps connect google"
    assert after.headers["x-should-retry"] == "false"
    assert token_call.status_code == 400 and token_call.json()["error"] == "app_not_connected"
    assert apps.fake.grants == ["authorization_code"]
    assert apps.leaked() == []


async def test_an_app_that_was_never_connected_or_not_granted_gets_app_not_connected(apps: AppRig) -> None:
    async with apps.client() as agent:
        never = await agent.get(GMAIL, headers=bearer())
        await apps.connect("google", agents=("someone-else",))
        other = await agent.get(GMAIL, headers=bearer())

    for answer in (never, other):
        assert answer.status_code == 401
        assert answer.json()["provider"] == "google"
        assert "clawden apps connect google" in answer.json()["message"]
    assert apps.leaked() == []


async def test_a_refresh_the_provider_refuses_tells_the_agent_to_reconnect(apps: AppRig) -> None:
    conn = await apps.connect("google")
    apps.fake.refresh_tokens.pop(conn.refresh_token)  # the user revoked access in their Google account
    apps.fake.expire_access_tokens()
    async with apps.client() as agent:
        answer = await agent.get(GMAIL, headers=bearer())

    assert answer.status_code == 401
    assert answer.json()["error"] == "app_not_connected"
    assert "refused to refresh" in answer.json()["message"]
    assert apps.leaked() == []


async def test_github_user_call_carries_the_connection_token(apps: AppRig) -> None:
    await apps.connect("github")
    async with apps.client() as agent:
        user = await agent.get("https://api.github.com/user", headers={"user-agent": "agent/1"})
        apps.gateway.apps.remove("github")
        gone = await agent.get("https://api.github.com/user", headers={"user-agent": "agent/1"})

    assert user.status_code == 200 and user.json()["login"] == "ada"
    assert gone.status_code == 401 and gone.json()["error"] == "app_not_connected"
    assert apps.fake.grants == ["authorization_code"]  # an OAuth app's token does not expire
    assert apps.leaked() == []


async def test_under_an_allowlist_a_connected_apps_hosts_are_reachable_and_others_are_not(apps: AppRig) -> None:
    apps.gateway.update_catalog(Catalog(egress={GROUP: "allowlist"}))
    await apps.connect("google")
    async with apps.client() as agent:
        gmail = await agent.get(GMAIL, headers=bearer())
        token = await agent.post("https://oauth2.googleapis.com/token", data=STUB_REFRESH)
        github = await agent.get("https://api.github.com/user", headers={"user-agent": "agent/1"})
        apps.gateway.apps.remove("google")
        after = await agent.get(GMAIL, headers=bearer())

    assert gmail.status_code == token.status_code == 200
    assert github.status_code == 403 and github.json()["error"] == "blocked_by_default_policy"
    assert after.status_code == 403 and after.json()["error"] == "blocked_by_default_policy"
    assert apps.leaked() == []


async def test_a_rotated_github_refresh_token_is_kept_and_used_for_the_next_refresh(apps: AppRig) -> None:
    apps.fake.github_expiring = True
    stored: list[Connection] = []

    async def persist(conn: Connection) -> None:
        stored.append(conn)

    apps.gateway.apps.persist = persist
    first = await apps.connect("github")
    answers = []
    async with apps.client() as agent:
        for _ in range(2):
            apps.fake.expire_access_tokens()
            answers.append(await agent.get("https://api.github.com/user", headers={"user-agent": "agent/1"}))

    assert [a.status_code for a in answers] == [200, 200]
    assert apps.fake.grants == ["authorization_code", "refresh_token", "refresh_token"]
    assert len(stored) == 2  # each refresh was written back
    assert len({first.refresh_token, stored[0].refresh_token, stored[1].refresh_token}) == 3
    assert list(apps.fake.refresh_tokens) == [stored[1].refresh_token]  # the live one is the one kept
    assert apps.leaked() == []


async def test_disconnecting_while_a_refresh_is_in_flight_signs_nothing_with_its_result(apps: AppRig) -> None:
    await apps.connect("google")
    apps.fake.expire_access_tokens()
    apps.fake.hold_tokens = asyncio.Event()
    async with apps.client() as agent:
        call = asyncio.create_task(agent.get(GMAIL, headers=bearer()))
        await eventually(lambda: apps.fake.token_calls_waiting == 1)  # the 401 came back; the refresh is out
        apps.gateway.apps.remove("google")
        apps.fake.hold_tokens.set()
        answer = await call

    assert answer.status_code == 401 and answer.json()["error"] == "app_not_connected"
    gmail = "gmail.googleapis.com/gmail/v1/users/me/messages"
    assert apps.fake.api_calls == [(gmail, 401)]  # the token the refresh got was never sent
    assert apps.gateway.apps.connected("google", GROUP) is None
    assert apps.leaked() == []


async def test_nothing_but_the_apis_hosts_is_signed_not_even_the_token_endpoints_other_paths(apps: AppRig) -> None:
    await apps.connect("google")
    async with apps.client() as agent:
        info = await agent.get("https://oauth2.googleapis.com/tokeninfo", params={"access_token": PLACEHOLDER_TOKEN})
        old_style = await agent.post("https://www.googleapis.com/oauth2/v4/token", data=STUB_REFRESH)

    assert info.status_code == 404  # forwarded as it was: the fake has no such page
    [forwarded] = [r for r in apps.server.received if r.target.startswith(b"/tokeninfo")]
    assert forwarded.header(b"authorization") is None
    assert old_style.json()["access_token"] == PLACEHOLDER_TOKEN
    assert apps.leaked() == []


async def test_a_stored_secret_for_the_host_wins_over_the_app_connection(apps: AppRig) -> None:
    pat = Credential(
        Secret(
            name="gmail-key",
            kind="generic",
            host_pattern="gmail.googleapis.com",
            header_name="Authorization",
            value_format="Bearer {value}",
            grants=("*",),
        ),
        "ya29.stored-by-hand-0123456789",
    )
    apps.gateway.update_catalog(Catalog(credentials=(pat,)))
    await apps.connect("google")
    async with apps.client() as agent:
        answer = await agent.get(GMAIL, headers=bearer())

    assert answer.status_code == 401  # the fake knows only the tokens it issued: the stored one went
    [sent] = [r for r in apps.server.received if r.target.startswith(b"/gmail/")]
    assert sent.header(b"authorization") == b"Bearer ya29.stored-by-hand-0123456789"
    assert [a.injected for a in apps.audit] == [("gmail-key",)]
