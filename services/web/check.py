"""`clawden doctor`'s web row: the app answers on its address with its protective headers, and through
`public_url` when one is set; a public address without TLS is a warning, since the cookie is then not Secure."""

from __future__ import annotations

import ipaddress

import httpx

from clawden.config import Config
from services.web.app import HEADERS
from services.web.service import parse_listen

FIX_START = "start it: `clawden up`, or `systemctl start clawden-web`"


async def _answers(base: str) -> str | None:
    """None when `base`/ serves our signed-out page with our headers, else what went wrong."""
    try:
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            answer = await client.get(f"{base.rstrip('/')}/")
    except httpx.HTTPError as exc:
        return f"{base} did not answer ({type(exc).__name__})"
    if answer.status_code != 200:
        return f"{base}/ answered {answer.status_code}, not the sign-in page"
    missing = [name for name in HEADERS if name not in answer.headers]
    if missing:
        return f"{base}/ answered without {', '.join(missing)}: something in front strips them"
    return None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def check(cfg: Config) -> tuple[str, str, str]:
    """(level, detail, fix) with level "ok", "warn" or "fail"."""
    host, port = parse_listen(cfg.web.listen)
    local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    problem = await _answers(local)
    if problem:
        return "fail", problem, FIX_START
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
