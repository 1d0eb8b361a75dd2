"""What the vault knows: secrets (described, and with their values), rules, egress modes, grants.

A ``Catalog`` is an immutable snapshot the gateway reads per request; the service swaps in a new
one after every change, so no request sees half an update. Values sit only in ``Credential``, whose
repr hides them, so a stray log line or exception cannot print one.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from clawden.bus import events as ev
from services.vault.patterns import check_host_pattern, check_path_pattern, host_matches, specificity, too_broad
from services.vault.sigv4 import parse_keys

SecretKind = Literal["anthropic", "openai", "generic", "aws"]
Action = Literal["block", "manual_approval", "rate_limit", "allow"]
Window = Literal["minute", "hour", "day"]
Operator = Literal["contains", "equals"]
LargeBody = Literal["match", "ignore"]
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
# A value that goes into a path must stay one path segment in the gateway's one form (`paths`).
PATH_VALUE_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,=:@")
MAX_CONDITIONS = 10  # per rule, as OneCLI
MAX_CONDITION_VALUE = 1000
JSON_POINTER = re.compile(r"^(/([^~/]|~[01])*)*$")
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
    param_name: str = ""  # or the query parameter to set instead,
    path_template: str = ""  # or a path prefix with a {value} hole (`/bot{value}`),
    path_regex: str = ""  # or a regex on the path whose first match becomes...
    path_replacement: str = ""  # ...this, with {value} (and \\1-style groups) filled in
    grants: tuple[str, ...] = ()  # agent groups, or "*" for every group
    created_at: float = 0.0

    def granted_to(self, group: str) -> bool:
        return ALL_GROUPS in self.grants or group in self.grants


class Condition(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A test on the request body: ``contains`` a text (anywhere, or in the JSON value at ``pointer``),
    or ``equals`` the JSON value at ``pointer`` (a string compares as its text, others as JSON)."""

    operator: Operator
    value: str
    pointer: str = ""  # RFC 6901, e.g. /messages/0/role; "" is the raw body


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
    conditions: tuple[Condition, ...] = ()  # all must hold (on the body) for the rule to match
    # A body past the conditions' size limit (or not readable, e.g. compressed) cannot be tested:
    # "match" treats the conditions as holding, "ignore" as not. None: by action (see `large_body_matches`).
    large_body: LargeBody | None = None

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

    @property
    def secret_values(self) -> tuple[str, ...]:
        """What must never travel to another host: the value, or an AWS key's secret parts."""
        if self.secret.kind != "aws":
            return (self.value,)
        keys = parse_keys(self.value)
        return tuple(v for v in (keys.secret_access_key, keys.session_token) if v)

    @property
    def in_path(self) -> bool:
        return bool(self.secret.path_template or self.secret.path_regex)


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
        if secret.path_template or secret.path_regex:
            _check_path_injection(secret, value)
    elif secret.kind == "aws":
        try:
            parse_keys(value)
        except ValueError as exc:
            raise CatalogError(str(exc)) from None
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
    """A generic secret goes in one header, one query parameter or the path, through a format holding {value}."""
    places = [secret.header_name, secret.param_name, secret.path_template, secret.path_regex]
    if sum(bool(p) for p in places) != 1:
        raise CatalogError(
            "a generic secret needs one of --header NAME, --param NAME, --path-template '/bot{value}' "
            "or --path-regex REGEX --path-replacement '/bot{value}'"
        )
    if secret.header_name and not HEADER_NAME.match(secret.header_name):
        raise CatalogError(f"{secret.header_name!r} is not a header name")
    if secret.param_name and not re.match(r"^[A-Za-z0-9_.~-]{1,64}$", secret.param_name):
        raise CatalogError(f"{secret.param_name!r} is not a query parameter name")
    if "{value}" not in secret.value_format:
        raise CatalogError("the format must hold {value}, e.g. 'Bearer {value}'")


def _check_path_injection(secret: Secret, value: str) -> None:
    """A template or regex that puts the value in one path segment, and a value that stays one."""
    if bad := set(value) - PATH_VALUE_CHARS:
        raise CatalogError(
            f"the value of {secret.name} cannot go into a path: it holds {len(bad)} kind(s) of character "
            "a path segment cannot carry as they are (/ ? # % \\ ; space, or non-ASCII)"
        )
    if secret.path_template:
        _check_template(secret.path_template, "--path-template")
        return
    if not secret.path_replacement:
        raise CatalogError("--path-regex needs --path-replacement, e.g. '/bot{value}'")
    _check_template(secret.path_replacement, "--path-replacement")
    if len(secret.path_regex) > 200:
        raise CatalogError("--path-regex is at most 200 characters")
    try:
        pattern = re.compile(secret.path_regex)
        pattern.sub(secret.path_replacement.replace("{value}", "x"), "/")
    except (re.error, IndexError) as exc:
        raise CatalogError(f"--path-regex or its replacement does not work: {exc}") from None


def _check_template(template: str, option: str) -> None:
    literal = template.replace("{value}", "")
    if not template.startswith("/") or template.count("{value}") != 1:
        raise CatalogError(f"{option} starts with / and holds {{value}} once, e.g. '/bot{{value}}'")
    if bad := set(re.sub(r"\\\d|\\g<\w+>", "", literal)) - PATH_VALUE_CHARS - {"/"}:
        raise CatalogError(f"{option} holds {', '.join(repr(c) for c in sorted(bad))}, not path characters")


def check_conditions(rule: Rule) -> tuple[Condition, ...]:
    if len(rule.conditions) > MAX_CONDITIONS:
        raise CatalogError(f"a rule holds at most {MAX_CONDITIONS} conditions")
    for condition in rule.conditions:
        if not condition.value or len(condition.value) > MAX_CONDITION_VALUE:
            raise CatalogError(f"a condition's value is 1 to {MAX_CONDITION_VALUE} characters")
        if condition.pointer and not JSON_POINTER.match(condition.pointer):
            raise CatalogError(f"{condition.pointer!r} is not a JSON pointer like /model or /messages/0/role")
        if condition.operator == "equals" and not condition.pointer:
            raise CatalogError("an equals condition needs a JSON pointer (which value equals it?)")
    return rule.conditions


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
    if rule.action != "rate_limit" and rule.rate_limit:
        raise CatalogError(f"--limit and --window belong to rate_limit rules, not to a {rule.action} rule")
    check_conditions(rule)
    return msgspec.structs.replace(rule, host_pattern=host, path_pattern=path, method=method)


@dataclass(frozen=True)
class GroupView:
    """The part of a catalog one agent group's requests are judged by."""

    group: str
    egress: Egress
    granted: tuple[Credential, ...]  # which one a request gets where several write one place: `precedence`
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
