"""The gateway's decision for one request: a pure function of (agent group, request head, rules, clock).

Order, as in OneCLI: the leak guard and block rules first, then the egress allowlist, then manual
approval, then rate limits; what passes gets the group's matching secrets injected, one per place in the
request (`precedence`). A rule with body conditions also needs the body: ``needs_body`` says when the
gateway must read it first (up to ``CONDITION_BODY_LIMIT``), and ``decide`` gets what
``body_for_conditions`` makes of it. Rate limits count in fixed windows (``now // window``); the caller
owns the counters (``ratecounts.RateCounts``) and passes a read-only view of them in, and adds the
returned ``charges`` once the request goes ahead.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple
from urllib.parse import unquote, unquote_to_bytes

from services.vault.catalog import WINDOW_SECONDS, Condition, Credential, GroupView, Rule
from services.vault.injection import path_substitution
from services.vault.patterns import host_matches, path_matches, secret_port
from services.vault.precedence import Tie, choose

Header = tuple[bytes, bytes]
# Headers and a query parameter through which frameworks (Rails, Laravel, Express's method-override)
# let a POST act as another method: a rule on that method holds for them too.
METHOD_OVERRIDE_HEADERS = (b"x-http-method-override", b"x-http-method", b"x-method-override")
METHOD_OVERRIDE_PARAM = "_method"
# A form body of this type may carry `_method` as well.
FORM_TYPE = b"application/x-www-form-urlencoded"
# Rules that hold a request back match its path whatever the case and with or without a trailing /:
# servers such as GitHub treat names case-insensitively. Rules that let one through match exactly.
RESTRICTIVE = frozenset({"block", "manual_approval", "rate_limit"})
# Bodies up to this size are read for rules with conditions; a larger one is judged by `large_body_matches`.
CONDITION_BODY_LIMIT = 256 * 1024
BlockCode = Literal["blocked_by_policy", "blocked_by_default_policy", "secret_leak_blocked"]


class RateKey(NamedTuple):
    """What one rate-limit count is of: a rule, for one agent group, in one fixed window."""

    rule: str
    group: str
    window: int  # which one: now // seconds
    seconds: int  # its length: keys of a rule re-added with another window length never meet

    @property
    def ends(self) -> int:
        return (self.window + 1) * self.seconds


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What the gateway knows of a request before its body: where it goes and its headers."""

    method: str  # an upper-case token (the gateway refuses others)
    host: str  # lower case, no port
    port: int
    target: bytes  # path and query, the path in the gateway's one form (`paths.normalise`)
    headers: Sequence[Header]
    form_methods: tuple[bytes, ...] = ()  # `_method` fields of a form body (`with_form_methods`)

    @property
    def path(self) -> str:
        return self.target.partition(b"?")[0].decode("ascii", "replace") or "/"

    @property
    def rule_path(self) -> str:
        """The path as rules and secret scopes see it: every escape decoded (`m%3Apredict` is
        `m:predict`), as servers decode it before they route. It is never forwarded so: the site gets
        the bytes the agent sent. The escapes that would change its segments (%2F, %5C) never get here:
        `paths.normalise` refuses them."""
        path = self.path
        return unquote(path) if "%" in path else path

    @property
    def query(self) -> bytes:
        return self.target.partition(b"?")[2]

    @property
    def methods(self) -> frozenset[str]:
        """The method, and any other one the request asks the server to act as."""
        named = [value for name, value in self.headers if name.lower() in METHOD_OVERRIDE_HEADERS]
        named += [*_override_fields(self.query), *self.form_methods]
        return frozenset({self.method, *(unquote_to_bytes(v).decode("latin-1").strip().upper() for v in named)})

    @property
    def is_form(self) -> bool:
        return any(
            name.lower() == b"content-type" and value.partition(b";")[0].strip().lower() == FORM_TYPE
            for name, value in self.headers
        )


def _override_fields(form: bytes) -> list[bytes]:
    """The values of `_method` in a query or a urlencoded form, as sent."""
    return [
        value
        for key, _, value in (p.partition(b"=") for p in form.split(b"&"))
        if unquote_to_bytes(key) == METHOD_OVERRIDE_PARAM.encode()
    ]


def with_form_methods(head: RequestHead, data: bytes) -> RequestHead:
    """The head with the `_method` fields of its form body (Rails and Laravel read them there too),
    from the part read for the rules; the head as it is when the body is no form."""
    if not head.is_form:
        return head
    return dataclasses.replace(head, form_methods=tuple(_override_fields(data[:CONDITION_BODY_LIMIT])))


