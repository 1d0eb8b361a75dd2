"""One secret per place in a request: the most specific wins, a tie is refused when stored and settled by age
when an older vault.db holds one (pure)."""

from __future__ import annotations

import pytest

from services.vault.catalog import Catalog, Credential, Secret
from services.vault.policy import Allowed, RequestHead, decide
from services.vault.precedence import all_ties, choose, hosts_meet, paths_meet, shared_place, ties
from tests.vault.conftest import secret

NOW = 1_000_000.0
MESSAGES = RequestHead("POST", "api.anthropic.com", 443, b"/v1/messages", [])


def model_key(name: str, value: str, created_at: float, grants: tuple[str, ...] = ("*",), **kw: str) -> Credential:
    return secret(name, "anthropic", "api.anthropic.com", value, grants, created_at=created_at, **kw)


def test_three_model_keys_for_every_group_put_one_value_on_a_model_call() -> None:
    """The reported audit: anth2, anth4 and anthropic all set x-api-key on one request."""
    keys = (
        model_key("anth2", "sk-ant-api03-second", 200.0),
        model_key("anth4", "sk-ant-api03-fourth", 400.0),
        model_key("anthropic", "sk-ant-api03-first", 100.0),
    )
    verdict = decide(Catalog(credentials=keys).view("main"), MESSAGES, NOW, {})

    assert isinstance(verdict, Allowed)
    assert [c.name for c in verdict.credentials] == ["anthropic"]  # the one added first
    assert verdict.tied == (("anth2", "anthropic"), ("anth4", "anthropic"))


def test_a_grant_naming_the_group_wins_over_a_grant_to_every_group() -> None:
    everyone = model_key("anthropic", "sk-ant-api03-shared", 100.0)
    family = model_key("anth2", "sk-ant-api03-family", 200.0, grants=("family",))
    catalog = Catalog(credentials=(everyone, family))

    for group, wanted in [("family", "anth2"), ("work", "anthropic")]:
        verdict = decide(catalog.view(group), MESSAGES, NOW, {})
        assert isinstance(verdict, Allowed)
        assert ([c.name for c in verdict.credentials], verdict.tied) == ([wanted], ())


@pytest.mark.parametrize(
    ("specific", "broad"),
    [
        (("api.example.test", "*"), ("*.example.test", "*")),  # an exact host before a wildcard
        (("*.api.example.test", "*"), ("*.example.test", "*")),  # the longer host pattern
        (("api.example.test", "/repos/*"), ("api.example.test", "*")),  # a path before every path
        (("api.example.test", "/repos/own/*"), ("api.example.test", "/repos/*")),  # the longer path
    ],
)
def test_the_most_specific_secret_fills_the_header(specific: tuple[str, str], broad: tuple[str, str]) -> None:
    narrow = secret("narrow", "generic", specific[0], "n", created_at=2.0, path_pattern=specific[1], header_name="A")
    wide = secret("wide", "generic", broad[0], "w", created_at=1.0, path_pattern=broad[1], header_name="A")

    choice = choose((wide, narrow), "main")

    assert ([c.name for c in choice.injected], choice.tied) == (["narrow"], ())


def test_secrets_in_different_places_are_all_injected() -> None:
    key = model_key("anthropic", "sk-ant-api03-k", 1.0)
    proxy = secret("proxy", "generic", "api.anthropic.com", "p-token", header_name="X-Proxy-Key")
    param = secret("param", "generic", "api.anthropic.com", "q-token", param_name="key")

    assert choose((key, proxy, param), "main").injected == (key, proxy, param)


def test_an_api_key_an_oauth_token_and_a_bearer_share_one_place() -> None:
    api_key = model_key("anthropic", "sk-ant-api03-k", 1.0)
    oauth = model_key("claude", "sk-ant-oat01-t", 2.0)
    bearer = secret("bearer", "openai", "api.anthropic.com", "sk-x", created_at=0.5)

    choice = choose((oauth, api_key, bearer), "main")

    assert [c.name for c in choice.injected] == ["bearer"]
    assert choice.tied == (("anthropic", "bearer"), ("claude", "bearer"))


