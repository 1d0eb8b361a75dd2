"""A small MCP server over stdio for tests, standard library only so it runs inside the agent image:
`python3 mcp_server.py` speaks JSON-RPC 2.0, one message per line (MCP's stdio transport), and offers one
tool, `lookup_ticket {id}`, which GETs `$TICKETS_API/v1/tickets/<id>` with `Authorization: Bearer
$TICKETS_TOKEN` (through HTTPS_PROXY, trusting SSL_CERT_FILE, as any client in a container does) and
answers with the status and the body. As strict as a real server: nothing before `initialize`, a
request without `jsonrpc: "2.0"` or of an unknown method is an error. `--broken` exits before it
speaks, as a server missing its credentials file does."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

TOOL = {
    "name": "lookup_ticket",
    "description": "Look up a support ticket by its number in the tickets service.",
    "inputSchema": {
        "type": "object",
        "properties": {"id": {"type": "string", "description": "the ticket number"}},
        "required": ["id"],
    },
}


def lookup(ticket: str) -> str:
    request = urllib.request.Request(
        f"{os.environ['TICKETS_API']}/v1/tickets/{ticket}",
        headers={"Authorization": f"Bearer {os.environ.get('TICKETS_TOKEN', '')}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return f"HTTP {response.status}: {response.read(2000).decode(errors='replace')}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read(2000).decode(errors='replace')}"
    except OSError as exc:  # no way through: the model hears it, as from a real server
        return f"request failed: {exc}"


def answer(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fake-tickets", "version": "1.0"},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": [TOOL]}
    if method == "tools/call" and params.get("name") == TOOL["name"]:
        text = lookup(str((params.get("arguments") or {})["id"]))
        return {"content": [{"type": "text", "text": text}], "isError": not text.startswith("HTTP 2")}
    raise LookupError(f"Method not found: {method} {params.get('name', '')}".strip())


def error(msg_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def handle(msg: Any, initialized: bool) -> dict[str, Any] | None:
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str):
        return error(msg.get("id") if isinstance(msg, dict) else None, -32600, "Invalid Request")
    if "id" not in msg:
        return None  # a notification (initialized, cancelled): nothing to answer
    if not initialized and msg["method"] not in ("initialize", "ping"):
        return error(msg["id"], -32002, "Server not initialized")
    try:
        return {"jsonrpc": "2.0", "id": msg["id"], "result": answer(msg["method"], msg.get("params") or {})}
    except LookupError as exc:
        return error(msg["id"], -32601, str(exc))
    except (KeyError, TypeError) as exc:
        return error(msg["id"], -32602, f"Invalid params: {exc}")


def main() -> int:
    if "--broken" in sys.argv:
        print("fake-tickets: no credentials file at /run/tickets/token", file=sys.stderr)
        return 3
    initialized = False
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            reply: dict[str, Any] | None = error(None, -32700, "Parse error")
        else:
            reply = handle(msg, initialized)
            initialized = initialized or (isinstance(msg, dict) and msg.get("method") == "initialize")
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