@dataclass(frozen=True, slots=True)
class Allowed:
    credentials: tuple[Credential, ...]  # to inject: one per place (`precedence.choose`)
    charges: tuple[RateKey, ...] = ()
    tied: tuple[Tie, ...] = ()  # secrets left out though as specific as the one injected (a tie stored before)


@dataclass(frozen=True, slots=True)
class Blocked:
    code: BlockCode
    rule: str | None = None
    secret: str | None = None  # the leaked secret's name, never its value


@dataclass(frozen=True, slots=True)
class Ask:
    rule: Rule


@dataclass(frozen=True, slots=True)
class Limited:
    rule: Rule
    retry_after: int
    key: RateKey | None = None  # the count that is full


Verdict = Allowed | Blocked | Ask | Limited


def decide(
    view: GroupView,
    head: RequestHead,
    now: float,
    usage: Mapping[RateKey, int],
    approved: frozenset[str] = frozenset(),
    body: bytes | None = None,
) -> Verdict:
    """Judge ``head`` for ``view.group``; ``approved`` names approval rules a human already passed;
    ``body`` is the body when ``needs_body`` said to read it and it could be tested, else None."""
    leaked = leaked_in_head(view, head)
    if leaked is not None:
        return Blocked("secret_leak_blocked", secret=leaked.name)
    matching = [rule for rule in view.rules if rule_matches(rule, head) and conditions_hold(rule, body)]
    for rule in matching:
        if rule.action == "block":
            return Blocked("blocked_by_policy", rule=rule.name)
    if view.egress == "allowlist" and not _allowlisted(view, head, matching):
        return Blocked("blocked_by_default_policy")
    for rule in matching:
        if rule.action == "manual_approval" and rule.name not in approved:
            return Ask(rule)
    charges: list[RateKey] = []
    for rule in matching:
        if rule.action == "rate_limit":
            window = WINDOW_SECONDS[rule.rate_window]
            key = RateKey(rule.name, view.group, int(now // window), window)
            if usage.get(key, 0) >= rule.rate_limit:
                return Limited(rule, retry_after=max(1, math.ceil(key.ends - now)), key=key)
            charges.append(key)
    choice = choose(injectable(view.granted, head), view.group)
    return Allowed(choice.injected, tuple(charges), choice.tied)


def injectable(credentials: Sequence[Credential], head: RequestHead) -> tuple[Credential, ...]:
    """The credentials for this request; one that goes into the path only where its template matches."""
    path = head.rule_path
    return tuple(
        c
        for c in credentials
        if host_matches(c.secret.host_pattern, head.host)
        and head.port == secret_port(c.secret.host_pattern)
        and path_matches(c.secret.path_pattern, path)
        and (not c.in_path or path_substitution(c, head.target) is not None)
    )


def stored_for_host(credentials: Sequence[Credential], head: RequestHead) -> tuple[Credential, ...]:
    return tuple(c for c in credentials if host_matches(c.secret.host_pattern, head.host))


def rule_matches(rule: Rule, head: RequestHead) -> bool:
    if not host_matches(rule.host_pattern, head.host, head.port):
        return False
    path = head.rule_path
    restrictive = rule.action in RESTRICTIVE
    methods = head.methods if restrictive else {head.method}
    paths = {path, path.rstrip("/") or "/"} if restrictive else {path}
    if (rule.method is None or rule.method in methods) and any(
        path_matches(rule.path_pattern, p, ignore_case=restrictive) for p in paths
    ):
        return True
    # A push over smart HTTP starts with GET .../info/refs?service=git-receive-pack: a rule that
    # blocks the push must block its discovery too, or the agent learns refs it may not change.
    return (
        rule.path_pattern.endswith("/git-receive-pack")
        and head.method == "GET"
        and path.endswith("/info/refs")
        and b"service=git-receive-pack" in head.query
        and path_matches(rule.path_pattern.removesuffix("git-receive-pack") + "info/refs", path)
    )


# ---- body conditions ----


def needs_body(view: GroupView, head: RequestHead) -> bool:
    """Whether the body must be read before deciding: a rule that matches this head has conditions, or
    the body is a form whose `_method` could bring it under a restrictive rule on another method."""
    form = head.is_form
    return any(
        (rule.conditions and rule_matches(rule, head))
        or (
            form
            and rule.method is not None
            and rule.action in RESTRICTIVE
            and rule_matches(rule, dataclasses.replace(head, method=rule.method))
        )
        for rule in view.rules
    )


def body_for_conditions(data: bytes, complete: bool, headers: Sequence[Header]) -> bytes | None:
    """The body as conditions test it; None when they cannot: past the limit, or content-encoded
    (its bytes are not what the server reads). Every Content-Encoding header and every coding listed
    in one counts: a server decodes them all, so `identity` first hides no `gzip` after it."""
    codings = (c.strip().lower() for k, v in headers if k.lower() == b"content-encoding" for c in v.split(b","))
    if not complete or len(data) > CONDITION_BODY_LIMIT or any(c not in (b"", b"identity") for c in codings):
        return None
    return data


def large_body_matches(rule: Rule) -> bool:
    """How a rule treats a body its conditions cannot test: as configured, else a rule that holds
    requests back (block, approval, rate limit) applies, since an agent could otherwise pass it by
    padding or compressing the body; an allow rule does not, since it would widen access unseen."""
    if rule.large_body is not None:
        return rule.large_body == "match"
    return rule.action in RESTRICTIVE


class _Ambiguous(ValueError):
    """A JSON object with a key twice: servers disagree on which one counts."""


_MISSING = object()


def conditions_hold(rule: Rule, body: bytes | None) -> bool:
    if not rule.conditions:
        return True
    if body is None:
        return large_body_matches(rule)
    document: object = _MISSING
    if body.strip() and any(c.pointer for c in rule.conditions):
        try:
            document = json.loads(body, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError):  # not JSON, or ambiguous JSON: untestable
            return large_body_matches(rule)
    return all(_holds(c, body, document) for c in rule.conditions)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise _Ambiguous("a key appears twice")
    return dict(pairs)


def _holds(condition: Condition, body: bytes, document: object) -> bool:
    if not condition.pointer:
        wanted = condition.value.encode()
        return wanted in body or any(wanted in d for d in decodings(body))
    found = resolve_pointer(document, condition.pointer)
    if found is _MISSING:
        return False
    text = found if isinstance(found, str) else json.dumps(found, separators=(",", ":"))
    return condition.value in text if condition.operator == "contains" else text == condition.value


def resolve_pointer(document: object, pointer: str) -> object:
    """The value at an RFC 6901 pointer, or _MISSING."""
    for token in pointer.split("/")[1:]:
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(document, dict) and key in document:
            document = document[key]
        elif isinstance(document, list) and key.isdigit() and int(key) < len(document):
            document = document[int(key)]
        else:
            return _MISSING
    return document


def _allowlisted(view: GroupView, head: RequestHead, matching: Sequence[Rule]) -> bool:
    if any(rule.action == "allow" for rule in matching):
        return True
    return any(host_matches(c.secret.host_pattern, head.host) for c in view.granted)


# ---- the leak guard: a stored value on its way to a host outside its pattern ----


def leak_candidates(view: GroupView, host: str) -> tuple[Credential, ...]:
    """Stored secrets that must not travel to ``host``."""
    return tuple(c for c in view.leak_checked if not host_matches(c.secret.host_pattern, host))


def leaked_in_head(view: GroupView, head: RequestHead) -> Credential | None:
    """A stored value in the target or the headers (their names too), plain or encoded."""
    candidates = leak_candidates(view, head.host)
    if not candidates:
        return None
    haystack = b"\n".join([head.target, *(part for header in head.headers for part in header)])
    decoded = decodings(haystack)
    return next((c for c in candidates if any(_found(v.encode(), haystack, decoded) for v in c.secret_values)), None)


def decodings(data: bytes) -> list[bytes]:
    """What a receiver might decode ``data`` into: percent-escapes (once and twice), JSON's ``\\u``
    and ``\\/`` escapes; nothing when it holds no escape at all (the common case, kept cheap)."""
    if b"%" not in data and b"\\" not in data:
        return []
    once = unquote_to_bytes(data)
    json_text = JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)).encode("utf-8", "replace"), data)
    return [once, unquote_to_bytes(once), json_text.replace(b"\\/", b"/")]


