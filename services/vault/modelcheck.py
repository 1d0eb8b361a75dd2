"""`clawden doctor`'s live check of the model key (`ctl.vault.model-check`): the vault itself asks
api.anthropic.com for one model with each stored anthropic secret put in as the gateway puts it, on the
gateway's kind of upstream connection (its trust and host map), so the key never leaves the vault. A wrong
or revoked key, or no route to the API, is then found by doctor instead of at the first chat, after Claude
Code's minutes of retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import h11
import msgspec

from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as api
from services.vault.catalog import Catalog, Credential
from services.vault.injection import OAUTH_PREFIX, inject
from services.vault.patterns import host_matches
from services.vault.upstream import Origin, Response, Upstream, UpstreamError, client_tls

log = logging.getLogger("clawden.vault")

MODEL_HOST = "api.anthropic.com"
TARGET = b"/v1/models?limit=1"  # the cheapest authenticated call: no tokens spent, one short answer
API_VERSION = b"2023-06-01"  # the API refuses a request without anthropic-version
OWNER = "vault-model-check"  # the upstream pool's owner: never an agent group's
CONNECT_TIMEOUT = 4.0  # the name's lookup, the connection and the TLS handshake
ANSWER_TIMEOUT = 4.0  # each read of the answer
MAX_ANSWER = 64 * 1024  # the list of one model, or an error, is a few hundred bytes
MAX_MESSAGE = 300
HIDDEN = "clawden-managed"  # what stands for the secret should an answer ever quote it


class _Error(msgspec.Struct):
    type: str = ""
    message: str = ""


class _Answer(msgspec.Struct):
    """Anthropic's error body, `{"type": "error", "error": {"type": …, "message": …}}`; any other body: empty."""

    error: _Error | None = None


class Refusal(NamedTuple):
    digest: str  # sha256 of the value refused: a key replaced since is not this refusal's
    answer: str  # what the API said, as the trouble line quotes it


