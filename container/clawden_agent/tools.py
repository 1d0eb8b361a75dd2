"""Clawden's tools for the agent, served in-process over MCP. Every tool only writes outbound.db.

The host applies each row (a chat message, an edit, a card, a task operation …). Tools that need
an answer (a question to the user, a task listing) wait for the host's response row in inbound.db.
Bad input comes back as a tool error the model can read, never as an exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from claude_agent_sdk import McpSdkServerConfig, SdkMcpTool, create_sdk_mcp_server, tool

from clawden import sessiondb
from clawden_agent import cli as admin_cli

SERVER_NAME = "clawden"
SEND_MESSAGE = f"mcp__{SERVER_NAME}__send_message"
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_TEXT = 64 * 1024
MAX_OPTIONS = 10
RESPONSE_POLL = 0.1  # seconds; only tools waiting on a person or the scheduler poll
FILE_NAME = re.compile(r"^[^/\\\x00]{1,128}$")
TASK_ID = re.compile(r"^t-[0-9a-f]{8,32}$")
TASK_STATUSES = ("active", "paused", "done", "cancelled")  # as the scheduler keeps them
MAX_SCRIPT = 16 * 1024  # as the scheduler takes them
MAX_INSTRUCTIONS = 32 * 1024  # a new agent's CLAUDE.md (create_agent)
PACKAGE_KINDS = ("apt", "npm", "pip")  # install_packages; the host checks the names (clawden/packagespec.py)
MAX_PACKAGES = 64
QUESTION_SALT_KEY = "question_salt"  # session_state: the secret in the session's request ids (`request_id`)
# Rows that answer the person. An edit or a reaction does not, nor a question: a turn that dies waiting for its answer
# runs again (and asks again), rather than leave the person's answer with nothing to take it.
ANSWERING_KINDS = ("chat", "file", "card")


@dataclass
class TurnState:
    """What the tools need to know about the turn in progress, and what they did during it."""

    session_dir: Path
    ring_host: Callable[[], None]
    reply_to: int | None = None
    rows: int = 0  # rows written for `reply_to`: their ids must be unique and stable across a re-run
    writes: int = 0  # rows written in all that answer the person (to the chat the prompts came from)
    on_write: Callable[[], None] | None = None
    answering: Callable[[], list[int]] = list  # the claimed rows a write to the chat answers now (the ledger's)
    waited: float = 0.0  # seconds spent waiting on a person or the scheduler, in all
    waiting_since: float | None = None  # monotonic, while such a wait is on

    def waiting(self, now: float) -> float:
        """Seconds spent waiting in all, the wait in progress included."""
        return self.waited + (now - self.waiting_since if self.waiting_since is not None else 0.0)

    def begin(self, reply_to: int) -> None:
        """From now on the agent answers `reply_to` (the newest message it has been shown)."""
        self.reply_to = reply_to
        self.rows = 0

    def answered(self) -> None:
        """A row that answers the person reached their chat."""
        self.writes += 1
        if self.on_write is not None:
            self.on_write()

    def next_id(self, kind: str) -> str:
        """Derived from the message being answered, so a turn re-run after a crash rewrites the
        same ids and finds its earlier rows instead of sending them twice. Taken before the write waits, so
        calls made side by side (parallel subagents) never share one."""
        self.rows += 1
        return f"reply:{self.reply_to}:{kind}:{self.rows}"


class ToolError(Exception):
    """Told to the model as the tool's result, marked as an error."""


def write_row(
    state: TurnState,
    row_id: str,
    kind: str,
    content: dict[str, Any],
    routing: sessiondb.Routing,
    *,
    reply_to: int | None = None,
    answers: list[int] | None = None,
) -> int:
    """Write one outbound row (once: a replayed id returns the first row's seq). A row that reaches the chat is
    recorded as answering `answers`, by default whatever the conversation holds now."""
    if answers is None:
        answers = state.answering() if kind in ANSWERING_KINDS else []
    return sessiondb.write_outbound(
        state.session_dir,
        id=row_id,
        kind=kind,
        content=content,
        routing=routing,
        in_reply_to=reply_to or state.reply_to,
        answers=answers,
    )


