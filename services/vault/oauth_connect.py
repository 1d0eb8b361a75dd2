"""`clawden apps connect|list|disconnect` on the vault's side: the PKCE verifier and state are kept here
while the owner consents in a browser, the code is exchanged here, and the refresh token, the access
token and the client secret go into vault.db sealed. Only descriptions ever leave: no token, no secret.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as api
from clawden.runtime import ControlError
from services.vault.apps import (
    DEVICE_WAITING,
    AppError,
    Device,
    Grant,
    Provider,
    Refused,
    authorize_url,
    check_redirect_uri,
    check_scopes,
    next_interval,
    provider,
)
from services.vault.catalog import GROUP
from services.vault.oauth import AppTokens, Connection
from services.vault.refusals import NotFound
from services.vault.sealing import Sealer, SealError
from services.vault.store import Store

log = logging.getLogger("clawden.vault")

PENDING_SECONDS = 600.0  # the owner has this long to consent in the browser
MAX_PENDING = 8
AuditChange = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Pending:
    app: Provider
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str
    verifier: str = field(repr=False)
    scopes: tuple[str, ...]
    agents: tuple[str, ...]
    expires_at: float
    device: Device | None = None  # a device-code connect (RFC 8628): no redirect, no verifier


def _context(name: str, part: str) -> str:
    return f"app:{name}:{part}"


class AppConnections:
    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        tokens: AppTokens,
        audit_change: AuditChange,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.tokens = tokens
        self.audit_change = audit_change
        self.clock = clock
        self._pending: dict[str, Pending] = {}
        tokens.persist = self.persist

    # -- vault.db <-> the gateway's tokens --

    async def load(self) -> None:
        rows = await self.store.run(self.store.apps)
        self.tokens.update([c for c in map(self._open, rows) if c is not None])

    def _open(self, row: dict[str, Any]) -> Connection | None:
        name = row["provider"]
        try:
            return Connection(
                provider=name,
                client_id=row["client_id"],
                client_secret=self.sealer.open(row["client_secret_sealed"], _context(name, "client-secret")),
                refresh_token=self.sealer.open(row["refresh_sealed"], _context(name, "refresh")),
                access_token=self.sealer.open(row["access_sealed"], _context(name, "access")),
                expires_at=row["expires_at"],
                grants=tuple(json.loads(row["grants"])),
                scopes=row["scopes"],
            )
        except SealError:
            log.error("the %s connection does not open with this vault key; it is not used", name)
            return None

    def _row(self, conn: Connection, now: float) -> dict[str, Any]:
        name = conn.provider
        return {
            "provider": name,
            "client_id": conn.client_id,
            "client_secret_sealed": self.sealer.seal(conn.client_secret, _context(name, "client-secret")),
            "refresh_sealed": self.sealer.seal(conn.refresh_token, _context(name, "refresh")),
            "access_sealed": self.sealer.seal(conn.access_token, _context(name, "access")),
            "expires_at": conn.expires_at,
            "scopes": conn.scopes,
            "grants": json.dumps(list(conn.grants)),
            "created_at": now,
            "refreshed_at": None,
        }

    async def persist(self, conn: Connection) -> None:
        """A refresh's outcome into vault.db: a rotated refresh token must survive a restart."""
        name = conn.provider
        await self.store.run(
            self.store.save_app_tokens,
            name,
            self.sealer.seal(conn.refresh_token, _context(name, "refresh")),
            self.sealer.seal(conn.access_token, _context(name, "access")),
            conn.expires_at,
            self.clock(),
        )

    # -- control endpoints --

    def _checked(
        self, name: str, client_id: str, scopes: list[str], agents: list[str]
    ) -> tuple[Provider, tuple[str, ...], tuple[str, ...]]:
        try:
            app = provider(name)
            checked_scopes = check_scopes(app, scopes)
        except AppError as exc:
            raise ControlError(str(exc)) from None
        if not client_id or len(client_id) > 256 or not client_id.isprintable():
            raise ControlError("--client-id is the OAuth client's id from the provider's console")
        groups = tuple(sorted(set(agents or ["*"])))
        if bad := [a for a in groups if not GROUP.match(a)]:
            raise ControlError(f"{bad[0]!r} is not an agent group name")
        return app, checked_scopes, groups

    def _remember(self, pending: Pending) -> str:
        """A state naming the connect in progress (at most MAX_PENDING wait at once)."""
        now = self.clock()
        self._pending = {s: p for s, p in self._pending.items() if p.expires_at > now}
        if len(self._pending) >= MAX_PENDING:
            raise ControlError(f"{MAX_PENDING} connects are waiting already; finish them or let them lapse")
        state = secrets.token_urlsafe(24)
        self._pending[state] = pending
        return state

    async def on_begin(self, request: api.AppBegin) -> api.AppAuthorize:
        app, scopes, agents = self._checked(request.provider, request.client_id, request.scopes, request.agents)
        try:
            redirect = check_redirect_uri(request.redirect_uri)
        except AppError as exc:
            raise ControlError(str(exc)) from None
        verifier, expires_at = secrets.token_urlsafe(64), self.clock() + PENDING_SECONDS
        pending = Pending(app, request.client_id, request.client_secret, redirect, verifier, scopes, agents, expires_at)
        state = self._remember(pending)
        url = authorize_url(app, request.client_id, redirect, state, verifier, scopes)
        return api.AppAuthorize(authorize_url=url, state=state, expires_at=expires_at)

    async def on_finish(self, request: api.AppFinish) -> api.AppInfo:
        pending = self._pending.pop(request.state, None)
        if pending is None or pending.device is not None or pending.expires_at <= self.clock():
            raise ControlError(
                "no connect waits for that answer (it lapsed after 10 minutes, or was used); start again"
            )
        client = self.tokens.client
        assert client is not None
        outcome = await client.exchange(
            pending.app, pending.client_id, pending.client_secret, request.code, pending.redirect_uri, pending.verifier
        )
        return await self._keep(self._connection(pending, outcome))

    async def on_device_begin(self, request: api.AppDeviceBegin) -> api.AppDevice:
        app, scopes, agents = self._checked(request.provider, request.client_id, request.scopes, request.agents)
        if not app.device_url:
            raise ControlError(f"{app.name} has no device-code flow: connect it in a browser (without --device)")
        client = self.tokens.client
        assert client is not None
        device = await client.device(app, request.client_id, scopes)
        if isinstance(device, Refused):
            raise ControlError(f"{app.name} gave no device code ({device.error}: {device.description[:200]})")
        pending = Pending(
            app, request.client_id, request.client_secret, "", "", scopes, agents, device.expires_at, device
        )
        state = self._remember(pending)
        return api.AppDevice(
            state=state,
            user_code=device.user_code,
            verification_uri=device.verification_uri,
            interval=device.interval,
            expires_at=device.expires_at,
        )

    async def on_device_poll(self, request: api.AppPoll) -> api.AppPolled:
        """One poll of the provider; not done until the owner has typed the code and allowed access."""
        pending = self._pending.get(request.state)
        if pending is None or pending.device is None or pending.expires_at <= self.clock():
            raise ControlError("no device connect waits under that state (it lapsed, or was used); start again")
        client = self.tokens.client
        assert client is not None
        outcome = await client.poll_device(pending.app, pending.client_id, pending.client_secret, pending.device)
        if isinstance(outcome, Refused) and outcome.error in DEVICE_WAITING:
            interval = next_interval(outcome, pending.device.interval)
            self._pending[request.state] = replace(pending, device=replace(pending.device, interval=interval))
            return api.AppPolled(done=False, interval=interval)
        self._pending.pop(request.state, None)
        return api.AppPolled(done=True, info=await self._keep(self._connection(pending, outcome)))

    async def _keep(self, conn: Connection) -> api.AppInfo:
        """A new connection into vault.db (sealed) and the gateway; audited."""
        row = self._row(conn, self.clock())
        await self.store.run(self.store.put_app, row)
        await self.load()
        log.info("app %s connected for %s", conn.provider, ", ".join(conn.grants))
        await self.audit_change("cli", "app-connected", f"app {conn.provider} connected", provider=conn.provider)
        return _info(row)

    def _connection(self, pending: Pending, outcome: Grant | Refused) -> Connection:
        name = pending.app.name
        if isinstance(outcome, Refused):
            raise ControlError(f"{name} refused the code ({outcome.error}: {outcome.description[:200]}); start again")
        if outcome.expires_at is not None and not outcome.refresh_token:
            raise ControlError(
                f"{name} gave an expiring token without a refresh token, so the connection would lapse within the "
                "hour; remove Clawden's access in the account's settings and connect again"
            )
        return Connection(
            provider=name,
            client_id=pending.client_id,
            client_secret=pending.client_secret,
            refresh_token=outcome.refresh_token or "",
            access_token=outcome.access_token,
            expires_at=outcome.expires_at,
            grants=pending.agents,
            scopes=outcome.scope or " ".join(pending.scopes),
        )

    async def on_list(self, _request: Nothing) -> api.Apps:
        return api.Apps(apps=[_info(row) for row in await self.store.run(self.store.apps)])

    async def on_disconnect(self, request: api.Named) -> api.AppDisconnected:
        """Injection stops before anything else happens; then vault.db forgets it, then the provider is told."""
        try:
            name = provider(request.name).name
        except AppError as exc:
            raise ControlError(str(exc)) from None
        held = self.tokens.remove(name)
        removed = await self.store.run(self.store.remove_app, name)
        if held is None and not removed:
            raise NotFound(f"no {name!r} connection (see `clawden apps list`)")
        told = held is not None and self.tokens.client is not None and await self.tokens.client.revoke(held)
        log.info("app %s disconnected (%s)", name, "revoked at the provider" if told else "the provider was not told")
        await self.audit_change("cli", "app-disconnected", f"app {name} disconnected", provider=name)
        return api.AppDisconnected(provider=name, revoked_at_provider=told)


def _info(row: dict[str, Any]) -> api.AppInfo:
    fields = {k: row[k] for k in ("provider", "client_id", "scopes", "created_at", "expires_at", "refreshed_at")}
    return msgspec.convert({**fields, "grants": json.loads(row["grants"])}, api.AppInfo)
