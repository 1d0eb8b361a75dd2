"""Host and path patterns behave as OneCLI's do."""

from __future__ import annotations

import pytest

from services.vault.patterns import PatternError, check_host_pattern, check_path_pattern, host_matches, path_matches


@pytest.mark.parametrize(("pattern", "host", "matches"), [
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
])
def test_host_patterns(pattern: str, host: str, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


@pytest.mark.parametrize(("pattern", "path", "matches"), [
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
])
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    assert path_matches(pattern, path) is matches


def test_bad_patterns_are_refused_with_a_reason() -> None:
    for bad in ("https://api.github.com", "api.github.com:443", "api.github.com/x", "*.*.example.com", ""):
        with pytest.raises(PatternError):
            check_host_pattern(bad)
    with pytest.raises(PatternError):
        check_path_pattern("v1/messages")
    with pytest.raises(PatternError):
        check_path_pattern("/v1?x=1")
    assert check_host_pattern(" API.Example.com ") == "api.example.com"
    assert check_path_pattern("") == "*"
