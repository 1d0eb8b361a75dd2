"""AWS Signature Version 4 for a secret of type ``aws`` (pure).

The agent's SDK signs with placeholder keys; the gateway throws that signature away and signs the
request as it finally goes upstream (path in the gateway's one form, headers after injection, the
body as sent), with the stored keys. Region and service come from the scope of the agent's own
``Authorization`` (its SDK knows them), else from the host name (``sqs.eu-west-1.amazonaws.com``).
The payload hash is ``x-amz-content-sha256``: the body's SHA-256, or the agent's ``UNSIGNED-PAYLOAD``
(S3 over TLS) kept as it was. Chunk-signed uploads (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``) carry
signatures made with the placeholder key inside the body, so they cannot be re-signed: refused.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
from collections.abc import Sequence
from urllib.parse import quote, unquote

import msgspec

Header = tuple[bytes, bytes]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = (b"UNSIGNED-PAYLOAD", b"STREAMING-UNSIGNED-PAYLOAD-TRAILER")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# What is signed: the host, the content's type and digest, and every x-amz-* header (AWS requires
# those). Headers a proxy on the way may change (user-agent, content-length, hop-by-hop) are not.
SIGNED_PLAIN = frozenset({b"host", b"content-type", b"content-md5"})
# Replaced by the gateway, whatever the agent sent.
REPLACED = frozenset({b"authorization", b"x-amz-date", b"x-amz-security-token", b"x-amz-content-sha256"})
_SCOPE = re.compile(rb"Credential=[^/,\s]*/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_REGION = r"[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d"
_HOST = re.compile(rf"^(?:.+\.)?([a-z0-9-]+)[.-]({_REGION})\.amazonaws\.com$")
_GLOBAL_HOST = re.compile(r"^(?:.+\.)?([a-z0-9-]+)\.amazonaws\.com$")
UNRESERVED = "-_.~"


class AwsKeys(msgspec.Struct, frozen=True, rename="pascal"):
    """The stored value: the JSON `aws configure export-credentials` prints (Version and Expiration ignored)."""

    access_key_id: str
    secret_access_key: str
    session_token: str = ""

    def __repr__(self) -> str:
        return f"AwsKeys(access_key_id={self.access_key_id!r}, <secret hidden>)"


class SigningRefused(ValueError):
    """A request the gateway cannot sign; the message says what the agent should change."""


_decoder = msgspec.json.Decoder(AwsKeys)


@functools.lru_cache(maxsize=64)
def parse_keys(value: str) -> AwsKeys:
    """The keys in a stored value, or ValueError saying what is wrong (never echoing the value)."""
    try:
        keys = _decoder.decode(value)
    except msgspec.DecodeError:
        raise ValueError(
            'an aws value is JSON: {"AccessKeyId": ..., "SecretAccessKey": ..., "SessionToken": ... (optional)}, '
            "as `aws configure export-credentials` prints it"
        ) from None
    if not keys.access_key_id or not keys.secret_access_key:
        raise ValueError("an aws value needs a non-empty AccessKeyId and SecretAccessKey")
    return keys


def compact_keys(value: str) -> str:
    """A pasted value on one line (`aws configure export-credentials` prints it over several, and a
    stored value holds no control characters); left as it is when it is not such JSON (refused later)."""
    try:
        return msgspec.json.encode(_decoder.decode(value)).decode()
    except msgspec.DecodeError:
        return value


def scope_of(headers: Sequence[Header], host: str) -> tuple[str, str] | None:
    """(region, service) from the agent's own signature, else from the host; None when neither says."""
    for name, value in headers:
        if name.lower() == b"authorization" and (signed := _SCOPE.search(value)):
            return signed.group(1).decode(), signed.group(2).decode()
    if match := _HOST.match(host):
        return match.group(2), match.group(1)
    if match := _GLOBAL_HOST.match(host):  # sts.amazonaws.com, iam.amazonaws.com: the global endpoint
        return "us-east-1", match.group(1)
    return None


def unsigned(headers: Sequence[Header]) -> bool:
    """The agent's SDK chose not to sign the payload (its body need not be read to be hashed)."""
    return _declared(headers) in UNSIGNED


def _declared(headers: Sequence[Header]) -> bytes:
    return next((v.strip() for k, v in headers if k.lower() == b"x-amz-content-sha256"), b"")


def payload_hash(headers: Sequence[Header], body: bytes | None) -> str:
    """What ``x-amz-content-sha256`` says: the agent's unsigned marker kept, else the body's digest
    (``body`` None means the body is not at hand, which only an unsigned payload may be)."""
    declared = _declared(headers)
    if declared in UNSIGNED:
        return declared.decode()
    if declared.startswith(b"STREAMING-"):
        raise SigningRefused(
            f"a chunk-signed upload ({declared.decode('ascii', 'replace')}) cannot be re-signed by the vault; "
            "turn off chunked signing in the SDK (for S3: payload signing off, or a checksum in a header)"
        )
    if body is None:
        raise SigningRefused("the body is too large for the vault to hash; send x-amz-content-sha256: UNSIGNED-PAYLOAD")
    return hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256


def sign(
    method: str,
    host: str,
    target: bytes,
    headers: Sequence[Header],
    keys: AwsKeys,
    scope: tuple[str, str],
    body_hash: str,
    now: float,
) -> list[Header]:
    """``headers`` without the agent's signature, with the date, token, payload hash and Authorization."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = [(k, v) for k, v in headers if k.lower() not in REPLACED]
    kept += [(b"x-amz-date", stamp.encode()), (b"x-amz-content-sha256", body_hash.encode())]
    if keys.session_token:
        kept.append((b"x-amz-security-token", keys.session_token.encode()))
    region, service = scope
    signed = sorted({k.lower() for k, _ in kept if k.lower() in SIGNED_PLAIN or k.lower().startswith(b"x-amz-")})
    canonical = "\n".join(
        [
            method,
            canonical_path(target.partition(b"?")[0].decode("ascii"), service),
            canonical_query(target.partition(b"?")[2].decode("ascii")),
            *(f"{name.decode()}:{_header_value(kept, name)}" for name in signed),
            "",
            ";".join(n.decode() for n in signed),
            body_hash,
        ]
    )
    credential_scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, credential_scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = signing_key(keys.secret_access_key, stamp[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"{ALGORITHM} Credential={keys.access_key_id}/{credential_scope}, "
        f"SignedHeaders={';'.join(n.decode() for n in signed)}, Signature={signature}"
    )
    return [*kept, (b"authorization", authorization.encode())]


def canonical_path(path: str, service: str) -> str:
    """S3 signs the path as sent; every other service signs it URI-encoded once more."""
    return path if service == "s3" else quote(path, safe="/~")


def canonical_query(query: str) -> str:
    """Each name and value decoded, then encoded the one SigV4 way, sorted by name then value."""
    if not query:
        return ""
    pairs = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        pairs.append((_encode(name), _encode(value)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _encode(text: str) -> str:
    # A + in a query is a literal plus to AWS (not a space): %2B, as SigV4 encodes it.
    return quote(unquote(text), safe=UNRESERVED)


def _header_value(headers: Sequence[Header], name: bytes) -> str:
    values = [" ".join(v.decode("latin-1").split()) for k, v in headers if k.lower() == name]
    return ",".join(values)


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