def write_reply(
    state: TurnState,
    text: str,
    *,
    suffix: str,
    routing: sessiondb.Routing | None = None,
    reply_to: int | None = None,
    answers: list[int] | None = None,
    failed: bool = False,
) -> int | None:
    """Write one chat row answering `reply_to` (by default the message the agent answers now);
    returns its seq, None when there is no chat. `failed`: it says the turn failed (the chat hears an error:
    `sessionrows.Chat.says`)."""
    routing = routing or sessiondb.session_routing(state.session_dir)
    if routing is None:
        return None
    reply_to = reply_to or state.reply_to
    content: dict[str, object] = {"text": text, "says": "error"} if failed else {"text": text}
    return write_row(state, f"reply:{reply_to}:{suffix}", "chat", content, routing, reply_to=reply_to, answers=answers)


def request_id(folder: Path, row_id: str, prefix: str) -> str:
    """The id of a request that waits for an answer (a question, a task operation), named by its row as the row's id
    is, under a secret of the session's own (no other session's agent can name it). A turn run again after its
    container died asks with the same id: the row is found, not sent twice, and the answer to the first request (the
    person's click on the card they already have, the scheduler's word) reaches the rerun."""
    salt = sessiondb.get_state(folder, QUESTION_SALT_KEY)
    if salt is None:
        salt = secrets.token_hex(16)
        sessiondb.set_state(folder, QUESTION_SALT_KEY, salt)
    return prefix + hashlib.sha256(f"{salt}:{row_id}".encode()).hexdigest()[:16]


def declare_wait(folder: Path, name: str | None, timeout: float = 0.0) -> None:
    """Tell the host that the agent waits, for up to `timeout` seconds, on a tool (a long command, a
    person, the scheduler), so it does not take the silence for a hang; None: the wait is over."""
    value = json.dumps({"name": name, "timeout": timeout, "started_at": time.time()}) if name else None
    sessiondb.set_state(folder, sessiondb.CURRENT_TOOL_KEY, value)