def base64_cores(value: bytes) -> list[bytes]:
    """Pieces that any base64 (standard or URL-safe) text carrying ``value`` must hold, at any of the
    three alignments: its encoding less the characters the neighbouring bytes can change."""
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + value).rstrip(b"=")
        first = (4 * shift + 2) // 3 + (1 if shift else 0)  # characters touched by the padding bytes
        core = encoded[first : len(encoded) - 2]  # the last characters depend on what follows
        if len(core) >= 8:
            cores += [core, core.replace(b"+", b"-").replace(b"/", b"_")]
    return cores


def _found(value: bytes, window: bytes, decoded: list[bytes]) -> bool:
    return value in window or any(value in d for d in decoded) or any(core in window for core in _cores(value))


@functools.lru_cache(maxsize=256)
def _cores(value: bytes) -> tuple[bytes, ...]:
    return tuple(base64_cores(value))


JSON_ESCAPE = re.compile(rb"\\u([0-9a-fA-F]{4})")
REDACTED = b"[redacted]"


class LeakFound(Exception):
    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.secret = secret


class _HeldBack:
    """A streamed body rewritten chunk by chunk: the last `_keep` bytes of what has come are held back
    until the next chunk (or `flush`) shows whether they start something to rewrite."""

    _keep = 0
    _tail = b""
    _rewrite: Callable[[bytes], bytes]  # what the subclass does to a window of the stream

    def feed(self, chunk: bytes) -> bytes:
        """What of the held bytes and ``chunk`` may go now, rewritten."""
        window = self._rewrite(self._tail + chunk)
        cut = max(0, len(window) - self._held(window))
        self._tail = window[cut:]
        return window[:cut]

    def flush(self) -> bytes:
        rest, self._tail = self._tail, b""
        return rest

    def _held(self, window: bytes) -> int:
        """How many of the window's last bytes wait for the next chunk."""
        return self._keep


