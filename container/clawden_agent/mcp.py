"""The agent group's own MCP servers (CLAWDEN_MCP_SERVERS, from `clawden groups mcp` and config.toml):
what Claude Code is given for them, and which of them it reports failed. Pure: the loop does the IO."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, cast

from claude_agent_sdk import McpServerConfig

log = logging.getLogger("clawden_agent")

ENV = "CLAWDEN_MCP_SERVERS"
RESERVED = frozenset({"clawden"})  # the agent runner's own tools keep their name
# What keeps a server's traffic on the gateway and its TLS trusting the gateway's CA: the agent runner's
# values, over whatever the group's setting says (the host refuses these names; this is the second lock).
ROUTING_VARIABLES = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "https_proxy",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
)
FAILED = ("failed", "needs-auth")  # Claude Code's words for a server the agent cannot use


def routing_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: env[k] for k in ROUTING_VARIABLES if env.get(k)}


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _one(spec: Mapping[str, Any], routing: Mapping[str, str]) -> McpServerConfig | None:
    transport = spec.get("transport", "stdio")
    if transport == "stdio" and isinstance(spec.get("command"), str) and spec["command"]:
        env = spec.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            return None
        args = spec.get("args") or []
        if not _strings(args):
            return None
        return {"type": "stdio", "command": spec["command"], "args": args, "env": {**env, **routing}}
    if transport in ("http", "sse") and isinstance(spec.get("url"), str) and spec["url"].startswith("https://"):
        return cast(McpServerConfig, {"type": transport, "url": spec["url"]})
    return None


def servers(text: str, env: Mapping[str, str]) -> dict[str, McpServerConfig]:
    """The servers the host sent, as the SDK takes them; a malformed one is left out, loudly."""
    if not text:
        return {}
    try:
        given = json.loads(text)
    except ValueError:
        log.error("%s is not JSON; no MCP servers of the group's", ENV)
        return {}
    out: dict[str, McpServerConfig] = {}
    for name, spec in (given if isinstance(given, dict) else {}).items():
        config = _one(spec, routing_env(env)) if isinstance(spec, dict) and name not in RESERVED else None
        if config is None:
            log.error("MCP server %r is not usable as sent; leaving it out", name)
            continue
        out[name] = config
    return out


def failures(statuses: object, names: set[str]) -> dict[str, str]:
    """The group's servers Claude Code reports it could not start (its init message, or its MCP status),
    with why when it says."""
    out: dict[str, str] = {}
    for entry in statuses if isinstance(statuses, list) else []:
        if isinstance(entry, dict) and entry.get("name") in names and entry.get("status") in FAILED:
            why = str(entry.get("error") or entry["status"])
            out[str(entry["name"])] = " ".join(why.split())[:300]
    return out


def news(failed: Mapping[str, str], told: Mapping[str, str]) -> dict[str, str]:
    """The failures the chat has not heard of: a server told about once is not told again while it keeps
    failing the same way."""
    return {name: why for name, why in failed.items() if told.get(name) != why}


def notice(new: Mapping[str, str]) -> str:
    lines = [f"- {name}: {why}" for name, why in sorted(new.items())]
    which = "server" if len(new) == 1 else "servers"
    return f"⚠️ This agent runs without the MCP {which} that failed to start:\n" + "\n".join(lines)
