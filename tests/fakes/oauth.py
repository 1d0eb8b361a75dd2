"""A fake OAuth provider and the app APIs behind it, speaking Google's and GitHub's real shapes, served as
a ``tests.vault.sites.FakeUpstream`` responder (one TLS server answering for every name in ``HOSTS``).

It is as strict as the providers where the vault could go wrong:
- authorize (RFC 6749 §4.1.1, RFC 7636 §4.3): response_type=code, a known client_id, a loopback
  redirect_uri (RFC 8252 §7.3; Google's native-app guide), a state, and an S256 code_challenge are
  all required; the user's consent is given at once and the code goes back to the redirect with the state.
- token, authorization_code (RFC 6749 §4.1.3, RFC 7636 §4.6): a code works once, only for its client and
  redirect_uri, and only with the verifier whose SHA-256 is the challenge; the client authenticates.
- token, refresh_token (RFC 6749 §6): only a live refresh token of the same client; each grant is a new
  access token. A GitHub App's user token (``github_expiring``) expires and its refresh token is rotated:
  each refresh gives a new one and ends the old (docs.github.com/en/apps/creating-github-apps/
  authenticating-with-a-github-app/refreshing-user-access-tokens). Google answers errors with 400/401 and
  ``{"error", "error_description"}`` (developers.google.com/identity/protocols/oauth2/native-app); GitHub
  answers them with 200 and the error in the body, and in form encoding unless asked for JSON
  (docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps).
- device flow (RFC 8628, docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps#device-flow):
  a device code for a known client, then ``authorization_pending`` until the owner confirms the user code,
  ``slow_down`` when polled sooner than the interval, ``expired_token`` after 15 minutes.
- revoke: Google's ``POST /revoke`` with ``token=`` ends the refresh token and every access token from it
  (…/oauth2/web-server#tokenrevoke); GitHub's ``DELETE /applications/{client_id}/grant`` needs Basic
  client_id:client_secret and ``{"access_token"}``, and answers 204 (docs.github.com/en/rest/apps/oauth-applications).
- Gmail ``GET /gmail/v1/users/me/messages`` (developers.google.com/gmail/api/reference/rest/v1/users.messages/list):
  a live, unexpired bearer token, else 401 UNAUTHENTICATED with ``WWW-Authenticate``.
- GitHub ``GET /user`` (docs.github.com/en/rest/users/users#get-the-authenticated-user): a User-Agent (else
  403, docs.github.com/en/rest/using-the-rest-api/getting-started-with-the-rest-api#user-agent) and a live
  token (``Bearer`` or ``token``), else 401 "Bad credentials".
Access tokens expire by the fake's clock; ``expire_access_tokens`` ends every one at once (the provider's side
of a token the vault still thinks good).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

import h11

from tests.vault.sites import Received, Reply

GOOGLE_HOSTS = ("accounts.google.com", "oauth2.googleapis.com", "gmail.googleapis.com")
GITHUB_HOSTS = ("github.com", "api.github.com")
HOSTS = [*GOOGLE_HOSTS, *GITHUB_HOSTS]
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    provider: str


@dataclass
class _Access:
    provider: str
    expires_at: float | None
    refresh: str


@dataclass
class _Device:
    client_id: str
    scope: str
    user_code: str
    expires_at: float
    last_poll: float = 0.0
    approved: bool = False


@dataclass
class FakeOAuth:
    clients: dict[str, str] = field(default_factory=dict)  # client_id -> client_secret
    clock: Callable[[], float] = time.time
    expires_in: int = 3600
    github_expiring: bool = False  # a GitHub App's user tokens expire and come with a refresh token
    codes: dict[str, _Code] = field(default_factory=dict)
    refresh_tokens: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # -> (client, provider, scope)
    access_tokens: dict[str, _Access] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every token ever given out
    grants: list[str] = field(default_factory=list)  # grant_type of each successful token call
    api_calls: list[tuple[str, int]] = field(default_factory=list)  # (host+path, status) of the app APIs
    # When set, token calls wait for it (a slow provider): a test can act while a refresh is in flight.
    hold_tokens: asyncio.Event | None = None
    token_calls_waiting: int = 0
    device_interval: int = 5  # GitHub's; a test may shorten it
    devices: dict[str, _Device] = field(default_factory=dict)  # device_code -> the code the owner types

    def approve_device(self, user_code: str) -> None:
        """The owner types the code at github.com/login/device and allows access."""
        [device] = [d for d in self.devices.values() if d.user_code == user_code]
        device.approved = True

    def client(self, client_id: str, client_secret: str) -> None:
        self.clients[client_id] = client_secret

    def expire_access_tokens(self) -> None:
        for access in self.access_tokens.values():
            access.expires_at = self.clock() - 1

    # -- the responder --

    async def respond(self, request: Received, reply: Reply) -> None:
        host = (request.header(b"host") or b"").decode().partition(":")[0]
        path, _, query = request.target.decode().partition("?")
        if self.hold_tokens is not None and path in ("/token", "/login/oauth/access_token"):
            self.token_calls_waiting += 1
            await self.hold_tokens.wait()
        status, headers, body = self._route(host, request.method.decode(), path, query, request)
        if host in ("gmail.googleapis.com", "api.github.com") and not path.startswith("/applications"):
            self.api_calls.append((host + path, status))
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await reply.send(h11.Response(status_code=status, headers=headers))
        if body:
            await reply.send(h11.Data(data=body))
        await reply.send(h11.EndOfMessage())

    def _route(self, host: str, method: str, path: str, query: str, request: Received) -> _Answer:
        routes: dict[tuple[str, str, str], Callable[[str, Received], _Answer]] = {
            ("accounts.google.com", "GET", "/o/oauth2/v2/auth"): lambda q, _r: self._authorize("google", q),
            ("oauth2.googleapis.com", "POST", "/token"): lambda _q, r: self._google_token(r),
            ("oauth2.googleapis.com", "POST", "/revoke"): lambda _q, r: self._google_revoke(r),
            ("gmail.googleapis.com", "GET", "/gmail/v1/users/me/messages"): lambda _q, r: self._gmail(r),
            ("github.com", "GET", "/login/oauth/authorize"): lambda q, _r: self._authorize("github", q),
            ("github.com", "POST", "/login/oauth/access_token"): lambda _q, r: self._github_token(r),
            ("github.com", "POST", "/login/device/code"): lambda _q, r: self._device_code(r),
            ("api.github.com", "GET", "/user"): lambda _q, r: self._github_user(r),
        }
        handler = routes.get((host, method, path))
        if handler is not None:
            return handler(query, request)
        if host == "api.github.com" and method == "DELETE" and path.startswith("/applications/"):
            return self._github_revoke(path, request)
        return _json(404, {"error": "not_found", "path": path})

    # -- authorize --

    def _authorize(self, provider: str, query: str) -> _Answer:
        q = dict(parse_qsl(query))
        redirect = q.get("redirect_uri", "")
        parts = urlsplit(redirect)
        problems = [
            q.get("response_type") != "code" and "response_type must be code",
            q.get("client_id") not in self.clients and "unknown client_id",
            (parts.scheme != "http" or parts.hostname not in LOOPBACK or not parts.port)
            and "redirect_uri not loopback",
            not q.get("state") and "state missing",
            q.get("code_challenge_method") != "S256" and "code_challenge_method must be S256",
            not 43 <= len(q.get("code_challenge", "")) <= 128 and "code_challenge missing",
        ]
        if any(problems):
            return _json(400, {"error": "invalid_request", "error_description": "; ".join(p for p in problems if p)})
        code = f"code-{secrets.token_hex(8)}"
        self.codes[code] = _Code(q["client_id"], redirect, q["code_challenge"], q.get("scope", ""), provider)
        location = f"{redirect}?{urlencode({'code': code, 'state': q['state'], 'scope': q.get('scope', '')})}"
        return 302, [(b"location", location.encode())], b""

    # -- token --

    def _form(self, request: Received) -> dict[str, str] | None:
        if (request.header(b"content-type") or b"").split(b";")[0] != b"application/x-www-form-urlencoded":
            return None
        return dict(parse_qsl(request.body.decode()))

    def _client_ok(self, form: dict[str, str]) -> bool:
        client = form.get("client_id", "")
        return client in self.clients and secrets.compare_digest(self.clients[client], form.get("client_secret", ""))

    def _grant(self, form: dict[str, str], provider: str) -> dict[str, str | int] | str:
        """The token response for a valid grant, or the OAuth error code."""
        if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_grant(form, provider)  # a public client: no secret
        if not self._client_ok(form):
            return "invalid_client"
        if form.get("grant_type") == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)  # a code works once, right or wrong
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if code is None or code.provider != provider or code.client_id != form["client_id"]:
                return "invalid_grant"
            if code.redirect_uri != form.get("redirect_uri") or code.challenge != challenge:
                return "invalid_grant"
            refresh = f"1//rt-{secrets.token_hex(12)}"
            self.refresh_tokens[refresh] = (code.client_id, provider, code.scope)
            self.issued.append(refresh)
            self.grants.append("authorization_code")
            return {**self._access(provider, refresh), "refresh_token": refresh, "scope": code.scope}
        if form.get("grant_type") == "refresh_token":
            held = self.refresh_tokens.get(form.get("refresh_token", ""))
            if held is None or held[0] != form["client_id"] or held[1] != provider:
                return "invalid_grant"
            self.grants.append("refresh_token")
            if provider == "github":  # a GitHub App's refresh token is used once: a new one comes with the grant
                del self.refresh_tokens[form["refresh_token"]]
                rotated = f"ghr_{secrets.token_hex(12)}"
                self.refresh_tokens[rotated] = held
                self.issued.append(rotated)
                return {**self._access(provider, rotated), "refresh_token": rotated, "scope": held[2]}
            return {**self._access(provider, form["refresh_token"]), "scope": held[2]}
        return "unsupported_grant_type"

    # -- the device flow (RFC 8628; GitHub's device flow, which needs no client secret) --

    def _device_code(self, request: Received) -> _Answer:
        form = self._form(request) or {}
        if form.get("client_id") not in self.clients:
            return _json(200, {"error": "incorrect_client_credentials", "error_description": "unknown client"})
        device_code = secrets.token_hex(20)
        user_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        self.devices[device_code] = _Device(form["client_id"], form.get("scope", ""), user_code, self.clock() + 900)
        payload = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": "https://github.com/login/device",
            "expires_in": 900,
            "interval": self.device_interval,
        }
        return _json(200, payload)

    def _device_grant(self, form: dict[str, str], provider: str) -> dict[str, str | int] | str:
        device = self.devices.get(form.get("device_code", ""))
        if device is None or device.client_id != form.get("client_id") or provider != "github":
            return "incorrect_device_code"
        now = self.clock()
        if now >= device.expires_at:
            return "expired_token"
        if now - device.last_poll < self.device_interval:
            device.last_poll = now
            return "slow_down"  # polled sooner than the interval allows
        device.last_poll = now
        if not device.approved:
            return "authorization_pending"
        del self.devices[form["device_code"]]
        refresh = f"device-{secrets.token_hex(8)}"
        self.refresh_tokens[refresh] = (device.client_id, provider, device.scope)
        self.grants.append("device_code")
        return {**self._access(provider, refresh), "scope": device.scope}

    def _access(self, provider: str, refresh: str) -> dict[str, str | int]:
        prefix = "ya29." if provider == "google" else "gho_"
        token = f"{prefix}{secrets.token_hex(16)}"
        expiring = provider == "google" or self.github_expiring
        self.access_tokens[token] = _Access(provider, self.clock() + self.expires_in if expiring else None, refresh)
        self.issued.append(token)
        grant: dict[str, str | int] = {
            "access_token": token,
            "token_type": "Bearer" if provider == "google" else "bearer",
        }
        if expiring:
            grant["expires_in"] = self.expires_in
        return grant

    def _google_token(self, request: Received) -> _Answer:
        form = self._form(request)
        if form is None:
            return _json(400, {"error": "invalid_request", "error_description": "form body expected"})
        result = self._grant(form, "google")
        if isinstance(result, str):
            return _json(
                401 if result == "invalid_client" else 400, {"error": result, "error_description": "Bad Request"}
            )
        return _json(200, result)

    def _github_token(self, request: Received) -> _Answer:
        form = self._form(request)
        result = self._grant(form or {}, "github")
        if isinstance(result, str):
            result = {"error": {"invalid_grant": "bad_verification_code"}.get(result, result), "error_description": "x"}
        if result.get("refresh_token") and not self.github_expiring:
            result.pop("refresh_token")  # an OAuth app's token does not expire and has no refresh token
        if b"application/json" in (request.header(b"accept") or b""):
            return _json(200, result)
        return 200, [(b"content-type", b"application/x-www-form-urlencoded")], urlencode(result).encode()

    # -- revoke --

    def _revoke_refresh(self, refresh: str) -> None:
        self.refresh_tokens.pop(refresh, None)
        for token, access in list(self.access_tokens.items()):
            if access.refresh == refresh:
                del self.access_tokens[token]

    def _google_revoke(self, request: Received) -> _Answer:
        token = (self._form(request) or {}).get("token", "")
        if token in self.refresh_tokens:
            self._revoke_refresh(token)
        elif token in self.access_tokens:
            self._revoke_refresh(self.access_tokens[token].refresh)
        else:
            return _json(400, {"error": "invalid_token", "error_description": "Token expired or revoked"})
        return _json(200, {})

    def _github_revoke(self, path: str, request: Received) -> _Answer:
        client_id = path.split("/")[2]
        basic = base64.b64encode(f"{client_id}:{self.clients.get(client_id, '')}".encode())
        if client_id not in self.clients or request.header(b"authorization") != b"Basic " + basic:
            return _json(404, {"message": "Not Found"})
        token = json.loads(request.body or b"{}").get("access_token", "")
        access = self.access_tokens.get(token)
        if access is None:
            return _json(422, {"message": "Validation Failed"})
        self._revoke_refresh(access.refresh)
        return 204, [], b""

    # -- the app APIs --

    def _live(self, request: Received, provider: str, schemes: tuple[bytes, ...]) -> bool:
        scheme, _, token = (request.header(b"authorization") or b"").partition(b" ")
        access = self.access_tokens.get(token.decode())
        if scheme.lower() not in schemes or access is None or access.provider != provider:
            return False
        return access.expires_at is None or access.expires_at > self.clock()

    def _gmail(self, request: Received) -> _Answer:
        if not self._live(request, "google", (b"bearer",)):
            error = {
                "code": 401,
                "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                "status": "UNAUTHENTICATED",
            }
            answer = _json(401, {"error": error})
            realm = b'Bearer realm="https://accounts.google.com/", error="invalid_token"'
            return answer[0], [*answer[1], (b"www-authenticate", realm)], answer[2]
        return _json(200, {"messages": [{"id": "18c1f0a2", "threadId": "18c1f0a2"}], "resultSizeEstimate": 1})

    def _github_user(self, request: Received) -> _Answer:
        if not request.header(b"user-agent"):
            return 403, [(b"content-type", b"text/plain")], b"Request forbidden by administrative rules."
        if not self._live(request, "github", (b"bearer", b"token")):
            return _json(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
        return _json(200, {"login": "ada", "id": 1, "type": "User"})


_Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def _json(status: int, payload: object) -> _Answer:
    return status, [(b"content-type", b"application/json; charset=utf-8")], json.dumps(payload).encode()
