"""Host and path patterns behave as OneCLI's do."""

from __future__ import annotations

import pytest

from services.vault.patterns import (
    PatternError,
    check_host_pattern,
    check_path_pattern,
    host_matches,
    path_matches,
    secret_port,
)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("api.github.com", "api.github.com", True),
        ("api.github.com", "API.GitHub.com", True),
        ("api.github.com", "api.github.com.evil.test", False),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "evilexample.com", False),
        ("s3.*.amazonaws.com", "s3.eu-west-1.amazonaws.com", True),
        ("s3.*.amazonaws.com", "s3..amazonaws.com", False),
        ("*", "anything.test", True),
    ],
)
def test_host_patterns(pattern: str, host: str, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*", "/anything/at/all", True),
        ("/v1/messages", "/v1/messages", True),
        ("/v1/messages", "/v1/messages/count_tokens", False),
        ("/repos/*", "/repos", True),
        ("/repos/*", "/repos/a/b", True),
        ("/repos/*", "/repository", False),
        ("/repo*", "/repository", True),
        ("/v1/*/charges", "/v1/acct_1/charges", True),
        ("/v1/*/charges", "/v1/a/b/charges", False),
        ("/v1/models/*:predict", "/v1/models/gemini:predict", True),
        ("/v1/models/*:predict", "/v1/models/gemini:stream", False),
    ],
)
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    assert path_matches(pattern, path) is matches


@pytest.mark.parametrize(
    ("pattern", "host", "port", "matches"),
    [
        ("api.github.com", "api.github.com", 8443, True),  # a rule without a port holds on every port
        ("api.github.com:8443", "api.github.com", 8443, True),
        ("api.github.com:8443", "api.github.com", 443, False),
    ],
)
def test_host_patterns_with_ports(pattern: str, host: str, port: int, matches: bool) -> None:
    assert host_matches(pattern, host, port) is matches


def test_a_secret_is_injected_on_443_unless_its_pattern_names_a_port() -> None:
    assert (secret_port("api.github.com"), secret_port("git.example.com:8443")) == (443, 8443)


def test_rules_that_hold_requests_back_can_match_paths_whatever_the_case() -> None:
    assert path_matches("/repos/acme/prod/*", "/repos/ACME/Prod/x", ignore_case=True)
    assert not path_matches("/repos/acme/prod/*", "/repos/ACME/Prod/x")


def test_bad_patterns_are_refused_with_a_reason() -> None:
    for bad in (
        "https://api.github.com",
        "api.github.com:0",
        "api.github.com:99999",
        "api.github.com/x",
        "*.*.example.com",
        "",
        "api.anthropic.com*",
        "api*.example.com",
        "*example.com",
    ):
        with pytest.raises(PatternError):
            check_host_pattern(bad)
    with pytest.raises(PatternError):
        check_path_pattern("v1/messages")
    with pytest.raises(PatternError):
        check_path_pattern("/v1?x=1")
    assert check_host_pattern(" API.Example.com ") == "api.example.com"
    assert check_host_pattern("git.example.com:8443") == "git.example.com:8443"
    assert check_path_pattern("") == "*"