def stored(name: str, host: str, path: str = "*", grants: tuple[str, ...] = ("*",), **kw: str) -> Secret:
    kind = kw.pop("kind", "generic")
    fields = {"header_name": "Authorization"} if kind == "generic" and not kw else kw
    return Secret(name=name, kind=kind, host_pattern=host, path_pattern=path, grants=grants, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("other", "tie"),
    [
        (stored("b", "api.example.test"), True),
        (stored("b", "api.example.test", grants=("main",)), False),  # named beats every group
        (stored("b", "api.example.test", header_name="X-Other"), False),  # another header
        (stored("b", "api.example.test", param_name="key"), False),
        (stored("b", "other.example.test"), False),  # no host under both
        (stored("b", "api.example.test:8443"), False),  # injected on another port
        (stored("b", "api.example.test", "/v1/*"), False),  # more specific: it wins
        (stored("b", "api.example.test", kind="openai"), True),  # Bearer in the same header
        (stored("a", "api.example.test"), False),  # itself, replaced
    ],
)
def test_a_new_secret_ties_with_one_no_more_specific_in_the_same_place(other: Secret, tie: bool) -> None:
    new = stored("a", "api.example.test")

    assert (ties(new, [other]) == [other]) is tie


@pytest.mark.parametrize(
    ("a", "b", "tie"),
    [
        (("*",), ("*",), True),
        (("main",), ("main", "work"), True),
        (("*", "main"), ("main",), True),
        (("main",), ("work",), False),
        (("*",), ("work",), False),
        ((), ("*",), False),
    ],
)
def test_grants_tie_when_some_group_has_both_the_same_way(a: tuple[str, ...], b: tuple[str, ...], tie: bool) -> None:
    assert bool(ties(stored("a", "h.example.test", grants=a), [stored("b", "h.example.test", grants=b)])) is tie


@pytest.mark.parametrize(
    ("p", "q", "meet"),
    [
        ("api.example.test", "api.example.test", True),
        ("api.example.test", "www.example.test", False),
        ("api.example.test", "example.test", False),
        ("*.example.test", "api.example.test", True),
        ("api.example.test", "*.example.test", True),
        ("*.example.test", "example.test", False),  # a leading * is at least one label
        ("*.example.test", "*.other.test", False),
        ("*.a.example.test", "*.example.test", True),
        ("*.example.test", "*.b.example.test", True),
        ("s3.*.example.test", "*.eu.example.test", True),
        ("s3.*.example.test", "s3.eu.example.test", True),
        ("s3.*.example.test", "s3.eu.other.test", False),
        ("*", "api.example.test", True),
        ("api.example.test:8443", "api.example.test", False),
        ("api.example.test:443", "api.example.test", True),
    ],
)
def test_host_patterns_meet_where_one_host_falls_under_both(p: str, q: str, meet: bool) -> None:
    assert hosts_meet(p, q) is meet


@pytest.mark.parametrize(
    ("p", "q", "meet"),
    [
        ("*", "/v1/x", True),
        ("/v1/x", "*", True),
        ("/v1/x", "/v1/x", True),
        ("/v1/*", "/v1*", True),
        ("/v1*", "/v1/*", True),
        ("/v1/a", "/v1/b", False),
        ("/models/*:predict", "/models/m1:predict", True),
    ],
)
def test_path_patterns_meet_where_one_path_falls_under_both(p: str, q: str, meet: bool) -> None:
    assert paths_meet(p, q) is meet


def test_every_tie_in_a_store_is_found_once() -> None:
    secrets = [
        Secret(name=n, kind="anthropic", host_pattern="api.anthropic.com", grants=("*",))
        for n in ("anth2", "anth4", "anthropic")
    ]
    assert [(a.name, b.name) for a, b in all_ties(secrets)] == [
        ("anth2", "anth4"),
        ("anth2", "anthropic"),
        ("anth4", "anthropic"),
    ]


@pytest.mark.parametrize(
    ("a", "b", "said"),
    [
        (stored("a", "h", kind="anthropic"), stored("b", "h", kind="anthropic"), "x-api-key"),
        (stored("a", "h", kind="anthropic"), stored("b", "h", kind="openai"), "authorization"),
        (stored("a", "h", param_name="k"), stored("b", "h", param_name="k"), "the query parameter k"),
        (stored("a", "h", path_template="/bot{value}"), stored("b", "h", path_regex="x"), "the path"),
    ],
)
def test_the_shared_place_is_said_as_a_person_reads_it(a: Secret, b: Secret, said: str) -> None:
    assert shared_place(a, b) == said
