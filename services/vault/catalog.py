"""What the vault knows: secrets (described, and with their values), rules, egress modes, grants.

A ``Catalog`` is an immutable snapshot the gateway reads per request; the service swaps in a new
one after every change, so no request sees half an update. Values sit only in ``Credential``, whose
repr hides them, so a stray log line or exception cannot print one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from clawden.bus import events as ev
from services.vault.patterns import check_host_pattern, check_path_pattern, host_matches, specificity, too_broad

SecretKind = Literal["anthropic", "openai", "generic"]
Action = Literal["block", "manual_approval", "rate_limit", "allow"]
Window = Literal["minute", "hour", "day"]
Egress = Literal["open", "allowlist"]
ALL_GROUPS = "*"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
GROUP = re.compile(rf"^(\*|{ev.GROUP_PATTERN[1:-1]})$")  # a group's name, or every group
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
WINDOW_SECONDS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
DEFAULT_HOSTS: dict[str, str] = {"anthropic": "api.anthropic.com", "openai": "api.openai.com"}
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
MODEL_SECRET = "anthropic"  # the model key's name, as the vault stores it from keys/anthropic
MAX_VALUE = 10_000
# Values this short could occur by chance anywhere; the leak guard skips them.
MIN_LEAK_CHECK = 8


class CatalogError(ValueError):
    """Bad input from a person (a CLI call): the message says what to fix."""


class Secret(msgspec.Struct, frozen=True, kw_only=True):
    """A secret as the vault describes it: never its value."""

    name: str
    kind: SecretKind
    host_pattern: str
    path_pattern: str = "*"
    header_name: str = ""  # generic: the header to set...
    value_format: str = "{value}"  # ...with this format,
    param_name: str = ""  # or the query parameter to set instead
    grants: tuple[str, ...] = ()  # agent groups, or "*" for every group
    created_at: float = 0.0

    def granted_to(self, group: str) -> bool:
        return ALL_GROUPS in self.grants or group in self.grants


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    action: Action
    host_pattern: str
    path_pattern: str = "*"
    method: str | None = None  # None: every method
    agent_group: str = ALL_GROUPS
    rate_limit: int = 0  # requests per window, for rate_limit
    rate_window: Window = "minute"
    enabled: bool = True
    created_at: float = 0.0

    def applies_to(self, group: str) -> bool:
        return self.enabled and self.agent_group in (ALL_GROUPS, group)


@dataclass(frozen=True, slots=True)
class Credential:
    """A secret with its value, only ever in memory; ``repr`` leaves the value out."""

    secret: Secret
    value: str = field(repr=False)

    @property
    def name(self) -> str:
        return self.secret.name


def check_secret(secret: Secret, value: str, *, force: bool = False) -> Secret:
    """The secret, normalised, or CatalogError saying what is wrong with it. ``force`` lets a secret
    other than the model key match the model API's host (never a public suffix)."""
    if not NAME.match(secret.name):
        raise CatalogError(f"secret name {secret.name!r}: letters, digits, '_', '.', '-' (up to 64)")
    _check_value(secret.name, value)
    host = _check_host(secret, force=force)
    try:
        path = check_path_pattern(secret.path_pattern)
    except ValueError as exc:
        raise CatalogError(str(exc)) from exc
    if secret.kind == "generic":
        _check_generic(secret)
    grants = tuple(sorted(set(secret.grants)))
    for group in grants:
        if not GROUP.match(group):
            raise CatalogError(f"{group!r} is not an agent group name")
    return msgspec.structs.replace(secret, host_pattern=host, path_pattern=path, grants=grants)


