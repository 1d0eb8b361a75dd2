"""Clawden's tools for the agent, served in-process over MCP. Every tool only writes outbound.db."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_agent_sdk import McpSdkServerConfig, SdkMcpTool, create_sdk_mcp_server, tool

from clawden import sessiondb

SERVER_NAME = "clawden"
SEND_MESSAGE = f"mcp__{SERVER_NAME}__send_message"


@dataclass
class TurnState:
    """What the tools need to know about the turn in progress, and what they did during it."""

    session_dir: Path
    ring_host: Callable[[], None]
    reply_to: int | None = None
    sent: list[int] = field(default_factory=list)

    def begin(self, reply_to: int) -> None:
        self.reply_to = reply_to
        self.sent = []


def write_reply(state: TurnState, text: str, *, suffix: str,
                routing: sessiondb.Routing | None = None) -> int | None:
    """Write one chat row for the current turn; returns its seq.

    The row id is derived from the message being answered, so a turn re-run after a crash
    finds its earlier reply instead of sending a second one. None when there is no chat.
    """
    routing = routing or sessiondb.session_routing(state.session_dir)
    if routing is None:
        return None
    row_id = f"reply:{state.reply_to}:{suffix}"
    try:
        return sessiondb.write_outbound(state.session_dir, id=row_id, kind="chat", content={"text": text},
                                        routing=routing, in_reply_to=state.reply_to)
    except sqlite3.IntegrityError:
        with sessiondb.opened(state.session_dir / sessiondb.OUTBOUND, readonly=True) as conn:
            row = conn.execute("SELECT seq FROM messages_out WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise
        return int(row[0])


def _text(text: str, *, error: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
    if error:
        result["is_error"] = True
    return result


def _same_chat(to: str, routing: sessiondb.Routing) -> bool:
    return to.strip().lower() in {"", "current", "here", routing.chat_id.lower(),
                                  f"{routing.channel}:{routing.chat_id}".lower()}


def build_tools(state: TurnState) -> list[SdkMcpTool[Any]]:
    @tool("send_message",
          "Send a chat message to the person or group you are talking with. This is the only way your"
          " words reach them. Returns the message's #seq.",
          {"type": "object",
           "properties": {
               "text": {"type": "string", "description": "The message, in the chat's plain-text style."},
               "to": {"type": "string",
                      "description": "Leave out to answer in the current chat (the only destination yet)."},
           },
           "required": ["text"]})
    async def send_message(args: dict[str, Any]) -> dict[str, Any]:
        text = str(args.get("text") or "").strip()
        if not text:
            return _text("Nothing sent: text is empty.", error=True)
        routing = await asyncio.to_thread(sessiondb.session_routing, state.session_dir)
        if routing is None:
            return _text("Nothing sent: this session has no chat to answer.", error=True)
        to = args.get("to")
        if isinstance(to, str) and not _same_chat(to, routing):
            return _text(f"Nothing sent: unknown destination {to!r}; leave `to` out to answer in this chat.",
                         error=True)
        seq = await asyncio.to_thread(write_reply, state, text, suffix=f"send:{len(state.sent)}",
                                      routing=routing)
        assert seq is not None
        state.sent.append(seq)
        state.ring_host()
        return _text(f"sent as #{seq}")

    return [send_message]


def build_server(state: TurnState) -> dict[str, Any]:
    """The MCP server config for ClaudeAgentOptions.mcp_servers.

    `alwaysLoad` keeps these tools in every request instead of behind Claude Code's tool
    search, which would cost an extra model round trip before the first reply.
    """
    config: McpSdkServerConfig = create_sdk_mcp_server(SERVER_NAME, tools=build_tools(state))
    return {**config, "alwaysLoad": True}
