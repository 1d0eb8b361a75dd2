"""A small MCP server over stdio for tests, standard library only so it runs inside the agent image:
`python3 mcp_server.py` speaks JSON-RPC 2.0, one message per line (MCP's stdio transport), and offers one
tool, `lookup_ticket {id}`, which GETs `$TICKETS_API/v1/tickets/<id>` with `Authorization: Bearer
$TICKETS_TOKEN` (through HTTPS_PROXY, trusting SSL_CERT_FILE, as any client in a container does) and
answers with the status and the body. As strict as a real server: nothing before `initialize`, a
request without `jsonrpc: "2.0"` or of an unknown method is an error. `--broken` exits before it
speaks, as a server missing its credentials file does.

`RemoteServer` is the same server over MCP's Streamable HTTP transport (a POST per JSON-RPC message, JSON
answers, 202 for a notification, 405 for the optional GET stream), on TLS: a remote server as a group
reaches it with `--url`; it records each request's headers, so a test sees what arrived."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
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


def answer(method: str, params: dict[str, Any], tool: Callable[[str], str] = lookup) -> dict[str, Any]:
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
        text = tool(str((params.get("arguments") or {})["id"]))
        return {"content": [{"type": "text", "text": text}], "isError": not text.startswith("HTTP 2")}
    raise LookupError(f"Method not found: {method} {params.get('name', '')}".strip())


def error(msg_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def handle(msg: Any, initialized: bool, tool: Callable[[str], str] = lookup) -> dict[str, Any] | None:
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str):
        return error(msg.get("id") if isinstance(msg, dict) else None, -32600, "Invalid Request")
    if "id" not in msg:
        return None  # a notification (initialized, cancelled): nothing to answer
    if not initialized and msg["method"] not in ("initialize", "ping"):
        return error(msg["id"], -32002, "Server not initialized")
    try:
        return {"jsonrpc": "2.0", "id": msg["id"], "result": answer(msg["method"], msg.get("params") or {}, tool)}
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


class _Handler(http.server.BaseHTTPRequestHandler):
    server: RemoteServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads `requests`
        pass

    def _send(self, status: int, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
        self._send(405, {"error": "no server-sent stream here"})

    def do_DELETE(self) -> None:
        self._send(405, {"error": "sessions are not ended here"})

    def do_POST(self) -> None:
        self.server.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
        try:
            msg = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        except ValueError:
            self._send(400, error(None, -32700, "Parse error"))
            return
        reply = handle(msg, initialized=True, tool=lambda ticket: f"HTTP 200: ticket {ticket} is about a paper jam")
        self._send(202) if reply is None else self._send(200, reply)


class RemoteServer(http.server.ThreadingHTTPServer):
    """The tickets server over HTTPS on `port` (0: any), in a daemon thread; `requests` holds what came."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        threading.Thread(target=self.serve_forever, name="fake-mcp-remote", daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


if __name__ == "__main__":
    sys.exit(main())
