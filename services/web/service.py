"""`clawden run web`: the browser chat (channel `web`) and the owner's dashboard, on uvicorn.

It takes the `web` channel's outbound lanes like a bridge, publishes what people say as inbound, answers
`clawden.ctl.web.login` (`clawden web login`: a one-time link), and asks other services only through
backend.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from clawden import httpserve, logtail
from clawden.bus import bind, consume
from clawden.bus import events as ev
from clawden.bus.ctl import web as web_ctl
from clawden.bus.pull import Puller
from clawden.bus.streams import bridge_lanes
from clawden.config import WebConfig
from clawden.runtime import ConfigurationError, ControlError, ServiceContext
from services.web import auth, files
from services.web.app import Settings, Web, build
from services.web.backend import Backend, BackendError
from services.web.channel import CHANNEL, Hub, WebChannel
from services.web.store import WebStore

log = logging.getLogger("clawden.web")
HOUSEKEEPING_EVERY = 6 * 3600.0  # seconds


def listen_url(host: str, port: int) -> str:
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


def public_url(cfg: WebConfig, host: str, port: int) -> str:
    """Where browsers reach us: `[web] public_url`, else the address we listen on."""
    url = (cfg.public_url or listen_url(host, port)).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"[web] public_url = {cfg.public_url!r}: expected an http:// or https:// URL")
    return url


class Logins:
    """`clawden.ctl.web.login`: a new one-time link for a user. Only the owner's CLI and the router (for `/web`
    from an owner or admin in a direct chat) may ask. No user named: the install's first owner."""

    def __init__(self, store: WebStore, url: str, lasts: float, backend: Backend) -> None:
        self.store = store
        self.url = url
        self.lasts = lasts
        self.backend = backend

    async def __call__(self, req: web_ctl.LoginRequest) -> web_ctl.LoginLink:
        user = req.user or await self.owner()
        token = auth.new_secret()
        now = time.time()
        await self.store.run(self.store.add_link, token, user, now, self.lasts)
        log.info("a sign-in link was made for %s", user, extra={"user": user})
        return web_ctl.LoginLink(url=f"{self.url}/login/{token}", user=user, expires_at=now + self.lasts)

    async def owner(self) -> str:
        try:
            first = (await self.backend.standing()).first_owner
        except BackendError as exc:
            raise ControlError(f"cannot ask the router who the owner is: {exc}") from None
        if not first:
            raise ControlError("this install has no owner yet: pair one (`clawden pair <channel>`) or give --user")
        return first


async def housekeeping(store: WebStore, uploads: Path, stopping: asyncio.Event) -> None:
    """Uploads older than files.KEEP_UPLOADS go, at start and every six hours, as bridges prune what they fetched."""
    while not stopping.is_set():
        paths = await store.run(store.prune_uploads, time.time() - files.KEEP_UPLOADS)
        if paths:
            removed = await asyncio.to_thread(files.delete_uploads, uploads, paths)
            log.info("removed %d uploads older than %d days", removed, files.KEEP_UPLOADS // 86400)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), HOUSEKEEPING_EVERY)


async def main(ctx: ServiceContext) -> None:
    cfg = ctx.config.web
    host, port = httpserve.parse_listen(cfg.listen, WebConfig.DEFAULT_LISTEN, "web")
    url = public_url(cfg, host, port)
    store = await WebStore.start(ctx.config.data_dir / "web.db")
    try:
        await serve(ctx, store, host, port, url)
    finally:
        await store.stop()


async def serve(ctx: ServiceContext, store: WebStore, host: str, port: int, url: str) -> None:
    cfg = ctx.config.web
    hub = Hub()
    channel = WebChannel(ctx.js, store, hub)
    settings = Settings(
        origin=auth.origin_of(url),
        secure=url.startswith("https://"),
        link_seconds=cfg.link_minutes * 60,
        session_seconds=cfg.session_days * 86400,
        # Browsers reach us at another address than ours: through a proxy, which names them in X-Forwarded-For.
        proxied=auth.origin_of(url) != auth.origin_of(listen_url(host, port)),
    )
    limit = auth.LoginLimit(cfg.login_rate, cfg.login_burst)
    backend = Backend(ctx.nc, ctx.config)
    journal = logtail.journal_scope(os.environ)  # as a unit, its peers log to the journal, not to files
    uploads = ctx.config.data_dir / "channels" / CHANNEL / "files"  # where the runner takes a bridge's files
    web = Web(
        store,
        channel,
        hub,
        backend,
        settings,
        limit,
        ctx.config.path("logs"),
        journal,
        uploads,
        ctx.config.sessions_dir,
    )
    ctx.stats["web"] = channel.counts.__dict__
    await ctx.endpoint(web_ctl.LOGIN, Logins(store, url, settings.link_seconds, backend))
    lanes = [await bind(ctx.js, lane, batch=1) for lane in bridge_lanes(CHANNEL)]
    sock = httpserve.bind(host, port, "web", backlog=256)
    async with httpserve.serving(build(web), sock, timeout_graceful_shutdown=3):
        await ctx.ready(f"web on {url}")
        log.info("listening on http://%s:%d (browsers use %s)", host, port, url)

        async def take(puller: Puller) -> None:
            await consume(puller, ev.OUTBOUND_DECODER, channel.handle, stopping=ctx.stopping)

        try:
            async with asyncio.TaskGroup() as tg:
                for puller in lanes:
                    tg.create_task(take(puller))
                tg.create_task(housekeeping(store, uploads, ctx.stopping))
        finally:
            web.stopping.set()  # log tails end
            hub.close()  # open streams end, so the server's shutdown does not wait on them
