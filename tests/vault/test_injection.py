"""Credentials replace the agent's placeholders, per secret type, and nothing else in the request changes."""

from __future__ import annotations

from services.vault.injection import inject, set_query_param, strip_hop_by_hop
from tests.vault.conftest import secret


def test_an_api_key_replaces_the_placeholder_and_any_bearer() -> None:
    headers = [
        (b"x-api-key", b"clawden-managed"),
        (b"authorization", b"Bearer guess"),
        (b"anthropic-version", b"2023-06-01"),
    ]
    out, target = inject((secret("a", "anthropic", "api.anthropic.com", "sk-ant-api03-k"),), headers, b"/v1/m")
    assert out == [(b"anthropic-version", b"2023-06-01"), (b"x-api-key", b"sk-ant-api03-k")]
    assert target == b"/v1/m"


def test_the_oauth_beta_is_announced_once() -> None:
    oauth = secret("a", "anthropic", "h", "sk-ant-oat01-t")
    out, _ = inject((oauth,), [(b"anthropic-beta", b"oauth-2025-04-20")], b"/")
    assert out == [(b"anthropic-beta", b"oauth-2025-04-20"), (b"authorization", b"Bearer sk-ant-oat01-t")]


def test_generic_header_formats_and_query_parameters() -> None:
    header = secret("g", "generic", "h", "tok", header_name="X-Api-Token", value_format="Token {value}")
    out, _ = inject((header,), [(b"x-api-token", b"placeholder")], b"/")
    assert out == [(b"x-api-token", b"Token tok")]
    param = secret("p", "generic", "h", "a b&c", param_name="api_key")
    _, target = inject((param,), [], b"/search?q=x&api_key=placeholder&sig=%2F")
    assert target == b"/search?q=x&sig=%2F&api_key=a%20b%26c"
    assert set_query_param(b"/p", "k", "v") == b"/p?k=v"


def test_hop_by_hop_headers_go_and_an_upgrade_may_stay() -> None:
    headers = [
        (b"connection", b"keep-alive, x-hop"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"5"),
        (b"te", b"trailers"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"upgrade", b"websocket"),
        (b"content-type", b"a/b"),
    ]
    assert strip_hop_by_hop(headers) == [(b"content-type", b"a/b")]
    assert strip_hop_by_hop(headers, keep_upgrade=True) == [
        (b"content-type", b"a/b"),
        (b"upgrade", b"websocket"),
        (b"connection", b"upgrade"),
    ]