class LeakScanner(_HeldBack):
    """Scans a streamed body for stored values that must not go where it goes.

    A value sent as it is gets redacted in place (same length, so the framing holds): a conversation
    that once quoted a key keeps working, and the key does not travel. A value in disguise (escaped,
    percent- or base64-encoded) is a deliberate attempt: ``LeakFound``. The last bytes of each chunk,
    as many as the longest disguise, are held back until the next chunk (or ``flush``) shows what
    they are part of, so nothing of a value leaves before it is recognised.
    """

    def __init__(self, candidates: Sequence[Credential]) -> None:
        self._needles = [(c.name, v.encode()) for c in candidates for v in c.secret_values if v]
        # A value escaped whole is at most six bytes a byte (\\u0041), or nine when percent-encoded twice.
        self._keep = max((9 * len(n) for _, n in self._needles), default=0)
        self._tail = b""
        self.redacted: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._needles)

    def _rewrite(self, window: bytes) -> bytes:
        for name, value in self._needles:
            if value in window:
                window = window.replace(value, (REDACTED + b"*" * len(value))[: len(value)])
                self.redacted.add(name)
        decoded = decodings(window)
        for name, value in self._needles:
            if _found(value, window, decoded):
                raise LeakFound(name)
        return window


class EchoScrubber(_HeldBack):
    """Turns a value the gateway injected into the request back into what the agent sent (its path
    placeholder, else ``clawden-managed``) in the response (a redirect's Location, an error body
    quoting the path, the query or the headers), plain or percent-encoded, so the value never reaches
    the agent. A streamed body keeps back only a tail that could start a form of a value, until the
    next chunk shows whether it does: an event stream whose chunks end elsewhere flows unheld."""

    def __init__(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        self._forms = sorted(
            {(form, placeholder) for value, placeholder in pairs for form in _echo_forms(value)},
            key=lambda f: -len(f[0]),
        )
        self._tail = b""

    def __bool__(self) -> bool:
        return bool(self._forms)

    def scrub(self, data: bytes) -> bytes:
        for form, placeholder in self._forms:
            data = data.replace(form, placeholder)
        return data

    def _rewrite(self, window: bytes) -> bytes:
        return self.scrub(window)

    def _held(self, window: bytes) -> int:
        held = 0
        for form, _ in self._forms:
            start = max(0, len(window) - len(form) + 1)
            at = window.find(form[:1], start)
            while at != -1 and not form.startswith(window[at:]):
                at = window.find(form[:1], at + 1)
            if at != -1:
                held = max(held, len(window) - at)
        return held


def _echo_forms(value: bytes) -> set[bytes]:
    escaped = re.sub(rb"[^A-Za-z0-9._~-]", lambda m: b"%%%02X" % m.group(0)[0], value)
    return {value, escaped, re.sub(rb"%[0-9A-F]{2}", lambda m: m.group(0).lower(), escaped)}