def _check_value(name: str, value: str) -> None:
    if not value or len(value) > MAX_VALUE:
        raise CatalogError(f"the value of {name} must be 1 to {MAX_VALUE} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise CatalogError(f"the value of {name} holds control characters (a stray newline?)")


def _check_host(secret: Secret, *, force: bool) -> str:
    """The secret's host pattern, normalised: named, narrower than a public suffix, and the model API's
    only for the model key (or with ``force``)."""
    host = secret.host_pattern or DEFAULT_HOSTS.get(secret.kind, "")
    if not host:
        raise CatalogError(f"a {secret.kind} secret needs a host pattern (--host)")
    try:
        host = check_host_pattern(host)
    except ValueError as exc:
        raise CatalogError(str(exc)) from exc
    if host == "*":
        raise CatalogError("a secret must name its host: '*' would hand it to every site")
    if (broad := too_broad(host)) is not None:
        raise CatalogError(f"host pattern {broad}")
    if secret.name == MODEL_SECRET and (secret.kind != "anthropic" or host != DEFAULT_HOSTS["anthropic"]):
        raise CatalogError(
            f"the {MODEL_SECRET} secret is the model key: its type is anthropic and its host "
            f"{DEFAULT_HOSTS['anthropic']}; give another secret another name"
        )
    if secret.kind != "anthropic" and host_matches(host, DEFAULT_HOSTS["anthropic"]) and not force:
        raise CatalogError(
            f"host pattern {host!r} matches the model API ({DEFAULT_HOSTS['anthropic']}), so this "
            "secret would ride on every model call; narrow it, or add --force if that is meant"
        )
    return host


def _check_generic(secret: Secret) -> None:
    """A generic secret goes in one header or one query parameter, through a format holding {value}."""
    if bool(secret.header_name) == bool(secret.param_name):
        raise CatalogError("a generic secret needs either --header NAME or --param NAME")
    if secret.header_name and not HEADER_NAME.match(secret.header_name):
        raise CatalogError(f"{secret.header_name!r} is not a header name")
    if secret.param_name and not re.match(r"^[A-Za-z0-9_.~-]{1,64}$", secret.param_name):
        raise CatalogError(f"{secret.param_name!r} is not a query parameter name")
    if "{value}" not in secret.value_format:
        raise CatalogError("the format must hold {value}, e.g. 'Bearer {value}'")


def check_rule(rule: Rule) -> Rule:
    if not NAME.match(rule.name):
        raise CatalogError(f"rule name {rule.name!r}: letters, digits, '_', '.', '-' (up to 64)")
    try:
        host = check_host_pattern(rule.host_pattern)
        path = check_path_pattern(rule.path_pattern)
    except ValueError as exc:
        raise CatalogError(str(exc)) from exc
    method = rule.method.upper() if rule.method else None
    if method is not None and method not in HTTP_METHODS:
        raise CatalogError(f"{rule.method!r} is not an HTTP method; give one of {', '.join(sorted(HTTP_METHODS))}")
    if not GROUP.match(rule.agent_group):
        raise CatalogError(f"{rule.agent_group!r} is not an agent group name")
    if rule.action == "rate_limit" and not 1 <= rule.rate_limit <= 1_000_000:
        raise CatalogError("a rate_limit rule needs --limit between 1 and 1000000")
    return msgspec.structs.replace(rule, host_pattern=host, path_pattern=path, method=method)


@dataclass(frozen=True)
class GroupView:
    """The part of a catalog one agent group's requests are judged by."""

    group: str
    egress: Egress
    granted: tuple[Credential, ...]  # most specific last, so the last write wins
    others: tuple[Credential, ...]  # stored but not granted to this group
    rules: tuple[Rule, ...]
    leak_checked: tuple[Credential, ...]


@dataclass(frozen=True)
class Catalog:
    credentials: tuple[Credential, ...] = ()
    rules: tuple[Rule, ...] = ()
    egress: Mapping[str, Egress] = field(default_factory=dict)
    default_egress: Egress = "open"
    _views: dict[str, GroupView] = field(default_factory=dict, compare=False, repr=False)

    def view(self, group: str) -> GroupView:
        view = self._views.get(group)
        if view is None:
            ordered = sorted(self.credentials, key=lambda c: specificity(c.secret.host_pattern, c.secret.path_pattern))
            view = GroupView(
                group=group,
                egress=self.egress.get(group, self.default_egress),
                granted=tuple(c for c in ordered if c.secret.granted_to(group)),
                others=tuple(c for c in ordered if not c.secret.granted_to(group)),
                rules=tuple(r for r in self.rules if r.applies_to(group)),
                leak_checked=tuple(c for c in self.credentials if len(c.value) >= MIN_LEAK_CHECK),
            )
            self._views[group] = view
        return view

    def values(self) -> Iterable[str]:
        return (c.value for c in self.credentials)
