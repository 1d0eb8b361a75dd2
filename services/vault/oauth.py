"""The vault's side of app connections: talking to providers' token endpoints (code exchange,
refresh, revoke) through the gateway's verified upstream pool, and holding each connection's access
token in memory, refreshed when its own expiry says so or after a 401, one refresh at a time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlencode, urlsplit

from services.vault.apps import (
    DEVICE_GRANT,
    MAX_TOKEN_RESPONSE,
    Device,
    Grant,
    Provider,
    Refused,
    needs_refresh,
    provider,
    read_device_response,
    read_token_response,
)
from services.vault.upstream import Origin, Upstream, UpstreamError

log = logging.getLogger("clawden.vault")

OWNER = "vault-oauth"  # the upstream pool's owner: never shared with an agent group's connections
USER_AGENT = b"clawden-vault"  # GitHub refuses API calls without a User-Agent


@dataclass(frozen=True)
class Connection:
    """One app connection with its secrets (repr hides them); access tokens change, the rest does not."""

    provider: str
    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)  # "" when the provider gives none (a GitHub OAuth app)
    access_token: str = field(default="", repr=False)
    expires_at: float | None = None
    grants: tuple[str, ...] = ("*",)
    scopes: str = ""

    def granted_to(self, group: str) -> bool:
        return "*" in self.grants or group in self.grants

    @property
    def app(self) -> Provider:
        return provider(self.provider)


class NotConnected(Exception):
    """No usable connection: none stored, not granted, or the provider refused to refresh it."""

    def __init__(self, app: Provider, why: str = "") -> None:
        super().__init__(why or f"{app.name} is not connected")
        self.app = app
        self.why = why


# ---- HTTP to the provider ----


class OAuthClient:
    """Form posts to token endpoints, over the gateway's upstream pool (verified TLS, host map)."""

    def __init__(self, upstream: Upstream, clock: Callable[[], float] = time.time) -> None:
        self._upstream = upstream
        self._clock = clock

    async def _call(self, method: str, url: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
        parts = urlsplit(url)
        origin = Origin(parts.scheme, parts.hostname or "", parts.port or 443)
        head = [
            (b"host", origin.authority),
            (b"accept", b"application/json"),
            (b"user-agent", USER_AGENT),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]
        response = await self._upstream.request(origin, method.encode(), parts.path.encode(), head, body, owner=OWNER)
        data = b""
        async for chunk in self._upstream.body_chunks(response):
            data += chunk
            if len(data) > MAX_TOKEN_RESPONSE:
                raise UpstreamError(502, "bad_gateway", f"{origin.host} sent an oversized token response")
        return response.status, data

    async def _token(self, app: Provider, fields: Mapping[str, str]) -> Grant | Refused:
        body = urlencode(list(fields.items())).encode()
        started = self._clock()
        try:
            status, data = await self._call(
                "POST", app.token_url, body, [(b"content-type", b"application/x-www-form-urlencoded")]
            )
        except UpstreamError as exc:
            return Refused("unreachable", str(exc), exc.status)
        return read_token_response(status, data, started)

    async def exchange(
        self, app: Provider, client_id: str, client_secret: str, code: str, redirect_uri: str, verifier: str
    ) -> Grant | Refused:
        fields = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
        }
        if client_secret:
            fields["client_secret"] = client_secret
        return await self._token(app, fields)

    async def device(self, app: Provider, client_id: str, scopes: tuple[str, ...]) -> Device | Refused:
        """RFC 8628 §3.1: a device code for the owner to confirm at the provider's page."""
        body = urlencode({"client_id": client_id, "scope": " ".join(scopes)}).encode()
        started = self._clock()
        try:
            status, data = await self._call(
                "POST", app.device_url, body, [(b"content-type", b"application/x-www-form-urlencoded")]
            )
        except UpstreamError as exc:
            return Refused("unreachable", str(exc), exc.status)
        return read_device_response(status, data, started)

    async def poll_device(self, app: Provider, client_id: str, client_secret: str, device: Device) -> Grant | Refused:
        """RFC 8628 §3.4: one poll; ``authorization_pending`` or ``slow_down`` until the owner confirms."""
        fields = {"client_id": client_id, "device_code": device.device_code, "grant_type": DEVICE_GRANT}
        if client_secret:
            fields["client_secret"] = client_secret
        return await self._token(app, fields)

    async def refresh(self, conn: Connection) -> Grant | Refused:
        fields = {"grant_type": "refresh_token", "refresh_token": conn.refresh_token, "client_id": conn.client_id}
        if conn.client_secret:
            fields["client_secret"] = conn.client_secret
        return await self._token(conn.app, fields)

    async def revoke(self, conn: Connection) -> bool:
        """Ask the provider to end the grant; False when it could not be told (the vault forgets it anyway)."""
        app = conn.app
        try:
            if app.name == "github":
                # DELETE /applications/{client_id}/grant, Basic client_id:client_secret, the token in JSON.
                basic = base64.b64encode(f"{conn.client_id}:{conn.client_secret}".encode())
                body = json.dumps({"access_token": conn.access_token}).encode()
                status, _ = await self._call(
                    "DELETE",
                    app.revoke_url.format(client_id=conn.client_id),
                    body,
                    [(b"authorization", b"Basic " + basic), (b"content-type", b"application/json")],
                )
                return status == 204
            token = conn.refresh_token or conn.access_token
            status, _ = await self._call(
                "POST",
                app.revoke_url,
                urlencode({"token": token}).encode(),
                [(b"content-type", b"application/x-www-form-urlencoded")],
            )
            return status == 200
        except UpstreamError as exc:
            log.warning("could not tell %s to revoke the connection: %s", app.name, exc)
            return False


