"""App connections (Google, GitHub) as pure decisions: which provider a host belongs to, the OAuth
authorization request with PKCE, reading a token endpoint's answer, when an access token is due for
refresh, and the replies the gateway gives in the app's name (a synthetic token for the agent's own
refresh call, ``app_not_connected``). No IO here: ``oauth`` does the HTTP, the gateway the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode, urlsplit

import msgspec

from services.vault.responses import Reply, json_reply

ProviderName = Literal["google", "github"]
# An access token this close to its end is refreshed before use: a request that starts with it must
# not find it expired halfway through a slow upload.
REFRESH_MARGIN = 300.0
# What the agent's client library gets in place of an access token, and its lifetime as it is told.
PLACEHOLDER_TOKEN = "clawden-managed"
SYNTHETIC_EXPIRES_IN = 3599
MAX_TOKEN_RESPONSE = 64 * 1024
LOOPBACK_REDIRECT = re.compile(r"^http://(127\.0\.0\.1|\[::1\]|localhost):\d{1,5}(/[A-Za-z0-9/_.-]*)?$")
SCOPE = re.compile(r"^[A-Za-z0-9:/._-]{1,200}$")


@dataclass(frozen=True, slots=True)
class Provider:
    name: ProviderName
    authorize_url: str
    token_url: str
    revoke_url: str
    api_hosts: frozenset[str]
    default_scopes: tuple[str, ...]
    # (host, path) of the token endpoints client libraries in the container call to refresh; the gateway
    # answers them itself, and signs nothing else on their hosts. None: no refresh in the container.
    agent_token_endpoints: tuple[tuple[str, str], ...]
    extra_authorize: tuple[tuple[str, str], ...] = ()
    device_url: str = ""  # RFC 8628's device authorization endpoint, where the provider has one

    @property
    def connect_command(self) -> str:
        return f"clawden apps connect {self.name}"


PROVIDERS: dict[str, Provider] = {
    # https://developers.google.com/identity/protocols/oauth2/native-app: loopback redirect, PKCE S256,
    # access_type=offline for a refresh token, prompt=consent so a second connect gets one again.
    "google": Provider(
        name="google",
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",
        revoke_url="https://oauth2.googleapis.com/revoke",
        api_hosts=frozenset(
            {
                "gmail.googleapis.com",
                "www.googleapis.com",
                "people.googleapis.com",
                "sheets.googleapis.com",
                "docs.googleapis.com",
                "calendar-json.googleapis.com",
            }
        ),
        default_scopes=("openid", "email", "https://www.googleapis.com/auth/gmail.readonly"),
        # google-auth and googleapis' Node client use the first; older libraries the second.
        agent_token_endpoints=(("oauth2.googleapis.com", "/token"), ("www.googleapis.com", "/oauth2/v4/token")),
        extra_authorize=(("access_type", "offline"), ("prompt", "consent")),
    ),
    # https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps: the web flow
    # with PKCE (S256) and a loopback redirect_uri on any port.
    "github": Provider(
        name="github",
        authorize_url="https://github.com/login/oauth/authorize",
        token_url="https://github.com/login/oauth/access_token",
        revoke_url="https://api.github.com/applications/{client_id}/grant",
        api_hosts=frozenset({"api.github.com"}),
        default_scopes=("read:user",),
        agent_token_endpoints=(),
        # docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps#device-flow
        device_url="https://github.com/login/device/code",
    ),
}


class AppError(ValueError):
    """Bad input to a connect (a CLI call): the message says what to fix."""


def provider(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise AppError(f"no app {name!r}: connect one of {', '.join(sorted(PROVIDERS))}") from None


def provider_for_host(host: str) -> Provider | None:
    """The provider whose API ``host`` is: its requests are signed with the connection's token."""
    host = host.lower()
    return next((p for p in PROVIDERS.values() if host in p.api_hosts), None)


def provider_reaching(host: str) -> Provider | None:
    """The provider an agent reaches at ``host``, its API or its token endpoint (what an allowlist lets by)."""
    host = host.lower()
    return provider_for_host(host) or next(
        (p for p in PROVIDERS.values() if any(h == host for h, _ in p.agent_token_endpoints)), None
    )


def is_agent_token_call(method: str, host: str, path: str) -> Provider | None:
    """The provider when this is a client library's refresh call the gateway answers itself."""
    endpoint = (host.lower(), path.partition("?")[0])
    if method != "POST":
        return None
    return next((p for p in PROVIDERS.values() if endpoint in p.agent_token_endpoints), None)


# ---- the authorization request (RFC 6749 §4.1, RFC 7636, RFC 8252 for the loopback redirect) ----


