"""`clawden doctor`'s rows for the two services that serve HTTP, each asked from outside, as a platform or a
browser would: the webhook front door proves it holds a route's verify token by Meta's own handshake (a fresh
challenge echoed back), and the web app answers with its protective headers. Each is asked on its local address,
then through `public_url` when one is set."""

from __future__ import annotations

import ipaddress
import secrets
import urllib.parse

import httpx

from clawden import bridgeconfig, httpserve
from clawden.bus import webhooks
from clawden.config import Config, WebConfig, WebhooksConfig
from clawden.runtime import ConfigurationError

# What the web app sends on every page (services/web/app.py HEADERS) that a proxy in front must not strip.
PROTECTIVE_HEADERS = (
    "content-security-policy",
    "x-content-type-options",
    "referrer-policy",
    "cache-control",
    "x-frame-options",
)
Verdict = tuple[str, str, str]  # (level: "ok", "warn" or "fail", detail, fix)


def _local(listen: str, default: str, section: str) -> tuple[str, str]:
    """The host a service listens on, and the URL this machine reaches it at."""
    host, port = httpserve.parse_listen(listen, default, section)
    return host, f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


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


async def webhooks_row(cfg: Config, environ: dict[str, str]) -> Verdict:
    try:
        configured = bridgeconfig.route_secrets(cfg, environ)
    except ConfigurationError as exc:  # an unknown scheme, a key file others can read: the front door refuses too
        return "fail", str(exc), "correct what it names; the front door will not start until then"
    routes = {c: values["verify_token"] or "" for c, (_, values) in configured.items() if None not in values.values()}
    if not routes:
        wanted = ", ".join(f"keys/{c}.{{{','.join(webhooks.SECRETS[s])}}}" for c, (s, _) in configured.items())
        return "warn", "no route has its secrets, so every delivery is refused", f"write {wanted} (mode 0600)"
    _, local = _local(cfg.webhooks.listen, WebhooksConfig.DEFAULT_LISTEN, "webhooks")
    channel, token = next(iter(routes.items()))
    problem = await _handshake(local, channel, token)
    if problem:
        return "fail", problem, "start it: `clawden up`, or `systemctl start clawden-webhooks`"
    served = ", ".join(f"/hooks/{c}" for c in routes)
    if not cfg.webhooks.public_url:
        return (
            "warn",
            f"{local} serves {served}; no public_url set",
            "put Caddy, nginx or a tunnel in front and set [webhooks] public_url (README: Webhooks)",
        )
    problem = await _handshake(cfg.webhooks.public_url, channel, token)
    if problem:
        return "fail", problem, f"check the reverse proxy or tunnel forwards /hooks/ to {local}"
    return "ok", f"{cfg.webhooks.public_url} reaches {local}, serving {served}", ""


async def _answers(base: str) -> str | None:
    """None when `base`/ serves our signed-out page with our headers, else what went wrong."""
    try:
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            answer = await client.get(f"{base.rstrip('/')}/")
    except httpx.HTTPError as exc:
        return f"{base} did not answer ({type(exc).__name__})"
    if answer.status_code != 200:
        return f"{base}/ answered {answer.status_code}, not the sign-in page"
    missing = [name for name in PROTECTIVE_HEADERS if name not in answer.headers]
    if missing:
        return f"{base}/ answered without {', '.join(missing)}: something in front strips them"
    return None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def web_row(cfg: Config) -> Verdict:
    host, local = _local(cfg.web.listen, WebConfig.DEFAULT_LISTEN, "web")
    problem = await _answers(local)
    if problem:
        return "fail", problem, "start it: `clawden up`, or `systemctl start clawden-web`"
    public = cfg.web.public_url
    if not public:
        if _loopback(host):
            return "ok", f"{local} serves the sign-in page (this machine only; `clawden web login`)", ""
        return "warn", f"{local} is reachable from the network without TLS", "put Caddy in front (README: Web)"
    problem = await _answers(public)
    if problem:
        return "fail", problem, f"check the reverse proxy forwards {public} to {local}"
    if not public.startswith("https://"):
        return "warn", f"{public} reaches {local} without TLS: the sign-in cookie is not Secure", "serve it over https"
    return "ok", f"{public} reaches {local}", ""
