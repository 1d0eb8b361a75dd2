"""The gateway's own answers, as JSON with OneCLI's codes and shapes (pure).

Policy answers carry ``x-should-retry: false`` (the Anthropic and OpenAI SDKs honour it), except
429, whose ``Retry-After`` says when to come back. Messages are written for the agent reading
them: what happened and what to do. No value of a secret ever goes into one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

Header = tuple[bytes, bytes]

SELFTEST_HOST = "selftest.clawden.invalid"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[Header, ...]

    @property
    def code(self) -> str:
        return str(json.loads(self.body).get("error", ""))


def json_reply(status: int, payload: dict[str, Any], *, retry: bool = False, extra: tuple[Header, ...] = ()) -> Reply:
    body = json.dumps(payload).encode()
    headers: tuple[Header, ...] = ((b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()))
    if not retry:
        headers += ((b"x-should-retry", b"false"),)
    return Reply(status, body, headers + extra)


def blocked_by_policy(method: str, host: str, path: str, rule: str | None) -> Reply:
    return json_reply(
        403,
        {
            "error": "blocked_by_policy",
            "message": f"{method} {host}{path} is blocked by the vault rule {rule!r} for this agent. "
            "Do not retry; tell the user if the task needs it.",
            "method": method,
            "host": host,
            "path": path,
            "rule_name": rule,
        },
    )


def blocked_by_default_policy(method: str, host: str, path: str) -> Reply:
    return json_reply(
        403,
        {
            "error": "blocked_by_default_policy",
            "message": f"This agent may only reach hosts it holds a credential for or that a rule allows, "
            f"and {host} is neither. Ask the user to allow it, e.g. `clawden rules add allow-{host} "
            f"--action allow --host {host}`.",
            "method": method,
            "host": host,
            "path": path,
        },
    )


def secret_leak_blocked(method: str, host: str, path: str, secret: str) -> Reply:
    return json_reply(
        403,
        {
            "error": "secret_leak_blocked",
            "message": f"The request carries the value of the stored secret {secret!r}, which may only go to "
            f"its own hosts, not {host}. It was not sent.",
            "method": method,
            "host": host,
            "path": path,
            "secret": secret,
        },
    )


def rate_limited(limit: int, window: str, retry_after: int, rule: str) -> Reply:
    return json_reply(
        429,
        {
            "error": "rate_limited",
            "message": f"Rate limit of {limit} requests per {window} reached (vault rule {rule!r}). "
            f"Try again in {retry_after} s.",
            "limit": limit,
            "window": window,
            "rule_name": rule,
        },
        retry=True,
        extra=((b"retry-after", str(retry_after).encode()),),
    )


def approval_denied(approval_id: str, outcome: str) -> Reply:
    why = {"denied": "was denied by a human", "expired": "timed out waiting for a human's approval"}.get(
        outcome, "could not be put to a human for approval"
    )
    return json_reply(
        403,
        {
            "error": "manual_approval_denied",
            "message": f"This request {why}. Do not retry it unasked; tell the user.",
            "approval_id": approval_id,
        },
    )


def credential_not_found(status: int, host: str, path: str) -> Reply:
    return json_reply(
        status,
        {
            "error": "credential_not_found",
            "message": f"{host} refused the request ({status}) and the vault holds no credential for it. "
            "Never ask for the key in chat. Ask the user to store it on the Clawden host: "
            f"`clawden secrets add <name> --type generic --host {host} --header Authorization "
            "--format 'Bearer {value}'` (or the header or query parameter this API uses); "
            "the vault then adds it to your requests.",
            "hostname": host,
            "path": path,
        },
    )


def access_restricted(status: int, host: str, path: str, secrets: list[str]) -> Reply:
    return json_reply(
        status,
        {
            "error": "access_restricted",
            "message": f"{host} refused the request ({status}). The vault holds a credential for it "
            f"({', '.join(secrets)}) but this agent is not granted it. Ask the user to run "
            f"`clawden secrets grant {secrets[0]} --agent <this agent's group>` if it should be.",
            "hostname": host,
            "path": path,
            "secrets": secrets,
        },
    )


def gateway_error(status: int, code: str, message: str) -> Reply:
    """502 bad_gateway, 504 gateway_timeout, 400 bad_request, 403 plain_http_refused and the like."""
    return json_reply(status, {"error": code, "message": message}, retry=status in (502, 504))


def proxy_auth_required(message: str = "This gateway needs the agent group's proxy token.") -> Reply:
    return json_reply(
        407,
        {"error": "proxy_auth_required", "message": message},
        extra=((b"proxy-authenticate", b'Basic realm="Clawden vault"'),),
    )


# ---- the self-test host, answered by the gateway itself ----

SELFTEST_TEXT = "clawden-selftest-ok"


def selftest(group: str, method: str, path: str, body: bytes) -> Reply:
    """``GET /`` says who is calling; ``POST /v1/messages`` plays a one-line model turn (JSON or SSE),
    so the agent runner can check the trust of Claude Code itself, not only of Python."""
    if path in ("/", "/ping"):
        return json_reply(200, {"ok": True, "service": "clawden-vault", "agent_group": group}, retry=True)
    if method == "POST" and path == "/v1/messages/count_tokens":
        return json_reply(200, {"input_tokens": 1}, retry=True)
    if method != "POST" or path != "/v1/messages":
        return json_reply(404, {"error": "not_found", "message": f"the self-test host has no {path}"})
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        request = {}
    model = str(request.get("model") or "clawden-selftest") if isinstance(request, dict) else "clawden-selftest"
    usage = {"input_tokens": 1, "output_tokens": 1}
    message = {
        "id": "msg_clawden_selftest",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": SELFTEST_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not (isinstance(request, dict) and request.get("stream")):
        return json_reply(200, message, retry=True)
    start = dict(message, content=[], stop_reason=None)
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": SELFTEST_TEXT}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 1},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    data = b"".join(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode() for name, payload in events)
    return Reply(200, data, ((b"content-type", b"text/event-stream"), (b"content-length", str(len(data)).encode())))