def pkce_challenge(verifier: str) -> str:
    """S256: BASE64URL(SHA256(verifier)) without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_redirect_uri(uri: str) -> str:
    """A loopback redirect (RFC 8252 §7.3): the code comes back to the machine that asked, nowhere else."""
    if not LOOPBACK_REDIRECT.match(uri):
        raise AppError(f"the redirect must be http://127.0.0.1:<port>/… on this machine, not {uri!r}")
    port = urlsplit(uri).port
    if port is None or not 0 < port < 65536:
        raise AppError(f"the redirect {uri!r} needs a port")
    return uri


def check_scopes(app: Provider, scopes: list[str]) -> tuple[str, ...]:
    for scope in scopes:
        if not SCOPE.match(scope):
            raise AppError(f"{scope!r} is not an OAuth scope")
    return tuple(scopes) or app.default_scopes


def authorize_url(
    app: Provider, client_id: str, redirect_uri: str, state: str, verifier: str, scopes: tuple[str, ...]
) -> str:
    params = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", " ".join(scopes)),
        ("state", state),
        ("code_challenge", pkce_challenge(verifier)),
        ("code_challenge_method", "S256"),
        *app.extra_authorize,
    ]
    return f"{app.authorize_url}?{urlencode(params)}"


# ---- the token endpoint's answer ----


class TokenBody(msgspec.Struct, frozen=True):
    access_token: str = ""
    expires_in: int | None = None
    refresh_token: str | None = None
    scope: str = ""
    token_type: str = ""
    error: str = ""
    error_description: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token endpoint granted: an access token, perhaps its end, perhaps a (new) refresh token."""

    access_token: str = ""
    expires_at: float | None = None  # None: it does not expire (a GitHub OAuth app's token)
    refresh_token: str | None = None  # None: keep the one held
    scope: str = ""

    def __repr__(self) -> str:
        return f"Grant(<tokens hidden>, expires_at={self.expires_at!r})"


@dataclass(frozen=True, slots=True)
class Refused:
    """The provider refused: ``invalid_grant`` means the user revoked it or it lapsed (reconnect)."""

    error: str
    description: str
    status: int

    @property
    def needs_reconnect(self) -> bool:
        return self.error in ("invalid_grant", "bad_refresh_token", "bad_verification_code", "unauthorized_client")


_token_body = msgspec.json.Decoder(TokenBody)


def read_token_response(status: int, body: bytes, now: float) -> Grant | Refused:
    """A token endpoint's JSON as a Grant, or why not. GitHub answers errors with 200 and an ``error``."""
    try:
        parsed = _token_body.decode(body)
    except msgspec.DecodeError:
        return Refused("invalid_response", f"the token endpoint answered {status} with no token JSON", status)
    if parsed.error or status != 200:
        return Refused(parsed.error or "invalid_response", parsed.error_description or f"HTTP {status}", status)
    if not parsed.access_token or parsed.token_type.lower() != "bearer":
        return Refused("invalid_response", "the token endpoint gave no bearer access token", status)
    expires_at = now + parsed.expires_in if parsed.expires_in else None
    return Grant(parsed.access_token, expires_at, parsed.refresh_token or None, parsed.scope)


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_WAITING = frozenset({"authorization_pending", "slow_down"})  # RFC 8628 §3.5: poll again, later


class DeviceBody(msgspec.Struct, frozen=True):
    device_code: str = ""
    user_code: str = ""
    verification_uri: str = ""
    expires_in: int = 900
    interval: int = 5
    error: str = ""
    error_description: str = ""


@dataclass(frozen=True, slots=True)
class Device:
    """What the owner types where (``user_code`` at ``verification_uri``); the device code stays in the vault."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    expires_at: float
    interval: int


_device_body = msgspec.json.Decoder(DeviceBody)


def read_device_response(status: int, body: bytes, now: float) -> Device | Refused:
    try:
        parsed = _device_body.decode(body)
    except msgspec.DecodeError:
        return Refused("invalid_response", f"the device endpoint answered {status} with no JSON", status)
    if parsed.error or status != 200 or not parsed.device_code or not parsed.user_code:
        return Refused(parsed.error or "invalid_response", parsed.error_description or f"HTTP {status}", status)
    if not parsed.verification_uri.startswith("https://"):
        return Refused("invalid_response", "the device endpoint gave no https verification page", status)
    interval = min(max(parsed.interval, 1), 60)
    return Device(parsed.device_code, parsed.user_code, parsed.verification_uri, now + parsed.expires_in, interval)


def next_interval(refused: Refused, interval: int) -> int:
    """RFC 8628 §3.5: ``slow_down`` adds 5 seconds to every later poll."""
    return interval + 5 if refused.error == "slow_down" else interval


def needs_refresh(expires_at: float | None, now: float, margin: float = REFRESH_MARGIN) -> bool:
    """True when a held access token ending at ``expires_at`` must be refreshed before use."""
    return expires_at is not None and expires_at - margin <= now


# ---- what the gateway answers in the app's name ----


def synthetic_token(scope: str = "") -> Reply:
    """Google's token response shape with a placeholder: the library is satisfied, the real token stays here."""
    payload = {"access_token": PLACEHOLDER_TOKEN, "expires_in": SYNTHETIC_EXPIRES_IN, "token_type": "Bearer"}
    if scope:
        payload["scope"] = scope
    return json_reply(200, payload, retry=True)


def app_not_connected(app: Provider, host: str, path: str, status: int = 401, why: str = "") -> Reply:
    """OneCLI's ``app_not_connected``, with the command that connects the app on the Clawden host."""
    reason = why or f"{host} needs a {app.name} connection, and none is connected for this agent"
    message = (
        f"{reason}. Never ask for a password or token in chat. Ask the user to run "
        f"`{app.connect_command}` on the Clawden host; the vault then signs your {app.name} requests."
    )
    payload = {
        "error": "app_not_connected",
        "error_description": message,  # what OAuth client libraries print
        "message": message,
        "provider": app.name,
        "connect_command": app.connect_command,
        "hostname": host,
        "path": path,
    }
    return json_reply(status, payload)


def oauth_error_text(body: bytes) -> str:
    """A short, safe description of a provider's error body for a log line (never its tokens)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return "no JSON"
    if isinstance(parsed, dict):
        return str(parsed.get("error", "?"))[:80]
    return "?"
