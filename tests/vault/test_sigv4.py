"""AWS SigV4 for a secret of type `aws`: the agent's SDK signs with placeholder keys, the gateway signs the
request as it finally goes, and the site checks it as AWS would, with botocore's signer (the reference
algorithm, used only to verify) recomputing the signature from the headers the request says it signed."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from services.vault import sigv4
from services.vault.catalog import CatalogError, Secret, check_secret
from tests.vault.conftest import RigFactory, secret
from tests.vault.sites import Received

pytestmark = pytest.mark.timeout(15)

ACCESS_KEY = "AKIAREALKEY000000001"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYREALSECRET"
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD-real-session-token"
HOST = "api.example.test"  # the fake site's name; the SDK's scope says region and service


def aws(token: str = "") -> tuple:  # type: ignore[type-arg]
    keys: dict[str, str] = {"AccessKeyId": ACCESS_KEY, "SecretAccessKey": SECRET_KEY}
    if token:
        keys["SessionToken"] = token
    return (secret("aws", "aws", HOST, json.dumps(keys)),)


def agent_headers(method: str, url: str, body: bytes, service: str, region: str, **kw: Any) -> dict[str, str]:
    """What an SDK in the container sends: signed with the placeholder keys it was given."""
    request = AWSRequest(method=method, url=url, data=body, headers=kw.pop("headers", {}))
    request.context.update(kw)
    auth_class = S3SigV4Auth if service == "s3" else SigV4Auth
    auth_class(Credentials("AKIAPLACEHOLDER", "placeholder", "placeholder-token"), service, region).add_auth(request)
    return dict(request.headers.items())


def verify_with_botocore(seen: Received, region: str, service: str, token: str, monkeypatch: Any) -> None:
    """Recompute the signature of what the site received, as AWS does: from the headers it names as
    signed, the path and query as received, and the payload hash it declares."""
    headers = {k.decode(): v.decode() for k, v in seen.headers}
    authorization = headers["authorization"]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    stamp = dt.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: stamp)
    path, _, query = seen.target.decode().partition("?")
    params = [(unquote(k), unquote(v)) for k, _, v in (p.partition("=") for p in query.split("&") if p)]
    kept = {k: v for k, v in headers.items() if k in signed and k not in ("x-amz-date", "x-amz-security-token")}
    context: dict[str, Any] = {}
    if headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD":
        context["client_config"] = Config(s3={"payload_signing_enabled": False})
    request = AWSRequest(
        method=seen.method.decode(), url=f"https://{HOST}{path}", params=params, headers=kept, data=seen.body
    )
    request.context.update(context)
    auth_class = S3SigV4Auth if service == "s3" else SigV4Auth
    auth_class(Credentials(ACCESS_KEY, SECRET_KEY, token or None), service, region).add_auth(request)
    assert request.headers["Authorization"] == authorization
    assert headers.get("x-amz-security-token", "") == token


CASES = [
    # method, path and query as the SDK writes them, body, service, region, token, S3 unsigned payload
    ("GET", "/?Action=ListQueues&QueueNamePrefix=a%2Fb%20c%2Ax&Version=2012-11-05", b"", "sqs", "eu-west-1", "", False),
    ("GET", "/bucket?list-type=2&prefix=photos%2F2024%2F&delimiter=%2F&empty=", b"", "s3", "us-east-1", TOKEN, False),
    ("POST", "/", b'{"TableName":"t","Key":{"id":{"S":"1"}}}', "dynamodb", "us-west-2", TOKEN, False),
    ("PUT", "/bucket/my%20file%2Bv1.txt", b"hello, bucket", "s3", "eu-central-1", "", False),
    ("PUT", "/bucket/big.bin", b"\x00\x01 streamed as is" * 100, "s3", "eu-central-1", TOKEN, True),
    ("DELETE", "/2015-03-31/functions/f%3Aalias", b"", "lambda", "ap-south-1", "", False),
    ("POST", "/", b"Action=GetCallerIdentity&Version=2011-06-15", "sts", "us-east-1", "", False),
]


@pytest.mark.parametrize(("method", "target", "body", "service", "region", "token", "unsigned"), CASES)
async def test_the_gateway_signs_what_goes_upstream_and_botocore_agrees(
    rig: RigFactory,
    monkeypatch: Any,
    method: str,
    target: str,
    body: bytes,
    service: str,
    region: str,
    token: str,
    unsigned: bool,
) -> None:
    url = f"https://{HOST}{target}"
    context = {"client_config": Config(s3={"payload_signing_enabled": False})} if unsigned else {}
    extra = {"headers": {"Content-MD5": "x", "Content-Type": "application/octet-stream"}} if unsigned else {}
    headers = agent_headers(method, url, body, service, region, **context, **extra)
    async with rig(aws(token)) as r, r.client() as http:
        response = await http.request(method, url, content=body, headers=headers)

    assert response.status_code == 200
    (seen,) = r.site.received
    assert seen.body == body
    declared = seen.header(b"x-amz-content-sha256")
    assert declared == (b"UNSIGNED-PAYLOAD" if unsigned else hashlib.sha256(body).hexdigest().encode())
    assert ACCESS_KEY.encode() in (seen.header(b"authorization") or b"")
    assert b"PLACEHOLDER" not in b"".join(v for _, v in seen.headers)
    verify_with_botocore(seen, region, service, token, monkeypatch)
    assert SECRET_KEY not in response.text and (not token or token not in response.text)
    assert r.audit[-1].injected == ("aws",)


async def test_a_request_the_gateway_cannot_sign_is_refused_with_what_to_change(rig: RigFactory) -> None:
    url = f"https://{HOST}/bucket/key"
    chunked = agent_headers("PUT", url, b"x", "s3", "us-east-1") | {
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    }
    async with rig(aws()) as r, r.client() as http:
        unsigned_scope = await http.get(url)  # no SDK signature and a host that names no region
        streaming = await http.put(url, content=b"x", headers=chunked)

    assert (unsigned_scope.status_code, unsigned_scope.json()["error"]) == (400, "aws_signing_refused")
    assert "region and service" in unsigned_scope.json()["message"]
    assert (streaming.status_code, streaming.json()["error"]) == (400, "aws_signing_refused")
    assert "chunk" in streaming.json()["message"]
    assert r.site.received == []


async def test_the_secret_key_sent_to_another_host_is_blocked(rig: RigFactory) -> None:
    async with rig(aws(TOKEN)) as r, r.client() as http:
        key = await http.get("https://other.example.test/collect", params={"k": SECRET_KEY})
        token = await http.get("https://other.example.test/collect", headers={"x-t": TOKEN})

    assert [key.json()["error"], token.json()["error"]] == ["secret_leak_blocked"] * 2
    assert r.site.received == []


# ---- pure pieces ----


@pytest.mark.parametrize(
    ("headers", "host", "scope"),
    [
        (
            [(b"authorization", b"AWS4-HMAC-SHA256 Credential=AKIA/20250101/eu-west-1/sqs/aws4_request, S=x")],
            "x.test",
            ("eu-west-1", "sqs"),
        ),
        ([], "sqs.eu-west-1.amazonaws.com", ("eu-west-1", "sqs")),
        ([], "my-bucket.s3.us-west-2.amazonaws.com", ("us-west-2", "s3")),
        ([], "s3-us-gov-west-1.amazonaws.com", ("us-gov-west-1", "s3")),
        ([], "sts.amazonaws.com", ("us-east-1", "sts")),
        ([(b"authorization", b"Bearer x")], "example.com", None),
    ],
)
def test_region_and_service_come_from_the_sdks_scope_or_the_host(
    headers: list[tuple[bytes, bytes]], host: str, scope: tuple[str, str] | None
) -> None:
    assert sigv4.scope_of(headers, host) == scope


def test_an_aws_value_is_the_json_the_aws_cli_prints_and_never_shows_in_errors() -> None:
    pasted = '{\n  "Version": 1,\n  "AccessKeyId": "AKIA1",\n  "SecretAccessKey": "s3cr3t-key-value"\n}\n'
    compact = sigv4.compact_keys(pasted)
    assert "\n" not in compact and sigv4.parse_keys(compact).secret_access_key == "s3cr3t-key-value"
    assert "s3cr3t" not in repr(sigv4.parse_keys(compact))
    assert sigv4.compact_keys("not json") == "not json"
    for bad in ("not json", '{"AccessKeyId": "A", "SecretAccessKey": ""}'):
        with pytest.raises(CatalogError) as caught:
            check_secret(Secret(name="aws", kind="aws", host_pattern="*.amazonaws.com"), bad)
        assert "not json" not in str(caught.value)
    credential = aws(TOKEN)[0]
    assert credential.secret_values == (SECRET_KEY, TOKEN)


def test_the_payload_hash_is_the_bodys_unless_the_sdk_left_it_unsigned() -> None:
    assert sigv4.payload_hash([], b"") == hashlib.sha256(b"").hexdigest()
    assert sigv4.payload_hash([], b"abc") == hashlib.sha256(b"abc").hexdigest()
    trailer = [(b"x-amz-content-sha256", b"STREAMING-UNSIGNED-PAYLOAD-TRAILER")]
    assert sigv4.payload_hash(trailer, None) == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    with pytest.raises(sigv4.SigningRefused, match="too large"):
        sigv4.payload_hash([], None)


def test_the_canonical_query_decodes_then_encodes_the_one_sigv4_way() -> None:
    assert sigv4.canonical_query("b=2&a=x%2fy z&a=1&c") == "a=1&a=x%2Fy%20z&b=2&c="
    assert sigv4.canonical_query("") == ""


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore never talks to AWS here; make sure no environment credentials could be picked up either.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


_ = httpx  # the rig's client is httpx
