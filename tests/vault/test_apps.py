"""The app connections' pure core as tables: hosts to providers, the authorization request, token
responses (Google's and GitHub's shapes), when a token is due, and the replies given in the app's name."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from services.vault.apps import (
    PLACEHOLDER_TOKEN,
    PROVIDERS,
    AppError,
    Device,
    Grant,
    Refused,
    app_not_connected,
    authorize_url,
    check_redirect_uri,
    check_scopes,
    is_agent_token_call,
    needs_refresh,
    next_interval,
    oauth_error_text,
    pkce_challenge,
    provider,
    provider_for_host,
    provider_reaching,
    read_device_response,
    read_token_response,
    synthetic_token,
)

GOOGLE, GITHUB = PROVIDERS["google"], PROVIDERS["github"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("gmail.googleapis.com", "google"),
        ("GMAIL.googleapis.com", "google"),
        ("www.googleapis.com", "google"),
        ("oauth2.googleapis.com", None),  # the token endpoint: answered, never signed
        ("api.github.com", "github"),
        ("github.com", None),  # git over HTTPS is not signed with the API token
        ("storage.googleapis.com", None),
        ("example.com", None),
    ],
)
def test_hosts_belong_to_their_provider(host: str, expected: str | None) -> None:
    found = provider_for_host(host)
    assert (found.name if found else None) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [("oauth2.googleapis.com", "google"), ("Gmail.googleapis.com", "google"), ("github.com", None), ("x.test", None)],
)
def test_an_allowlist_lets_a_connected_provider_be_reached_at_its_api_and_token_endpoint(
    host: str, expected: str | None
) -> None:
    found = provider_reaching(host)
    assert (found.name if found else None) == expected


@pytest.mark.parametrize(
    ("method", "host", "path", "answered"),
    [
        ("POST", "oauth2.googleapis.com", "/token", True),
        ("POST", "oauth2.googleapis.com", "/token?x=1", True),
        ("POST", "www.googleapis.com", "/oauth2/v4/token", True),
        ("POST", "OAUTH2.googleapis.com", "/token", True),
        ("GET", "oauth2.googleapis.com", "/token", False),
        ("POST", "oauth2.googleapis.com", "/revoke", False),
        ("POST", "gmail.googleapis.com", "/token", False),
        ("POST", "api.github.com", "/login/oauth/access_token", False),  # GitHub has no in-container refresh
        ("POST", "example.com", "/token", False),
    ],
)
def test_only_the_token_endpoint_refresh_is_answered_by_the_gateway(
    method: str, host: str, path: str, answered: bool
) -> None:
    assert (is_agent_token_call(method, host, path) is not None) is answered


def test_pkce_challenge_is_rfc_7636_s256() -> None:
    # RFC 7636 Appendix B's example.
    assert (
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
    verifier = "x" * 64
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert pkce_challenge(verifier) == expected


def test_authorize_url_carries_pkce_state_and_offline_access() -> None:
    url = urlsplit(authorize_url(GOOGLE, "cid", "http://127.0.0.1:5000/callback", "st", "v" * 50, ("openid", "email")))
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == GOOGLE.authorize_url
    assert query == {
        "response_type": "code",
        "client_id": "cid",
        "redirect_uri": "http://127.0.0.1:5000/callback",
        "scope": "openid email",
        "state": "st",
        "code_challenge": pkce_challenge("v" * 50),
        "code_challenge_method": "S256",
        "access_type": "offline",
        "prompt": "consent",
    }
    assert "access_type" not in authorize_url(GITHUB, "cid", "http://127.0.0.1:5000/", "st", "v" * 50, ("repo",))


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("http://127.0.0.1:5000/callback", True),
        ("http://localhost:5000/", True),
        ("http://[::1]:5000", True),
        ("http://127.0.0.1/callback", False),  # no port
        ("https://127.0.0.1:5000/", False),
        ("http://evil.example:5000/", False),
        ("http://127.0.0.1:5000/?next=x", False),
        ("http://127.0.0.1:0/", False),
    ],
)
def test_only_a_loopback_redirect_is_accepted(uri: str, ok: bool) -> None:
    if ok:
        assert check_redirect_uri(uri) == uri
    else:
        with pytest.raises(AppError):
            check_redirect_uri(uri)


def test_scopes_default_per_provider_and_are_checked() -> None:
    assert check_scopes(GITHUB, []) == ("read:user",)
    assert check_scopes(GOOGLE, ["https://www.googleapis.com/auth/calendar"]) == (
        "https://www.googleapis.com/auth/calendar",
    )
    with pytest.raises(AppError, match="not an OAuth scope"):
        check_scopes(GOOGLE, ["a b"])
    with pytest.raises(AppError, match="connect one of github, google"):
        provider("dropbox")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            200,
            {
                "access_token": "ya29.a",
                "expires_in": 3599,
                "refresh_token": "1//r",
                "scope": "s",
                "token_type": "Bearer",
            },
            Grant("ya29.a", 1000.0 + 3599, "1//r", "s"),
        ),
        (
            200,
            {"access_token": "gho_a", "token_type": "bearer", "scope": "read:user"},
            Grant("gho_a", None, None, "read:user"),
        ),
        (
            200,
            {"error": "bad_verification_code", "error_description": "The code is wrong"},
            Refused("bad_verification_code", "The code is wrong", 200),
        ),
        (
            400,
            {"error": "invalid_grant", "error_description": "Bad Request"},
            Refused("invalid_grant", "Bad Request", 400),
        ),
        (503, {}, Refused("invalid_response", "HTTP 503", 503)),
        (
            200,
            {"access_token": "x", "token_type": "mac"},
            Refused("invalid_response", "the token endpoint gave no bearer access token", 200),
        ),
        (
            200,
            {"token_type": "Bearer"},
            Refused("invalid_response", "the token endpoint gave no bearer access token", 200),
        ),
    ],
)
def test_token_responses_are_read_in_both_providers_shapes(
    status: int, body: dict[str, object], expected: object
) -> None:
    assert read_token_response(status, json.dumps(body).encode(), 1000.0) == expected


def test_a_token_response_that_is_not_json_is_refused() -> None:
    refused = read_token_response(200, b"access_token=gho_a&token_type=bearer", 0.0)
    assert isinstance(refused, Refused) and refused.error == "invalid_response"
    assert not refused.needs_reconnect
    assert Refused("invalid_grant", "", 400).needs_reconnect
    assert "gho_a" not in repr(Grant("gho_a", None, "r"))


@pytest.mark.parametrize(
    ("expires_at", "now", "due"),
    [
        (None, 1e12, False),  # a token that does not expire
        (1000.0, 600.0, False),
        (1000.0, 700.0, True),  # inside the 300 s margin
        (1000.0, 1000.0, True),
        (1000.0, 2000.0, True),
    ],
)
def test_a_token_is_due_when_its_own_expiry_is_near(expires_at: float | None, now: float, due: bool) -> None:
    assert needs_refresh(expires_at, now) is due


def test_replies_given_in_the_apps_name() -> None:
    token = synthetic_token()
    assert (token.status, json.loads(token.body)) == (
        200,
        {"access_token": PLACEHOLDER_TOKEN, "expires_in": 3599, "token_type": "Bearer"},
    )
    assert json.loads(synthetic_token("email").body)["scope"] == "email"
    missing = app_not_connected(GOOGLE, "gmail.googleapis.com", "/gmail/v1/users/me/messages")
    body = json.loads(missing.body)
    assert missing.status == 401 and missing.code == "app_not_connected"
    assert body["connect_command"] == "clawden apps connect google"
    assert body["error_description"] == body["message"]
    assert (b"x-should-retry", b"false") in missing.headers
    why = app_not_connected(GITHUB, "api.github.com", "/user", 403, "github refused it")
    assert why.status == 403 and json.loads(why.body)["message"].startswith("github refused it.")


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b'{"error":"invalid_grant","refresh_token":"1//secret"}', "invalid_grant"),
        (b"<html>", "no JSON"),
        (b"[1]", "?"),
    ],
)
def test_error_text_for_logs_names_only_the_error(body: bytes, text: str) -> None:
    assert oauth_error_text(body) == text


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            200,
            {"device_code": "dc", "user_code": "AB-CD", "verification_uri": "https://github.com/login/device"},
            Device("dc", "AB-CD", "https://github.com/login/device", 1000.0 + 900, 5),
        ),
        (
            200,
            {"device_code": "dc", "user_code": "AB", "verification_uri": "https://x", "expires_in": 60, "interval": 0},
            Device("dc", "AB", "https://x", 1060.0, 1),  # at least a second between polls
        ),
        (
            200,
            {"device_code": "dc", "user_code": "AB", "verification_uri": "https://x", "interval": 900},
            Device("dc", "AB", "https://x", 1900.0, 60),  # at most a minute
        ),
        (
            200,
            {"device_code": "dc", "user_code": "AB", "verification_uri": "http://phish.example/device"},
            Refused("invalid_response", "the device endpoint gave no https verification page", 200),
        ),
        (
            200,
            {"error": "device_flow_disabled", "error_description": "off"},
            Refused("device_flow_disabled", "off", 200),
        ),
        (404, {}, Refused("invalid_response", "HTTP 404", 404)),
    ],
)
def test_device_code_responses(status: int, body: dict[str, object], expected: object) -> None:
    assert read_device_response(status, json.dumps(body).encode(), 1000.0) == expected


def test_device_code_odd_answers_and_the_polling_pace() -> None:
    refused = read_device_response(200, b"device_code=x", 0.0)
    assert isinstance(refused, Refused) and refused.error == "invalid_response"
    assert "dc-secret" not in repr(Device("dc-secret", "AB", "https://x", 0.0, 5))
    assert next_interval(Refused("slow_down", "", 200), 5) == 10  # RFC 8628 §3.5
    assert next_interval(Refused("authorization_pending", "", 200), 5) == 5
    assert PROVIDERS["github"].device_url and not PROVIDERS["google"].device_url