def _text(text: str, *, error: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
    if error:
        result["is_error"] = True
    return result


def _guarded(fn: Callable[[dict[str, Any]], Awaitable[str]]) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    async def run(args: dict[str, Any]) -> dict[str, Any]:
        try:
            return _text(await fn(args))
        except ToolError as exc:
            return _text(str(exc), error=True)

    return run


def _str(args: dict[str, Any], key: str, *, required: bool = True, limit: int = MAX_TEXT) -> str:
    value = args.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ToolError(f"`{key}` is required.")
        return ""
    if not isinstance(value, str):
        raise ToolError(f"`{key}` must be a string.")
    if len(value) > limit:
        raise ToolError(f"`{key}` is too long ({len(value)} characters; at most {limit}).")
    return value.strip()


def _int(args: dict[str, Any], key: str) -> int:
    value = args.get(key)
    if isinstance(value, str) and value.lstrip("#").isdigit():
        value = int(value.lstrip("#"))
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ToolError(f"`{key}` must be a message number such as 7 (from #7).")
    return value


class Tools:
    def __init__(self, state: TurnState, *, workspace_roots: tuple[Path, ...] | None = None) -> None:
        self.state = state
        folder = state.session_dir
        # Where send_file may read from: the agent's own folders, never a path that leaves them.
        self.roots = workspace_roots or (
            folder,
            Path(os.environ.get("CLAWDEN_GROUP_DIR", "/workspace/agent")),
            Path("/tmp"),
        )

    @property
    def folder(self) -> Path:
        return self.state.session_dir

    async def _routing(self, to: str) -> tuple[sessiondb.Routing, bool]:
        """Where `to` names, and whether that is the chat the prompts came from (only a write there answers them)."""
        routing = await asyncio.to_thread(sessiondb.session_routing, self.folder)
        if routing is None:
            raise ToolError("This session has no chat to answer.")
        if not to or to.lower() in ("current", "here", routing.chat_id.lower()):
            return routing, True
        named = await asyncio.to_thread(sessiondb.destinations, self.folder)
        for name, route in named.items():
            if name.lower() == to.lower():
                return route, route == routing
        known = ", ".join(sorted(named)) or "none"
        raise ToolError(
            f"Unknown destination {to!r}. Known destinations: {known}. Leave `to` out to answer in this chat."
        )

    async def _write(self, kind: str, content: dict[str, Any], routing: sessiondb.Routing) -> int:
        seq = await asyncio.to_thread(write_row, self.state, self.state.next_id(kind), kind, content, routing)
        self.state.ring_host()
        return seq

    async def _reach(self, row_id: str, kind: str, content: dict[str, Any], to: tuple[sessiondb.Routing, bool]) -> int:
        """A message, a file or a card. Only one to the chat the prompts came from answers them: one to another
        destination ("I told ops") leaves the person still owed their answer, in memory and on disk."""
        routing, here = to
        seq = await asyncio.to_thread(
            write_row, self.state, row_id, kind, content, routing, answers=None if here else []
        )
        if here:
            self.state.answered()
        self.state.ring_host()
        return seq

    async def _await_response(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        await asyncio.to_thread(declare_wait, self.folder, f"waiting for {request_id}", max(timeout, 0.0))
        self.state.waiting_since = time.monotonic()
        try:
            deadline = time.monotonic() + timeout
            while (answer := await asyncio.to_thread(sessiondb.response, self.folder, request_id)) is None:
                if time.monotonic() >= deadline:
                    return None
                await asyncio.sleep(RESPONSE_POLL)
            return answer
        finally:
            self.state.waited = self.state.waiting(time.monotonic())
            self.state.waiting_since = None
            await asyncio.to_thread(declare_wait, self.folder, None)

    # --- chat ---------------------------------------------------------------------------------

    async def send_message(self, args: dict[str, Any]) -> str:
        text = _str(args, "text")
        to = await self._routing(_str(args, "to", required=False, limit=128))
        seq = await self._reach(self.state.next_id("send"), "chat", {"text": text}, to)
        return f"sent as #{seq}"

    async def send_file(self, args: dict[str, Any]) -> str:
        source = self._readable_file(_str(args, "path", limit=4096))
        name = _str(args, "filename", required=False, limit=128) or source.name
        if not FILE_NAME.match(name) or name in (".", ".."):
            raise ToolError("`filename` must be a plain file name.")
        to = await self._routing(_str(args, "to", required=False, limit=128))
        row_id = self.state.next_id("file")
        box = self.folder / "outbox" / row_id.replace(":", "_")
        await asyncio.to_thread(_copy_into, source, box, name)
        content = {"text": _str(args, "text", required=False), "files": [name], "box": box.name}
        seq = await self._reach(row_id, "file", content, to)
        return f"file {name} sent as #{seq}"

    def _readable_file(self, path: str) -> Path:
        raw = Path(path)
        if not raw.is_absolute():
            raw = Path(os.environ.get("CLAWDEN_GROUP_DIR", "/workspace/agent")) / raw
        real = Path(os.path.realpath(raw))
        if raw.is_symlink() or not any(real.is_relative_to(os.path.realpath(r)) for r in self.roots):
            raise ToolError(f"{path} is outside the folders you may send from (or a link out of them).")
        if not real.is_file():
            raise ToolError(f"{path} is not a file.")
        size = real.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ToolError(f"{path} is {size} bytes; at most {MAX_FILE_BYTES} can be sent.")
        return real

    async def edit_message(self, args: dict[str, Any]) -> str:
        seq, text = _int(args, "seq"), _str(args, "text")
        if seq % 2 == 0:
            raise ToolError(f"#{seq} is a message you received; you can only edit your own (odd) messages.")
        if await asyncio.to_thread(sessiondb.platform_message_id, self.folder, seq) is None:
            raise ToolError(f"#{seq} has not been delivered (yet), so it cannot be edited.")
        routing, _ = await self._routing("")
        await self._write("edit", {"target_seq": seq, "text": text}, routing)
        return f"#{seq} edited"

    async def add_reaction(self, args: dict[str, Any]) -> str:
        seq, emoji = _int(args, "seq"), _str(args, "emoji", limit=32)
        if await asyncio.to_thread(sessiondb.platform_message_id, self.folder, seq) is None:
            raise ToolError(f"#{seq} is not a delivered message of this chat.")
        routing, _ = await self._routing("")
        await self._write("reaction", {"target_seq": seq, "emoji": emoji}, routing)
        return f"reacted {emoji} to #{seq}"

    async def message_status(self, args: dict[str, Any]) -> str:
        seq = _int(args, "seq")
        if seq % 2 == 0:
            raise ToolError(f"#{seq} is a message you received; only your own (odd) messages have a delivery status.")
        return delivery_status(seq, await asyncio.to_thread(sessiondb.delivery, self.folder, seq))

    async def send_card(self, args: dict[str, Any]) -> str:
        title = _str(args, "title", limit=256)
        buttons = _options(args.get("buttons"), required=False)
        content = {
            "title": title,
            "body": _str(args, "body", required=False),
            "buttons": [{"id": str(i + 1), "label": label} for i, label in enumerate(buttons)],
        }
        to = await self._routing(_str(args, "to", required=False, limit=128))
        seq = await self._reach(self.state.next_id("card"), "card", content, to)
        return f"card sent as #{seq}"

    async def ask_user_question(self, args: dict[str, Any]) -> str:
        question = _str(args, "question", limit=2000)
        options = _options(args.get("options"), required=True)
        timeout = args.get("timeout", 300)
        if not isinstance(timeout, int | float) or not 10 <= timeout <= 86_400:
            raise ToolError("`timeout` must be between 10 and 86400 seconds.")
        row_id = self.state.next_id("question")
        asking = await asyncio.to_thread(request_id, self.folder, row_id, "q-")
        content = {"request_id": asking, "question": question, "options": options, "timeout": timeout}
        routing, _ = await self._routing("")
        # Not an answer (`ANSWERING_KINDS`), in memory either: a turn stopped while it waits runs again and asks again.
        await asyncio.to_thread(write_row, self.state, row_id, "question", content, routing)
        self.state.ring_host()
        # A turn run again (its container died) waits only what is left of the time the person was first given:
        # a question that expired meanwhile, at a runner that took the session over, gets no answer any more.
        asked_at = await asyncio.to_thread(sessiondb.written_at, self.folder, row_id) or time.time()
        answer = await self._await_response(asking, asked_at + float(timeout) + 5 - time.time())
        if answer is None or answer.get("decision") == "expired":
            return f"No answer within {int(timeout)} seconds."
        if answer.get("error"):
            raise ToolError(str(answer["error"]))
        who = f" (answered by {answer['by']})" if answer.get("by") else ""
        return f"The user chose: {answer.get('answer', '')}{who}"

    # --- tasks ----------------------------------------------------------------------------------

    async def _task(self, op: str, fields: dict[str, Any]) -> str:
        row_id = self.state.next_id("task")
        # A turn run again finds its first row (and keeps that one's fields, a new task's id among them): it waits for
        # the answer to that request, not to one the scheduler never hears of.
        asking = await asyncio.to_thread(request_id, self.folder, row_id, "r-")
        routing, _ = await self._routing("")
        await asyncio.to_thread(
            write_row, self.state, row_id, "task", {"request_id": asking, "op": op, **fields}, routing
        )
        self.state.ring_host()
        answer = await self._await_response(asking, 15)
        if answer is None:
            raise ToolError("The scheduler did not answer; try again later.")
        if answer.get("error"):
            raise ToolError(str(answer["error"]))
        return str(answer.get("result", "done"))

    async def schedule_task(self, args: dict[str, Any]) -> str:
        fields = {
            "task_id": f"t-{uuid.uuid4().hex[:12]}",
            "prompt": _str(args, "prompt", limit=8000),
            "schedule": _str(args, "schedule", limit=200),
            "timezone": _str(args, "timezone", required=False, limit=64),
            "script": _str(args, "script", required=False, limit=MAX_SCRIPT),
        }
        return await self._task("create", fields)

    async def install_packages(self, args: dict[str, Any]) -> str:
        """Ask an admin for packages in this group's image, through the host's `clawden` (the admin socket): the
        outcome, after a rebuild and a restart on approval, comes later as a message from `clawden`."""
        argv = ["groups", "packages", "add", "."]
        for kind in PACKAGE_KINDS:
            argv += [a for name in _names(args, kind) for a in (f"--{kind}", name)]
        if len(argv) == 4:
            raise ToolError("Name at least one package in `apt`, `npm` or `pip`.")
        return await self._ask_admin([*argv, "--reason", _str(args, "reason", limit=1000)])

    async def add_mcp_server(self, args: dict[str, Any]) -> str:
        """Ask an admin for a stdio MCP server in this group, the same way as install_packages."""
        argv = ["groups", "mcp", "add", ".", _str(args, "name", limit=64), f"--command={_str(args, 'command')}"]
        argv += [f"--arg={a}" for a in _names(args, "args")]
        env = args.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ToolError("`env` must be an object of NAME: value strings.")
        argv += [f"--env={k}={v}" for k, v in env.items()]
        return await self._ask_admin([*argv, "--reason", _str(args, "reason", limit=1000)])

    async def _ask_admin(self, argv: list[str]) -> str:
        """A write of the host's `clawden` (the admin socket): its answer now, its outcome later as a message."""
        try:
            answer = await asyncio.to_thread(admin_cli.ask, argv, admin_cli.socket_path())
        except (OSError, ValueError) as exc:
            raise ToolError(f"Cannot reach the host to ask ({exc}).") from exc
        if not answer.get("ok"):
            raise ToolError(str(answer.get("error") or "the host gave no answer"))
        return str(answer.get("output", ""))

    async def create_agent(self, args: dict[str, Any]) -> str:
        """Ask an admin for a new agent group; the outcome comes later as a message from `clawden`."""
        fields = {
            "name": _str(args, "name", limit=40),
            "instructions": _str(args, "instructions", limit=MAX_INSTRUCTIONS),
            "wire_to": _str(args, "wire_to", required=False, limit=320),
        }
        return await self._task("create_agent", fields)

    async def list_tasks(self, args: dict[str, Any]) -> str:
        status = _str(args, "status", required=False, limit=16)
        if status and status not in TASK_STATUSES:
            raise ToolError(f"`status` is one of {', '.join(TASK_STATUSES)}.")
        return await self._task("list", {"status": status})

    async def update_task(self, args: dict[str, Any]) -> str:
        fields: dict[str, Any] = {"task_id": _task_id(args)}
        for key in ("prompt", "schedule", "timezone"):
            if args.get(key) is not None:
                fields[key] = _str(args, key, limit=8000)
        if args.get("script") is not None:  # "" removes it
            fields["script"] = _str(args, "script", required=False, limit=MAX_SCRIPT)
        if len(fields) == 1:
            raise ToolError("Give at least one of `prompt`, `schedule`, `timezone`, `script` to change.")
        return await self._task("update", fields)

    async def pause_task(self, args: dict[str, Any]) -> str:
        return await self._task("pause", {"task_id": _task_id(args)})

    async def resume_task(self, args: dict[str, Any]) -> str:
        return await self._task("resume", {"task_id": _task_id(args)})

    async def cancel_task(self, args: dict[str, Any]) -> str:
        return await self._task("cancel", {"task_id": _task_id(args)})


def delivery_status(seq: int, known: sessiondb.Delivery | None) -> str:
    """What message_status answers: the strongest word the chat app gave about #seq, with its time."""
    if known is None:
        return f"#{seq}: no word from the chat app yet (not sent yet, or its receipt is on its way)."
    if known.state == "failed":
        return f"#{seq}: never reached the chat: {known.error or 'the chat app refused it'}"
    delivered = f"delivered {_when(known.delivered_at)}"
    if known.read_at is not None:
        return f"#{seq}: read {_when(known.read_at)} ({delivered})."
    return f"#{seq}: {delivered}; not read as far as the chat app has said (only some apps, like WhatsApp, tell)."


def _names(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ToolError(f"`{key}` must be a list of names (non-empty strings).")
    if len(value) > MAX_PACKAGES:
        raise ToolError(f"At most {MAX_PACKAGES} `{key}` packages at once.")
    return [v.strip() for v in value]


def _when(at: float) -> str:
    return "at " + datetime.fromtimestamp(at, UTC).astimezone().isoformat(timespec="seconds")


def _task_id(args: dict[str, Any]) -> str:
    task_id = _str(args, "task_id", limit=64)
    if not TASK_ID.match(task_id):
        raise ToolError(f"{task_id!r} is not a task id (they look like t-1a2b3c4d5e6f).")
    return task_id


def _options(value: object, *, required: bool) -> list[str]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or not value or len(value) > MAX_OPTIONS:
        raise ToolError(f"Give between 1 and {MAX_OPTIONS} options as a list of short strings.")
    labels = [str(v.get("label") if isinstance(v, dict) else v).strip()[:64] for v in value]
    if not all(labels):
        raise ToolError("Every option needs a label.")
    return labels


def _copy_into(source: Path, box: Path, name: str) -> None:
    box.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, box / name, follow_symlinks=False)


_STRING = {"type": "string"}
_TO = {"type": "string", "description": "A destination name; leave out to answer in the current chat."}
_SEQ = {"type": "integer", "description": "The message number (#seq)."}
_TASK_ID = {"type": "string", "description": "The task id, as schedule_task or list_tasks gave it."}
_SCRIPT = {
    "type": "string",
    "description": (
        "Optional bash run in this container before each run, to save a model call when there is nothing to do. "
        'Its last output line must be JSON: {"wakeAgent": true, "data": ...} runs the task with `data` shown to you; '
        '{"wakeAgent": false} skips this run. 30 s at most. On update, "" removes it.'
    ),
}
_LABELS = {"type": "array", "items": {"type": "string"}, "maxItems": MAX_OPTIONS}
_NAMES = {"type": "array", "items": {"type": "string"}, "maxItems": MAX_PACKAGES}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


SPECS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "send_message",
        "Send a chat message to the person or group you are talking with (or to a named "
        "destination). This is the only way your words reach them. Returns the message's #seq.",
        _schema({"text": _STRING, "to": _TO}, ["text"]),
    ),
    (
        "send_file",
        "Send a file from your folders (the agent folder, the session folder, /tmp) to the chat.",
        _schema({"path": _STRING, "text": _STRING, "filename": _STRING, "to": _TO}, ["path"]),
    ),
    (
        "edit_message",
        "Replace the text of a message you sent earlier, by its #seq.",
        _schema({"seq": _SEQ, "text": _STRING}, ["seq", "text"]),
    ),
    (
        "add_reaction",
        "React with an emoji to a message by its #seq.",
        _schema({"seq": _SEQ, "emoji": _STRING}, ["seq", "emoji"]),
    ),
    (
        "message_status",
        "Whether one of your messages (by its #seq) reached the chat, and whether the person has read it: "
        "read, delivered, or never delivered with the reason. Read is known only where the chat app tells "
        "bots (WhatsApp does; the other chat apps Clawden bridges do not).",
        _schema({"seq": _SEQ}, ["seq"]),
    ),
    (
        "send_card",
        "Send a card: a title, a body and up to 10 buttons (display only).",
        _schema({"title": _STRING, "body": _STRING, "buttons": _LABELS, "to": _TO}, ["title"]),
    ),
    (
        "ask_user_question",
        "Ask the user a multiple-choice question and wait for the answer (or the timeout).",
        _schema(
            {"question": _STRING, "options": _LABELS, "timeout": {"type": "number", "minimum": 10}},
            ["question", "options"],
        ),
    ),
    (
        "schedule_task",
        "Schedule work for later: a prompt and a schedule (a cron expression like '0 8 * * 1', "
        "'every 30m', or an ISO time for once), optionally an IANA time zone and a pre-check `script`.",
        _schema(
            {"prompt": _STRING, "schedule": _STRING, "timezone": _STRING, "script": _SCRIPT}, ["prompt", "schedule"]
        ),
    ),
    (
        "list_tasks",
        "List this agent's scheduled tasks: active and paused ones, or only those with `status`.",
        _schema({"status": {"type": "string", "enum": list(TASK_STATUSES)}}, []),
    ),
    (
        "update_task",
        "Change a scheduled task's prompt, schedule or time zone.",
        _schema(
            {"task_id": _TASK_ID, "prompt": _STRING, "schedule": _STRING, "timezone": _STRING, "script": _SCRIPT},
            ["task_id"],
        ),
    ),
    ("pause_task", "Pause a scheduled task.", _schema({"task_id": _TASK_ID}, ["task_id"])),
    ("resume_task", "Resume a paused task.", _schema({"task_id": _TASK_ID}, ["task_id"])),
    ("cancel_task", "Cancel a scheduled task for good.", _schema({"task_id": _TASK_ID}, ["task_id"])),
    (
        "create_agent",
        "Ask an admin to create a new agent: its group `name` (lowercase letters, digits, '-' or '_'), its standing "
        "`instructions` (its CLAUDE.md), and optionally `wire_to` a chat it is to answer, as '<channel>:<chat id>'. "
        "Nothing is created until an admin approves; you are told the outcome in a message.",
        _schema({"name": _STRING, "instructions": _STRING, "wire_to": _STRING}, ["name", "instructions"]),
    ),
    (
        "install_packages",
        "Ask an admin to add packages to your container's image: Debian packages (`apt`), npm packages (`npm`, "
        "needs nodejs and npm) or Python packages (`pip`), with the `reason` the admin reads. Nothing is installed "
        "until an admin approves; then the image is rebuilt, your container restarts on it and this conversation "
        "goes on there. You are told the outcome in a message.",
        _schema({"apt": _NAMES, "npm": _NAMES, "pip": _NAMES, "reason": _STRING}, ["reason"]),
    ),
    (
        "add_mcp_server",
        "Ask an admin to give your group a stdio MCP server: its `name`, the `command` that starts it in your "
        "container (a program in the image or your agent folder), its `args`, its `env` (put no secret there: a "
        "credential stays in the vault, give the variable the value 'clawden-managed') and the `reason` the admin "
        "reads. On approval your container restarts with it and this conversation goes on; you are told the outcome.",
        _schema(
            {
                "name": _STRING,
                "command": _STRING,
                "args": _NAMES,
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "reason": _STRING,
            },
            ["name", "command", "reason"],
        ),
    ),
]


def build_tools(state: TurnState) -> list[SdkMcpTool[Any]]:
    impl = Tools(state)
    return [tool(name, description, schema)(_guarded(getattr(impl, name))) for name, description, schema in SPECS]


def build_server(state: TurnState) -> dict[str, Any]:
    """The MCP server config for ClaudeAgentOptions.mcp_servers.

    `alwaysLoad` keeps these tools in every request instead of behind Claude Code's tool
    search, which would cost an extra model round trip before the first reply.
    """
    config: McpSdkServerConfig = create_sdk_mcp_server(SERVER_NAME, tools=build_tools(state))
    return {**config, "alwaysLoad": True}