# ---- access tokens in memory ----

Persist = Callable[[Connection], Awaitable[None]]


async def _keep(_conn: Connection) -> None:
    return None


class AppTokens:
    """The connections the gateway injects for; each access token refreshed by one caller at a time."""

    def __init__(self, client: OAuthClient | None, clock: Callable[[], float] = time.time, persist: Persist = _keep):
        self.client = client
        self._clock = clock
        self.persist = persist  # stores a refreshed connection (the vault seals it into vault.db)
        self._conns: dict[str, Connection] = {}
        self._refreshing: dict[str, asyncio.Future[Connection]] = {}

    def update(self, connections: list[Connection]) -> None:
        """The stored connections; an access token held for the same grant is kept."""
        fresh: dict[str, Connection] = {}
        for conn in connections:
            held = self._conns.get(conn.provider)
            if held is not None and held.refresh_token == conn.refresh_token and held.client_id == conn.client_id:
                conn = replace(conn, access_token=held.access_token, expires_at=held.expires_at)
            fresh[conn.provider] = conn
        self._conns = fresh

    def remove(self, name: str) -> Connection | None:
        """Forget a connection at once: the next request is no longer signed with it."""
        self._refreshing.pop(name, None)
        return self._conns.pop(name, None)

    def connected(self, name: str, group: str) -> Connection | None:
        conn = self._conns.get(name)
        return conn if conn is not None and conn.granted_to(group) else None

    async def token(self, app: Provider, group: str, stale: str = "") -> str:
        """An access token for ``group``'s requests to ``app``; refreshed first when it is due, or when it
        is ``stale`` (the one a 401 came back for). NotConnected when there is none to give."""
        conn = self.connected(app.name, group)
        if conn is None:
            raise NotConnected(app)
        due = not conn.access_token or needs_refresh(conn.expires_at, self._clock())
        if not due and (not stale or stale != conn.access_token):
            return conn.access_token
        return (await self._refresh(conn)).access_token

    async def _refresh(self, conn: Connection) -> Connection:
        name = conn.provider
        running = self._refreshing.get(name)
        if running is None:
            running = asyncio.ensure_future(self._do_refresh(conn))
            self._refreshing[name] = running
            running.add_done_callback(lambda done: self._forget_refresh(name, done))
        return await asyncio.shield(running)

    def _forget_refresh(self, name: str, done: asyncio.Future[Connection]) -> None:
        if self._refreshing.get(name) is done:  # not a newer one, after a disconnect and a reconnect
            del self._refreshing[name]
        if not done.cancelled():
            done.exception()  # retrieved: a refusal nobody awaited any more is not an asyncio warning

    async def _do_refresh(self, conn: Connection) -> Connection:
        if not conn.refresh_token or self.client is None:
            raise NotConnected(conn.app, f"the {conn.provider} token was refused and cannot be refreshed")
        outcome = await self.client.refresh(conn)
        if isinstance(outcome, Refused):
            log.warning("refreshing the %s connection failed: %s", conn.provider, outcome.error)
            raise NotConnected(conn.app, f"{conn.provider} refused to refresh the connection ({outcome.error})")
        current = self._conns.get(conn.provider)
        if current is None or (current.client_id, current.refresh_token) != (conn.client_id, conn.refresh_token):
            raise NotConnected(conn.app, f"the {conn.provider} connection was removed")  # disconnected meanwhile
        renewed = replace(
            current,
            access_token=outcome.access_token,
            expires_at=outcome.expires_at,
            refresh_token=outcome.refresh_token or conn.refresh_token,  # GitHub rotates it on every refresh
        )
        self._conns[conn.provider] = renewed
        await self.persist(renewed)
        log.info("refreshed the %s access token", conn.provider)
        return renewed

    def values(self) -> list[str]:
        """Every token held (for the leak guard and the response scrubber)."""
        return [v for c in self._conns.values() for v in (c.access_token, c.refresh_token, c.client_secret) if v]
