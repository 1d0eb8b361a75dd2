"""`clawden run webhooks`: the front door on uvicorn, handing each verified delivery to JetStream."""

from __future__ import annotations

import logging
import os
import socket

import nats.errors
import nats.js.errors
import uvicorn
from nats.js.api import Header

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
    host, sep, port = (listen or DEFAULT_LISTEN).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"[webhooks] listen = {listen!r}: expected host:port, e.g. {DEFAULT_LISTEN!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


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
    sock = bind(host, port)
    config = uvicorn.Config(
        door,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=1000,
        http="h11",
        ws="none",
        proxy_headers=False,
        interface="asgi3",
    )
    # Server.serve() would take SIGTERM from the runtime; its startup and shutdown are driven here instead.
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    await ctx.ready(f"webhooks on {host}:{port}: {', '.join(f'/hooks/{c}' for c in routes) or 'no routes'}")
    log.info("listening on http://%s:%d for %s", host, port, ", ".join(f"/hooks/{c}" for c in routes) or "nothing yet")
    try:
        await ctx.stopping.wait()
    finally:
        server.should_exit = True
        await server.shutdown(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port} ([webhooks] listen): {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock
