"""The policy decision is pure: a request head, a group's rules and secrets, and the clock in; a verdict out."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from services.vault.catalog import Catalog, Condition, Credential, GroupView, Rule
from services.vault.paths import PathRefused, normalise
from services.vault.policy import (
    CONDITION_BODY_LIMIT,
    Allowed,
    Ask,
    Blocked,
    EchoScrubber,
    LeakFound,
    LeakScanner,
    Limited,
    RateKey,
    RequestHead,
    base64_cores,
    body_for_conditions,
    conditions_hold,
    decide,
    large_body_matches,
    needs_body,
    stored_for_host,
    with_form_methods,
)
from tests.vault.conftest import rule, secret

KEY = "sk-ant-api03-policy-test-key"
TOKEN = "ghp_policy-test-token-123"
NOW = 1_000_000.0  # 40 s into its minute


def head(
    method: str = "GET",
    host: str = "api.example.test",
    target: bytes = b"/",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> RequestHead:
    return RequestHead(method, host, 443, target, list(headers))


def view(
    rules: tuple[Rule, ...] = (),
    credentials: tuple[Credential, ...] = (),
    group: str = "main",
    egress: dict[str, str] | None = None,
) -> GroupView:
    return Catalog(credentials=credentials, rules=rules, egress=egress or {}).view(group)  # type: ignore[arg-type]


def test_block_beats_approval_beats_rate_limit() -> None:
    rules = (
        rule("limit", "rate_limit", "api.example.test", rate_limit=1),
        rule("ask", "manual_approval", "api.example.test"),
        rule("no", "block", "api.example.test", method="DELETE"),
    )
    assert decide(view(rules), head("DELETE"), NOW, {}) == Blocked("blocked_by_policy", rule="no")
    assert decide(view(rules), head("GET"), NOW, {}) == Ask(rules[1])
    approved = decide(view(rules), head("GET"), NOW, {}, approved=frozenset({"ask"}))
    assert approved == Allowed((), charges=(RateKey("limit", "main", int(NOW // 60), 60),))
    limited = decide(
        view(rules), head("GET"), NOW, {RateKey("limit", "main", int(NOW // 60), 60): 1}, frozenset({"ask"})
    )
    assert limited == Limited(rules[0], retry_after=20, key=RateKey("limit", "main", int(NOW // 60), 60))


def test_rules_apply_to_their_group_and_methods_only() -> None:
    rules = (
        rule("work-only", "block", "api.example.test", agent_group="work"),
        rule("posts", "block", "api.example.test", method="POST", path_pattern="/v1/*"),
        rule("off", "block", "api.example.test", enabled=False),
    )
    assert isinstance(decide(view(rules, group="work"), head(), NOW, {}), Blocked)
    assert isinstance(decide(view(rules), head(), NOW, {}), Allowed)
    assert decide(view(rules), head("POST", target=b"/v1/x?y=1"), NOW, {}) == Blocked("blocked_by_policy", rule="posts")
    assert isinstance(decide(view(rules), head("POST", target=b"/v2/x"), NOW, {}), Allowed)


def test_blocking_a_git_push_blocks_its_discovery_request_too() -> None:
    rules = (rule("no-push", "block", "github.com", method="POST", path_pattern="/*/*/git-receive-pack"),)
    discovery = head("GET", "github.com", b"/me/repo/info/refs?service=git-receive-pack")
    fetch = head("GET", "github.com", b"/me/repo/info/refs?service=git-upload-pack")
    assert decide(view(rules), discovery, NOW, {}) == Blocked("blocked_by_policy", rule="no-push")
    assert isinstance(decide(view(rules), fetch, NOW, {}), Allowed)


def test_rate_limits_count_in_fixed_windows() -> None:
    rules = (rule("hourly", "rate_limit", "*", rate_limit=2, rate_window="hour"),)
    key = RateKey("hourly", "main", int(NOW // 3600), 3600)
    assert decide(view(rules), head(), NOW, {key: 1}).charges == (key,)  # type: ignore[union-attr]
    limited = decide(view(rules), head(), NOW, {key: 2})
    assert isinstance(limited, Limited) and limited.retry_after == key.ends - NOW
    assert isinstance(decide(view(rules), head(), NOW + 3600, {key: 2}), Allowed)


def test_only_granted_secrets_for_the_host_and_path_are_injected() -> None:
    credentials = (
        secret("mine", "generic", "api.example.test", TOKEN, grants=("main",), header_name="X-A"),
        secret("theirs", "generic", "api.example.test", "other-token-000", grants=("work",), header_name="X-B"),
        secret("uploads", "generic", "api.example.test", "upload-token-0", path_pattern="/upload/*", header_name="X-C"),
        secret("model", "anthropic", "api.anthropic.com", KEY),
    )
    verdict = decide(view(credentials=credentials), head(target=b"/upload/1"), NOW, {})
    assert isinstance(verdict, Allowed)
    assert [c.name for c in verdict.credentials] == ["mine", "uploads"]
    assert [c.name for c in decide(view(credentials=credentials), head(), NOW, {}).credentials] == [  # type: ignore[union-attr]
        "mine"
    ]


def test_allowlist_egress_needs_a_granted_secret_or_an_allow_rule() -> None:
    credentials = (secret("mine", "generic", "api.example.test", TOKEN, grants=("main",), header_name="X-A"),)
    rules = (rule("ok", "allow", "*.allowed.test"),)
    strict = view(rules, credentials, egress={"main": "allowlist"})
    assert isinstance(decide(strict, head(), NOW, {}), Allowed)
    assert isinstance(decide(strict, head(host="cdn.allowed.test"), NOW, {}), Allowed)
    assert decide(strict, head(host="elsewhere.test"), NOW, {}) == Blocked("blocked_by_default_policy")
    assert isinstance(decide(view(rules, credentials), head(host="elsewhere.test"), NOW, {}), Allowed)


def test_the_leak_guard_finds_values_headed_for_the_wrong_host() -> None:
    credentials = (
        secret("model", "anthropic", "api.anthropic.com", KEY),
        secret("gh", "generic", "api.github.com", TOKEN, grants=("work",), header_name="Authorization"),
    )
    leaky = view(credentials=credentials)
    assert decide(leaky, head(headers=((b"x-a", f"Bearer {KEY}".encode()),)), NOW, {}) == Blocked(
        "secret_leak_blocked", secret="model"
    )
    # Another group's secret counts too, and so does a percent-encoded copy in the query.
    quoted = TOKEN.replace("_", "%5F").encode()
    assert decide(leaky, head(target=b"/?q=" + quoted), NOW, {}) == Blocked("secret_leak_blocked", secret="gh")
    assert isinstance(
        decide(leaky, head(host="api.anthropic.com", headers=((b"x-api-key", KEY.encode()),)), NOW, {}), Allowed
    )


def test_the_body_scanner_redacts_a_plain_value_split_across_chunks_before_any_of_it_leaves() -> None:
    scanner = LeakScanner((secret("model", "anthropic", "api.anthropic.com", KEY),))
    first = scanner.feed(b'{"text":"' + KEY[:9].encode())
    second = scanner.feed(KEY[9:].encode() + b'"}')
    sent = first + second + scanner.flush()

    assert KEY[:4].encode() not in first  # held back until the next chunk showed what it was
    assert len(sent) == len(b'{"text":""}') + len(KEY) and KEY.encode() not in sent
    assert json.loads(sent)["text"].startswith("[redacted]") and scanner.redacted == {"model"}
    assert not LeakScanner(())


def _json_escaped(value: str) -> bytes:
    return "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(value)).encode()


@pytest.mark.parametrize(
    ("disguise", "encode"),
    [
        ("json \\u escapes", _json_escaped),
        ("percent-encoding", lambda v: "".join(f"%{b:02X}" for b in v.encode()).encode()),
        ("double percent-encoding", lambda v: "".join(f"%25{b:02X}" for b in v.encode()).encode()),
        ("base64", lambda v: base64.b64encode(b"k=" + v.encode())),
        ("url-safe base64", lambda v: base64.urlsafe_b64encode(b"key:" + v.encode() + b"!")),
    ],
)
def test_a_disguised_value_in_a_body_is_refused(disguise: str, encode: Callable[[str], bytes]) -> None:
    scanner = LeakScanner((secret("model", "anthropic", "api.anthropic.com", KEY),))
    with pytest.raises(LeakFound):
        scanner.feed(b'{"note": "' + encode(KEY) + b'"}')
        scanner.flush()


def test_a_value_used_as_a_header_name_is_a_leak() -> None:
    credentials = (secret("model", "anthropic", "api.anthropic.com", KEY),)
    assert decide(view((), credentials), head(headers=((KEY.encode(), b"1"),)), NOW, {}) == Blocked(
        "secret_leak_blocked", secret="model"
    )


# --- one path form: what the gateway normalises before any rule sees it (issue: path tricks) ------

PROD_VARIANTS = [
    b"/repos/acme/x/../prod/deploy",
    b"/repos/acme/./prod/deploy",
    b"/repos/acme/x/%2e%2e/prod/deploy",
    b"/repos/acme/%70rod/deploy",
    b"/repos//acme//prod/deploy",
    b"/repos/ACME/prod/deploy",
    b"/repos/acme/PROD/deploy",
    b"/repos/acme/prod/",
    b"/repos/acme/prod",
]
REFUSED_VARIANTS = [
    b"/repos/acme%2Fprod/deploy",
    b"/repos/acme\\prod/deploy",
    b"/repos/acme/prod/deploy#x",
    b"/repos/acme/prod;x/deploy",
    b"/repos/acme/prod%5cdeploy",
]


@pytest.mark.parametrize("target", PROD_VARIANTS)
def test_every_spelling_of_a_blocked_path_is_blocked(target: bytes) -> None:
    rules = (rule("no-prod-deletes", "block", "api.github.com", method="DELETE", path_pattern="/repos/acme/prod/*"),)
    normalised = normalise(target).raw

    assert decide(view(rules), head("DELETE", "api.github.com", normalised), NOW, {}) == Blocked(
        "blocked_by_policy", rule="no-prod-deletes"
    )


@pytest.mark.parametrize(
    ("pattern", "target"),
    [
        ("/v1/models/*:predict", b"/v1/models/m%3Apredict"),
        ("/v1/models/*:predict", b"/v1/models/m%3apredict"),
        ("/v1.0/$batch", b"/v1.0/%24batch"),
    ],
)
def test_a_reserved_character_escaped_still_meets_its_rule(pattern: str, target: bytes) -> None:
    rules = (rule("no-predict", "block", "api.example.test", path_pattern=pattern),)
    normalised = normalise(target).raw
    assert normalised == target.replace(b"%3a", b"%3A")  # what the site gets keeps its escape
    assert decide(view(rules), head("POST", target=normalised), NOW, {}) == Blocked("blocked_by_policy", "no-predict")


@pytest.mark.parametrize("target", REFUSED_VARIANTS)
def test_spellings_that_have_no_one_form_are_refused(target: bytes) -> None:
    with pytest.raises(PathRefused):
        normalise(target)


def test_a_path_scoped_allow_and_a_secret_scope_cannot_be_left_by_dot_segments() -> None:
    allow = (rule("public", "allow", "api.example.test", path_pattern="/public/*"),)
    scoped = secret("tenant-a", "generic", "api.example.test", TOKEN, path_pattern="/tenant-a/*")
    escape = normalise(b"/public/../private/x").raw
    assert decide(view(allow, egress={"main": "allowlist"}), head(target=escape), NOW, {}) == Blocked(
        "blocked_by_default_policy"
    )
    assert decide(view((), (scoped,)), head(target=normalise(b"/tenant-a/../tenant-b/x").raw), NOW, {}) == Allowed(())
    assert decide(view((), (scoped,)), head(target=normalise(b"/tenant-a/./x").raw), NOW, {}) == Allowed((scoped,))


def test_a_method_override_is_held_to_the_rules_of_the_method_it_names() -> None:
    rules = (rule("no-deletes", "block", "api.example.test", method="DELETE"),)
    for overridden in (
        head("POST", headers=((b"X-HTTP-Method-Override", b"DELETE"),)),
        head("POST", headers=((b"x-http-method", b"delete"),)),
        head("POST", target=b"/x?_method=DELETE"),
    ):
        assert decide(view(rules), overridden, NOW, {}) == Blocked("blocked_by_policy", rule="no-deletes")
    assert isinstance(decide(view(rules), head("POST"), NOW, {}), Allowed)


FORM = ((b"Content-Type", b"application/x-www-form-urlencoded; charset=utf-8"),)


def test_a_form_bodys_method_field_is_held_to_the_rules_of_the_method_it_names() -> None:
    rules = (
        rule("no-deletes", "block", "api.example.test", method="DELETE"),
        rule("puts-ok", "allow", "api.example.test", method="PUT"),
    )
    form = head("POST", headers=FORM)
    assert needs_body(view(rules), form)
    assert not needs_body(view(rules), head("POST", headers=((b"content-type", b"application/json"),)))
    assert not needs_body(view(rules[1:]), form)  # an allow rule is not widened by a form field
    named = with_form_methods(form, b"title=x&_method=DELETE")
    assert decide(view(rules), named, NOW, {}) == Blocked("blocked_by_policy", rule="no-deletes")
    assert isinstance(decide(view(rules), with_form_methods(form, b"title=x"), NOW, {}), Allowed)
    assert with_form_methods(head("POST"), b"_method=DELETE") == head("POST")  # not a form: not read


def test_a_secret_goes_only_to_its_port() -> None:
    token = secret("gh", "generic", "api.github.com", TOKEN)
    on_8443 = RequestHead("GET", "api.github.com", 8443, b"/", [])

    assert decide(view((), (token,)), on_8443, NOW, {}) == Allowed(())
    assert decide(view((), (token,)), head(host="api.github.com"), NOW, {}) == Allowed((token,))


def test_what_is_stored_for_a_host_is_listed_whatever_its_grants_path_or_port() -> None:
    """What the audit names when a request got no secret: the ones kept for that host all the same."""
    mine = secret("gh", "generic", "api.github.com", TOKEN, grants=("work",), header_name="Authorization")
    scoped = secret(
        "gh-repo", "generic", "api.github.com", TOKEN + "2", header_name="Authorization", path_pattern="/repos/*"
    )
    other = secret("model", "anthropic", "api.anthropic.com", KEY)
    assert stored_for_host((mine, scoped, other), head(host="api.github.com", target=b"/user")) == (mine, scoped)
    assert stored_for_host((mine, other), head(host="example.test")) == ()


def test_a_value_too_short_for_a_sure_base64_core_has_none_and_a_long_one_is_found_at_every_alignment() -> None:
    assert base64_cores(b"s3cret") == []  # a core under 8 characters would match innocent text
    for prefix in (b"", b"k", b"k=", b"key"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(prefix + KEY.encode() + b"!")
            assert any(core in encoded for core in base64_cores(KEY.encode())), (prefix, encode)


# ---- body conditions ----


def cond(operator: str, value: str, pointer: str = "") -> Condition:
    return Condition(operator=operator, value=value, pointer=pointer)  # type: ignore[arg-type]


SEND = b'{"to": "boss@example.com", "amount": 1200, "tags": ["urgent"], "note": "caf\\u00e9"}'


@pytest.mark.parametrize(
    ("conditions", "body", "blocked"),
    [
        ((cond("contains", "boss@"),), SEND, True),
        ((cond("contains", "café"),), SEND, True),  # as the server reads it, \u escapes decoded
        ((cond("contains", "nobody"),), SEND, False),
        ((cond("equals", "boss@example.com", "/to"),), SEND, True),
        ((cond("equals", "boss", "/to"),), SEND, False),
        ((cond("contains", "boss", "/to"),), SEND, True),
        ((cond("equals", "1200", "/amount"),), SEND, True),  # non-strings compare as JSON text
        ((cond("equals", "urgent", "/tags/0"),), SEND, True),
        ((cond("equals", "urgent", "/tags/1"),), SEND, False),
        ((cond("equals", "urgent", "/tags/x"),), SEND, False),
        ((cond("equals", "x", "/missing/deeper"),), SEND, False),
        ((cond("equals", "v", "/a~1b"),), b'{"a/b": "v"}', True),  # RFC 6901 escapes
        ((cond("contains", "boss"), cond("equals", "9", "/amount")), SEND, False),  # all must hold
        ((cond("equals", "x", "/to"),), b"", False),  # no body: nothing at any pointer
        ((cond("equals", "x", "/to"),), b"to=x", True),  # not JSON: untestable, a block applies
        ((cond("equals", "ok", "/to"),), b'{"to": "ok", "to": "evil"}', True),  # ambiguous: untestable
        ((cond("contains", "x"),), None, True),  # too large or compressed: a block applies
    ],
)
def test_a_rule_with_conditions_matches_on_what_the_body_holds(
    conditions: tuple[Condition, ...], body: bytes | None, blocked: bool
) -> None:
    rules = (rule("no-boss", "block", "api.example.test", method="POST", conditions=conditions),)
    verdict = decide(view(rules), head("POST"), NOW, {}, body=body)
    assert isinstance(verdict, Blocked) is blocked


def test_what_a_rule_does_with_a_body_it_cannot_test_is_its_own_or_its_actions() -> None:
    contains = (cond("contains", "x"),)
    assert large_body_matches(rule("b", "block", "h", conditions=contains))
    assert large_body_matches(rule("l", "rate_limit", "h", rate_limit=1, conditions=contains))
    assert not large_body_matches(rule("a", "allow", "h", conditions=contains))
    assert not large_body_matches(rule("b", "block", "h", conditions=contains, large_body="ignore"))
    assert large_body_matches(rule("a", "allow", "h", conditions=contains, large_body="match"))
    assert conditions_hold(rule("plain", "block", "h"), None)


def test_the_body_is_read_only_when_a_matching_rule_has_conditions() -> None:
    rules = (
        rule("heads-only", "block", "api.example.test", path_pattern="/admin/*"),
        rule("bodies", "block", "api.example.test", method="POST", conditions=(cond("contains", "x"),)),
    )
    assert needs_body(view(rules), head("POST", target=b"/send"))
    assert not needs_body(view(rules), head("GET", target=b"/send"))
    assert not needs_body(view(rules[:1]), head("POST", target=b"/admin/x"))


@pytest.mark.parametrize(
    ("data", "complete", "headers", "testable"),
    [
        (b"{}", True, (), True),
        (b"{}", True, ((b"content-encoding", b"identity"),), True),
        (b"{}", True, ((b"Content-Encoding", b"gzip"),), False),
        (b"{}", True, ((b"content-encoding", b"identity"), (b"content-encoding", b"gzip")), False),
        (b"{}", True, ((b"content-encoding", b"identity, gzip"),), False),
        (b"{", False, (), False),
        (b"x" * (CONDITION_BODY_LIMIT + 1), True, (), False),
    ],
)
def test_a_body_is_testable_when_whole_within_the_limit_and_not_encoded(
    data: bytes, complete: bool, headers: tuple[tuple[bytes, bytes], ...], testable: bool
) -> None:
    assert (body_for_conditions(data, complete, headers) is not None) is testable


def test_an_allow_rule_with_conditions_lets_through_only_what_it_describes() -> None:
    rules = (rule("only-haiku", "allow", "api.example.test", conditions=(cond("equals", "haiku", "/model"),)),)
    allowlist = {"main": "allowlist"}
    assert isinstance(decide(view(rules, egress=allowlist), head("POST"), NOW, {}, body=b'{"model":"haiku"}'), Allowed)
    assert isinstance(decide(view(rules, egress=allowlist), head("POST"), NOW, {}, body=b'{"model":"opus"}'), Blocked)
    assert isinstance(decide(view(rules, egress=allowlist), head("POST"), NOW, {}, body=None), Blocked)


def test_a_path_secret_is_injectable_only_where_its_template_matches() -> None:
    tg = secret("tg", "generic", "api.example.test", "123:ABCDEFGH", path_template="/bot{value}")
    assert decide(view(credentials=(tg,)), head(target=b"/botPH/getMe"), NOW, {}) == Allowed((tg,))
    assert decide(view(credentials=(tg,)), head(target=b"/getMe"), NOW, {}) == Allowed(())


def test_the_echo_scrubber_turns_values_back_into_placeholders() -> None:
    scrubber = EchoScrubber([(b"123:ABC", b"PH")])
    assert scrubber and scrubber.scrub(b"/bot123:ABC/x /bot123%3AABC /bot123%3aABC") == b"/botPH/x /botPH /botPH"
    assert scrubber.feed(b"0123456789..123:") == b"0123456789.."  # "123:" held back: it may start a value
    assert scrubber.feed(b"ABC..") + scrubber.flush() == b"PH.."
    assert scrubber.feed(b"data: 12\n\n") == b"data: 12\n\n"  # a tail that starts no value goes at once
    assert not EchoScrubber([])
