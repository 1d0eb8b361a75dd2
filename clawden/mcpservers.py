"""MCP servers an agent group's containers get (`clawden groups mcp`, `[groups.<name>.mcp.<server>]`): a
stdio command run inside the container, or a remote HTTP/SSE server. Either way their HTTPS goes through
the vault, so what they carry is a placeholder; the vault puts the real credential on the wire. The
bounds here are the contract's: the router refuses a server outside them, the runner leaves one out."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

Transport = Literal["stdio", "http", "sse"]
MAX_SERVERS = 16
MAX_ARGS = 64
MAX_ENV = 64
MAX_TEXT = 4096  # one argument or one environment value
MAX_COMMAND = 1024
MAX_URL = 2048
# A placeholder for a variable the vault fills on the wire (`--stub NAME`): the container never sees more.
STUB_VALUE = "clawden-managed"
MCP_ENV = "CLAWDEN_MCP_SERVERS"  # the container's variable that carries them (`encode`)
RESERVED_NAMES = frozenset({"clawden"})  # the agent runner's own tools
# Variables that route the server's traffic through the gateway and make it trust the gateway's CA: the
# agent runner sets them, and a group's setting may not point them elsewhere.
RESERVED_ENV = frozenset(
    {
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "NODE_TLS_REJECT_UNAUTHORIZED",
        "PYTHONHTTPSVERIFY",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "NODE_OPTIONS",
    }
)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class McpServer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One MCP server: `command` (with `args` and `env`) for stdio, or `url` for http/sse."""

    transport: Transport = "stdio"
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    url: str = ""


def _text_problem(what: str, value: str, limit: int) -> str:
    if len(value) > limit or "\x00" in value:
        return f"{what}: at most {limit} characters, no NUL"
    return ""


def _stdio_problem(server: McpServer) -> str:
    if server.url:
        return "a stdio server takes --command, not --url"
    if not server.command.strip():
        return "give the command that starts it (--command)"
    if len(server.args) > MAX_ARGS:
        return f"at most {MAX_ARGS} arguments"
    if len(server.env) > MAX_ENV:
        return f"at most {MAX_ENV} environment variables"
    for key in server.env:
        if not _ENV_KEY.match(key):
            return f"environment variable {key!r}: letters, digits and '_', not starting with a digit"
        if key.upper() in RESERVED_ENV:
            return f"environment variable {key}: the agent runner sets it, so traffic goes through the vault"
    texts = [("command", server.command, MAX_COMMAND)]
    texts += [(f"argument {a[:20]!r}", a, MAX_TEXT) for a in server.args]
    texts += [(f"environment variable {k}", v, MAX_TEXT) for k, v in server.env.items()]
    return next((why for what, value, limit in texts if (why := _text_problem(what, value, limit))), "")


def _remote_problem(server: McpServer) -> str:
    if server.command or server.args or server.env:
        return f"a {server.transport} server takes --url only (its credential comes from the vault)"
    if not server.url.startswith("https://") or len(server.url) > MAX_URL or not server.url[8:].strip("/"):
        return f"url {server.url[:80]!r}: give an https:// address of at most {MAX_URL} characters"
    if any(c.isspace() or not c.isprintable() for c in server.url):
        return f"url {server.url[:80]!r}: no spaces or control characters"
    return ""


def problem(name: str, server: McpServer) -> str:
    """Why `server` cannot be given to a group's agents as `name` ("" when it can), in words to act on."""
    if not _NAME.match(name):
        why = "letters, digits, '-' and '_', at most 64, starting with a letter or digit"
    elif name in RESERVED_NAMES:
        why = "that name is the agent runner's own tools"
    else:
        why = _stdio_problem(server) if server.transport == "stdio" else _remote_problem(server)
    return f"MCP server {name[:64]!r}: {why}" if why else ""


def problems(servers: dict[str, McpServer]) -> dict[str, str]:
    """Each server out of bounds, by name, and the count's bound under the key ""."""
    out = {name: why for name, server in servers.items() if (why := problem(name, server))}
    if len(servers) > MAX_SERVERS:
        out[""] = f"at most {MAX_SERVERS} MCP servers per agent group ({len(servers)} given)"
    return out


def usable(*sources: dict[str, McpServer]) -> tuple[dict[str, McpServer], list[str]]:
    """The servers of each source in turn (a later one's server replaces an earlier one's of its name),
    without those out of bounds, and why each left out was; at most MAX_SERVERS, by name."""
    merged: dict[str, McpServer] = {}
    for source in sources:
        merged.update(source)
    bad = problems(merged)
    kept = {name: s for name, s in sorted(merged.items()) if name not in bad}
    if len(kept) > MAX_SERVERS:
        bad[""] = f"at most {MAX_SERVERS} MCP servers per agent group: left out {', '.join(list(kept)[MAX_SERVERS:])}"
        kept = dict(list(kept.items())[:MAX_SERVERS])
    else:
        bad.pop("", None)
    return kept, list(bad.values())


def encode(servers: dict[str, McpServer]) -> str:
    """What the container's environment carries (CLAWDEN_MCP_SERVERS): JSON, "" for none."""
    return msgspec.json.encode(servers).decode() if servers else ""
