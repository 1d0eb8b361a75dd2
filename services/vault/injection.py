"""Putting credentials into a request, per secret type (pure).

- ``anthropic``: an API key goes in ``x-api-key`` (any ``authorization`` is dropped); an OAuth token
  (``sk-ant-oat…``) goes as ``authorization: Bearer`` with the OAuth beta announced.
- ``openai``: ``authorization: Bearer <value>``.
- ``generic``: a header with a ``{value}`` format (``Bearer {value}``), or a query parameter,
  added or replaced while the rest of the query keeps its exact bytes, or the path: a template
  (``/bot{value}``) whose hole the agent filled with any placeholder (``/botPLACEHOLDER/getMe``), or a
  regex whose first match becomes a replacement holding ``{value}``. The agent's placeholder is kept
  (``echoes``) so the real value can be turned back into it wherever the response repeats the path;
  every other injected value is turned into ``clawden-managed`` wherever a response quotes it.
- ``aws``: nothing here; ``sigv4`` signs the request once it is final.
Whatever the agent sent in those places (its placeholder) is replaced, never kept beside.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from services.vault.catalog import Credential, Secret

Header = tuple[bytes, bytes]

OAUTH_PREFIX = "sk-ant-oat"
# Anthropic refuses a bearer OAuth token unless this beta is announced.
OAUTH_BETA = b"oauth-2025-04-20"
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"})


def strip_hop_by_hop(headers: Iterable[Header], keep_upgrade: bool = False) -> list[Header]:
    """Drop hop-by-hop headers, Proxy-*, and any header named in Connection (RFC 9110 §7.6.1).

    ``keep_upgrade`` keeps ``Upgrade`` and ``Connection: upgrade`` for a WebSocket handshake.
    """
    headers = list(headers)
    listed = {
        token.strip().lower() for name, value in headers if name.lower() == b"connection" for token in value.split(b",")
    }
    kept = [
        (name, value)
        for name, value in headers
        if (lower := name.lower()) not in HOP_BY_HOP and not lower.startswith(b"proxy-") and lower not in listed
    ]
    if keep_upgrade:
        kept += [(name, value) for name, value in headers if name.lower() == b"upgrade"]
        kept.append((b"connection", b"upgrade"))
    return kept


def places(secret: Secret) -> frozenset[str]:
    """Where a secret writes in a request: header names (lower case), ``?<param>`` or ``path``. Two secrets
    with a place in common overwrite each other, so one request gets only one of them (`precedence`).
    An anthropic secret holds both of its headers: an API key clears ``authorization``, an OAuth token
    ``x-api-key``. SigV4 (``aws``) writes ``authorization``."""
    if secret.kind == "anthropic":
        return frozenset({"x-api-key", "authorization"})
    if secret.kind in ("openai", "aws"):
        return frozenset({"authorization"})
    if secret.header_name:
        return frozenset({secret.header_name.lower()})
    if secret.param_name:
        return frozenset({f"?{secret.param_name}"})
    return frozenset({"path"})


def inject(credentials: Sequence[Credential], headers: list[Header], target: bytes) -> tuple[list[Header], bytes]:
    """``headers`` and ``target`` with each credential applied in turn (`precedence.choose` has left one
    credential per place)."""
    for credential in credentials:
        secret, value = credential.secret, credential.value.encode()
        if secret.kind == "anthropic":
            if credential.value.startswith(OAUTH_PREFIX):
                headers = _set(_drop(headers, b"x-api-key"), b"authorization", b"Bearer " + value)
                headers = _with_beta(headers, OAUTH_BETA)
            else:
                headers = _set(_drop(headers, b"authorization"), b"x-api-key", value)
        elif secret.kind == "openai":
            headers = _set(headers, b"authorization", b"Bearer " + value)
        elif secret.header_name:
            formatted = secret.value_format.replace("{value}", credential.value).encode()
            headers = _set(headers, secret.header_name.lower().encode(), formatted)
        elif secret.param_name:
            target = set_query_param(target, secret.param_name, credential.value)
        elif (found := path_substitution(credential, target)) is not None:
            target = found[0]
    return headers, target


def path_substitution(credential: Credential, target: bytes) -> tuple[bytes, bytes] | None:
    """(the target with the value in its path, what the agent had there) when the credential's template
    or regex matches the path; None when it goes elsewhere or the path does not match."""
    secret = credential.secret
    if not credential.in_path:
        return None
    pattern, replacement = _path_rule(secret.path_template, secret.path_regex, secret.path_replacement)
    path, sep, query = target.decode("ascii").partition("?")
    match = pattern.search(path)
    if match is None:
        return None
    before, _, after = replacement.partition("{value}")
    before, after, matched = match.expand(before), match.expand(after), match.group(0)
    fits = matched.startswith(before) and matched.endswith(after) and len(matched) >= len(before) + len(after)
    placeholder = matched[len(before) : len(matched) - len(after)] if fits else matched
    new_path = path[: match.start()] + before + credential.value + after + path[match.end() :]
    return (new_path + sep + query).encode("ascii"), placeholder.encode("ascii")


def echoes(credentials: Sequence[Credential], target: bytes) -> list[tuple[bytes, bytes]]:
    """(real value, what the agent reads instead) for every value injected into this request: a site
    may quote any of them back (a redirect keeping the query, an error echoing the headers). A value
    that went into the path becomes the agent's placeholder, any other ``clawden-managed``."""
    pairs = []
    for credential in credentials:
        if (found := path_substitution(credential, target)) is not None:
            pairs.append((credential.value.encode(), found[1] or b"clawden-managed"))
        elif not credential.in_path:  # a path secret whose template does not match goes nowhere
            pairs += [(value.encode(), b"clawden-managed") for value in credential.secret_values if value]
    return pairs


@functools.lru_cache(maxsize=256)
def _path_rule(template: str, regex: str, replacement: str) -> tuple[re.Pattern[str], str]:
    if template:
        before, _, after = template.partition("{value}")
        return re.compile("^" + re.escape(before) + "([^/]+)" + re.escape(after) + "(?=/|$)"), template
    return re.compile(regex), replacement


def set_query_param(target: bytes, name: str, value: str) -> bytes:
    path, sep, query = target.partition(b"?")
    key = quote(name, safe="").encode()
    pairs = [p for p in query.split(b"&") if p and p.partition(b"=")[0] != key] if sep else []
    pairs.append(key + b"=" + quote(value, safe="").encode())
    return path + b"?" + b"&".join(pairs)


def _drop(headers: list[Header], name: bytes) -> list[Header]:
    return [(k, v) for k, v in headers if k.lower() != name]


def _set(headers: list[Header], name: bytes, value: bytes) -> list[Header]:
    return [*_drop(headers, name), (name, value)]


def _with_beta(headers: list[Header], beta: bytes) -> list[Header]:
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"anthropic-beta":
            if beta in (token.strip() for token in value.split(b",")):
                return headers
            headers[index] = (name, value + b"," + beta)
            return headers
    headers.append((b"anthropic-beta", beta))
    return headers
