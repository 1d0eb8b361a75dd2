"""`clawden doctor`'s webhooks row: the front door answers on its address, and through `public_url` when one
is set, proven by Meta's own handshake (a fresh challenge echoed back only by a door holding the verify token)."""

from __future__ import annotations

import secrets
import urllib.parse

import httpx

from clawden.config import Config
from clawden.natsauth import webhook_routes
from services.webhooks.service import SECRETS, load_routes, parse_listen


async def _handshake(base: str, channel: str, token: str) -> str | None:
    """None when `base`/hooks/<channel> echoes a fresh challenge, else what went wrong."""
    challenge = secrets.token_hex(8)
    query = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": challenge})
    url = f"{base.rstrip('/')}/hooks/{channel}?{query}"
    try:
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            answer = await client.get(url)
    except httpx.HTTPError as exc:
        return f"{base} did not answer ({type(exc).__name__}: {exc})".rstrip(": )") + ")"
    if answer.status_code == 200 and answer.text == challenge:
        return None
    return f"{base}/hooks/{channel} answered {answer.status_code} {answer.text[:80]!r}, not the challenge"


async def check(cfg: Config, environ: dict[str, str]) -> tuple[str, str, str]:
    """(level, detail, fix) with level "ok", "warn" or "fail"."""
    routes = load_routes(cfg, environ)
    if not routes:
        wanted = ", ".join(f"keys/{c}.{{{','.join(SECRETS.get(s, ()))}}}" for c, s in webhook_routes(cfg).items())
        return "warn", "no route has its secrets, so every delivery is refused", f"write {wanted} (mode 0600)"
    host, port = parse_listen(cfg.webhooks.listen)
    local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    route = next(iter(routes.values()))
    problem = await _handshake(local, route.channel, route.verify_token)
    if problem:
        return "fail", problem, "start it: `clawden up`, or `systemctl start clawden-webhooks`"
    served = ", ".join(f"/hooks/{c}" for c in routes)
    if not cfg.webhooks.public_url:
        return (
            "warn",
            f"{local} serves {served}; no public_url set",
            ("put Caddy, nginx or a tunnel in front and set [webhooks] public_url (README: Webhooks)"),
        )
    problem = await _handshake(cfg.webhooks.public_url, route.channel, route.verify_token)
    if problem:
        return "fail", problem, f"check the reverse proxy or tunnel forwards /hooks/ to {local}"
    return "ok", f"{cfg.webhooks.public_url} reaches {local}, serving {served}", ""