class RefusedKeys:
    """The model keys the API refused (401, 403) at their latest check, as the vault's trouble, told to `say` (the
    service's `set_trouble`) as it changes. A key that passes a check, or is replaced or removed, is no longer
    refused. A check that did not reach the API says nothing of the key, so it changes nothing: a way to the API
    that is down is not the key's fault, and the agents' own calls say so where it matters, in the chat.

    `refused` is what an earlier process recorded and `save` is handed every change (the service keeps them in
    vault.db), so a restart does not forget a refusal while the refused key is still the one stored: the first
    `stored` keeps the recorded refusals whose key is, and drops the rest."""

    def __init__(
        self,
        say: Callable[[str], None],
        *,
        refused: Mapping[str, Refusal] | None = None,
        save: Callable[[dict[str, Refusal]], None] | None = None,
    ) -> None:
        self._say = say
        self._save = save
        self._refused: dict[str, Refusal] = dict(refused or {})  # secret -> its refusal
        self._saved = dict(self._refused)
        self._stored: dict[str, str] = {}  # secret -> sha256 of its value now, as `stored` last saw the catalog
        self.line = ""

    def checked(self, credential: Credential, check: api.ModelCheck) -> None:
        if self._stored.get(credential.name, _digest(credential.value)) != _digest(credential.value):
            return  # replaced while it was being checked: the answer is about a key no longer stored
        if check.outcome == "rejected":
            answer = " ".join(filter(None, (str(check.status), check.error_type and f"{check.error_type}:")))
            answer = f"{answer} {check.message}".strip() if check.message else answer.rstrip(":")
            self._refused[credential.name] = Refusal(_digest(credential.value), answer)
        elif check.outcome == "accepted":
            self._refused.pop(credential.name, None)
        self._tell()

    def answered(self, names: tuple[str, ...], status: int) -> None:
        """An agent's model call carrying these secrets was answered `status` (the gateway says so): a 401/403 is the
        key refused, known at once rather than at the next check; a success clears it. A refusal already known keeps
        the words its check gave, so the line does not change with every call."""
        for name in names:
            digest = self._stored.get(name)
            if digest is None:  # not a model key
                continue
            if status in (401, 403):
                if self._refused.get(name, Refusal("", "")).digest != digest:
                    self._refused[name] = Refusal(digest, f"{status} to an agent's model call")
            elif 200 <= status < 300:
                self._refused.pop(name, None)
        self._tell()

    def stored(self, catalog: Catalog) -> None:
        """The catalog changed (or is first seen): a refused key replaced or removed is no longer this vault's
        trouble."""
        now = {c.name: _digest(c.value) for c in catalog.credentials if c.secret.kind == "anthropic"}
        self._stored = now
        self._refused = {n: r for n, r in self._refused.items() if now.get(n) == r.digest}
        self._tell()

    def _tell(self) -> None:
        if self._save is not None and self._refused != self._saved:
            self._saved = dict(self._refused)
            self._save(dict(self._refused))
        line = "; ".join(
            f"the model API refused the {name} key ({answer}); set the right one: "
            f"`clawden secrets add {name} --type anthropic --replace`"
            for name, (_, answer) in sorted(self._refused.items())
        )
        if line != self.line:
            self.line = line
            self._say(line)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class ModelChecker:
    """Answers `model-check` from the catalog the gateway reads now; each outcome goes to `refused`."""

    def __init__(
        self,
        catalog: Callable[[], Catalog],
        *,
        extra_ca_file: Path | str | None = None,
        host_map: Mapping[str, str] | None = None,
        refused: RefusedKeys | None = None,
    ) -> None:
        self._catalog = catalog
        self._refused = refused
        self._tls = client_tls(extra_ca_file)  # read once, at the start, as the gateway's is
        self._host_map = {k.lower(): v for k, v in (host_map or {}).items()}

    async def on_check(self, _request: Nothing) -> api.ModelChecks:
        credentials = [
            c
            for c in self._catalog().credentials
            if c.secret.kind == "anthropic" and host_matches(c.secret.host_pattern, MODEL_HOST, 443)
        ]
        # A pool of its own, closed after: a pooled connection would hide a name that stopped resolving or a
        # route that went away, and the timeouts are the check's, not an agent's minutes-long answer's.
        upstream = Upstream(
            self._tls,
            host_map=self._host_map,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=ANSWER_TIMEOUT,
        )
        try:
            checks = await asyncio.gather(*(self._check(upstream, c) for c in credentials))
        finally:
            await upstream.close()
        for credential, check in zip(credentials, checks, strict=True):
            log.info("model check of %s: %s %s", check.name, check.outcome, check.status or check.unreached)
            if self._refused is not None:
                self._refused.checked(credential, check)
        mapped = self._host_map.get(MODEL_HOST) or self._host_map.get(f"{MODEL_HOST}:443") or ""
        return api.ModelChecks(host=MODEL_HOST, mapped_to=mapped, checks=list(checks))

    async def _check(self, upstream: Upstream, credential: Credential) -> api.ModelCheck:
        name, oauth = credential.name, credential.value.startswith(OAUTH_PREFIX)
        origin = Origin("https", MODEL_HOST, 443)
        plain = [(b"anthropic-version", API_VERSION), (b"accept", b"application/json")]
        headers, target = inject([credential], plain, TARGET)
        headers = [(b"host", origin.authority), *headers, (b"accept-encoding", b"identity")]
        budget = api.MODEL_CHECK_WAIT - 1  # the answer must reach the CLI within MODEL_CHECK_WAIT
        try:
            async with asyncio.timeout(budget):
                response = await upstream.request(origin, b"GET", target, headers, b"", owner=OWNER)
                body = await _read(upstream, response)
        except UpstreamError as exc:
            unreached, why = unreachable(exc)
            return api.ModelCheck(name=name, outcome="unreachable", oauth=oauth, unreached=unreached, message=why)
        except TimeoutError:
            why = f"{MODEL_HOST} did not answer within {budget:.0f} s"
            return api.ModelCheck(name=name, outcome="unreachable", oauth=oauth, unreached="timeout", message=why)
        error = _error(body)
        status = response.status
        outcome: api.ModelOutcome = "accepted" if status == 200 else "rejected" if status in (401, 403) else "other"
        return api.ModelCheck(
            name=name,
            outcome=outcome,
            oauth=oauth,
            status=status,
            error_type=_hidden(error.type, credential)[:64],
            message=_hidden(error.message, credential)[:MAX_MESSAGE],
        )


def unreachable(exc: UpstreamError) -> tuple[api.Unreached, str]:
    """Where the way to the API broke, from the upstream's error and what it was raised from, and why in words."""
    cause = exc.__cause__
    why = str(exc)
    if isinstance(cause, OSError) and cause.strerror and not isinstance(cause, socket.gaierror | ssl.SSLError):
        why += f": {cause.strerror}"
    if exc.code == "private_address_blocked":
        return "private", why
    if isinstance(cause, socket.gaierror) or "does not resolve" in why:
        return "dns", why
    if isinstance(cause, ssl.SSLError):
        return "tls", why
    if exc.code == "gateway_timeout":
        return "timeout", why
    return "connect", why


async def _read(upstream: Upstream, response: Response) -> bytes:
    """The answer's body, or as much of it as came: the status already says what matters most."""
    body = b""
    with contextlib.suppress(OSError, h11.ProtocolError):  # the site hung up, or stalled (TimeoutError), mid-answer
        async with contextlib.aclosing(upstream.body_chunks(response)) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > MAX_ANSWER:
                    break
    return body


def _error(body: bytes) -> _Error:
    try:
        answer = msgspec.json.decode(body, type=_Answer)
    except msgspec.DecodeError:  # not JSON, or not Anthropic's error shape: the status alone speaks
        return _Error()
    return answer.error or _Error()


def _hidden(text: str, credential: Credential) -> str:
    """The text with the secret's value replaced, should an answer ever quote it back."""
    return text.replace(credential.value, HIDDEN) if credential.value else text
