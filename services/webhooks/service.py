"""`clawden run webhooks`: the front door on uvicorn, handing each verified delivery to JetStream."""

from __future__ import annotations

import logging
import os

import nats.errors
import nats.js.errors
from nats.js.api import Header

from clawden import httpserve
from clawden.bus import subjects, webhooks
from clawden.config import Config
from clawden.natsauth import webhook_routes
from clawden.runtime import ConfigurationError, ServiceContext
from services.webhooks.app import FrontDoor, HandOffFailed, Limits, Route

log = logging.getLogger("clawden.webhooks")
DEFAULT_LISTEN = "127.0.0.1:8787"
# The secrets a route's scheme needs, each a 0600 file under keys/ or a variable (CLAWDEN_<NAME>_<KEY>).
SECRETS = {"meta": ("app_secret", "verify_token")}


def parse_listen(listen: str) -> tuple[str, int]:
    return httpserve.parse_listen(listen, DEFAULT_LISTEN, "webhooks")


def read_route_secret(cfg: Config, channel: str, key: str, environ: dict[str, str] | None = None) -> str | None:
    """`CLAWDEN_<CHANNEL>_<KEY>`, else keys/<channel>.<key> (mode 0600); None when neither is there."""
    env = os.environ if environ is None else environ
    value = env.get(f"CLAWDEN_{channel.upper()}_{key.upper()}", "").strip()
    if value:
        return value
    path = cfg.keys_dir / f"{channel}.{key}"
    if not path.exists():
        return None
    if path.stat().st_mode & 0o077:
        raise ConfigurationError(f"{path} is readable by other users; run `chmod 600 {path}`")
    return path.read_text().strip() or None


def load_routes(cfg: Config, environ: dict[str, str] | None = None) -> dict[str, Route]:
    """A route for each channel whose secrets are there; a channel without them is not served (said once)."""
    routes: dict[str, Route] = {}
    for channel, scheme in sorted(webhook_routes(cfg).items()):
        if scheme not in SECRETS:
            raise ConfigurationError(
                f"[webhooks.routes] {channel} = {scheme!r}: known schemes are {', '.join(webhooks.SCHEMES)}"
            )
        subjects.token(channel)
        values = {key: read_route_secret(cfg, channel, key, environ) for key in SECRETS[scheme]}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            log.info(
                "/hooks/%s is not served: no %s (keys/%s.<key>, mode 0600)", channel, " or ".join(missing), channel
            )
            continue
        routes[channel] = Route(channel, scheme, (values["app_secret"] or "").encode(), values["verify_token"] or "")
    return routes


async def main(ctx: ServiceContext) -> None:
    cfg = ctx.config.webhooks
    host, port = parse_listen(cfg.listen)
    routes = load_routes(ctx.config)
    if not routes:
        log.warning("no webhook route has its secrets yet: every request is answered 404 until one does")

    async def publish(channel: str, delivery: webhooks.WebhookDelivery, msg_id: str) -> bool:
        try:
            ack = await ctx.js.publish(
                subjects.webhook(channel),
                webhooks.encoder.encode(delivery),
                timeout=cfg.ack_timeout,
                headers={Header.MSG_ID: msg_id},
            )
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as exc:
            raise HandOffFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        return not ack.duplicate

    door = FrontDoor(
        routes,
        publish,
        Limits(
            max_body=cfg.max_body,
            rate=cfg.rate,
            burst=cfg.burst,
            body_timeout=cfg.body_timeout,
            forwarded_for=cfg.forwarded_for,
        ),
    )
    ctx.stats["webhooks"] = door.counters.__dict__
    sock = httpserve.bind(host, port, "webhooks", backlog=1024)
    async with httpserve.serving(
        door,
        sock,
        date_header=False,
        timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=1000,
    ):
        await ctx.ready(f"webhooks on {host}:{port}: {', '.join(f'/hooks/{c}' for c in routes) or 'no routes'}")
        log.info(
            "listening on http://%s:%d for %s", host, port, ", ".join(f"/hooks/{c}" for c in routes) or "nothing yet"
        )
        await ctx.stopping.wait()
