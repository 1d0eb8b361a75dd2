"""`clawden run webhooks`: the front door on uvicorn, handing each verified delivery to JetStream."""

from __future__ import annotations

import logging

import nats.errors
import nats.js.errors
from nats.js.api import Header

from clawden import httpserve
from clawden.bridgeconfig import route_secrets
from clawden.bus import subjects, webhooks
from clawden.config import Config, WebhooksConfig
from clawden.runtime import ServiceContext
from services.webhooks.app import FrontDoor, HandOffFailed, Limits, Route

log = logging.getLogger("clawden.webhooks")


def load_routes(cfg: Config, environ: dict[str, str] | None = None) -> dict[str, Route]:
    """A route for each channel whose secrets are there; a channel without them is not served (said once)."""
    routes: dict[str, Route] = {}
    for channel, (scheme, values) in route_secrets(cfg, environ).items():
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
    host, port = httpserve.parse_listen(cfg.listen, WebhooksConfig.DEFAULT_LISTEN, "webhooks")
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
