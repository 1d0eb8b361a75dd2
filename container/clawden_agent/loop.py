"""The agent runner's loop: wait for the doorbell, send pending inbound rows as one prompt to one
long-lived Claude Code session, and ack the rows in outbound.db as the results that answer them come."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLIConnectionError,
    HookContext,
    HookInput,
    HookJSONOutput,
    HookMatcher,
    McpServerConfig,
    Message,
    ProcessError,
    ResultMessage,
    SystemMessage,
    ToolUseBlock,
    UserMessage,
    get_session_info,
)

from clawden import sessiondb

from . import commands, doorbell, mcp, precheck, revisions, selftest, tools
from .cli import ADMIN_SOCKET
from .ledger import Ledger, Settled

log = logging.getLogger("clawden_agent")

DELIVERY_SEEN_KEY = "delivery_failures_seen"  # the newest failed send already shown to the agent
PRECHECK_ERROR_KEY = "precheck_error:"  # + task id: the error the chat was last told about
COST_TOTAL_KEY = "cost_total_usd"  # the conversation's running total at its last result
DEFAULT_BASH_TIMEOUT_MS = 120_000  # Claude Code's Bash default when the call declares none
# Only the safety net: rings wake the loop at once, this catches a ring that was lost.
SAFETY_POLL_SECONDS = 2.0
DEFAULT_MAX_MESSAGES = 10  # pending rows one prompt carries, unless the group says otherwise
EFFORTS = ("low", "medium", "high", "xhigh", "max")  # Claude Code's --effort levels
SIGHTING_WAIT_SECONDS = 30.0
MCP_STATUS_WAIT_SECONDS = 5.0
# Claude Code's try of a model call at which the chat is told the API is failing: its first two retries come within
# about 1.5 s (a blip, an overloaded moment); the rest back off to minutes in all, which the chat should not sit out.
RETRY_NOTICE_AT = 3
# A model call refused for its credentials (Claude Code's `authentication_failed`): Claude Code tries it again all the
# same (a key helper or a login may mend it), but here only the owner can, so the chat is told at once what to run.
KEY_REFUSED_STATUSES = (401, 403)
# The vault's own 401/403 answers (OneCLI's error names): each says its own fix (a grant, a rule, a human's no), so
# they are not the model API refusing the key. `tests/container/test_vault_refusals.py` keeps this list whole.
VAULT_REFUSALS = (
    "access_restricted",
    "credential_not_found",
    "blocked_by_policy",
    "blocked_by_default_policy",
    "manual_approval_denied",
    "secret_leak_blocked",
)
KEY_FIX = (
    "the owner can set the right one with `clawden secrets add anthropic --type anthropic --replace`"
    " (`clawden doctor` checks it)"
)
DEFAULT_MAX_TURNS = 100  # model calls for one prompt before Claude Code stops it
DEFAULT_TURN_BUDGET = 1800.0  # seconds of work on one turn (waits on a person not counted)
PLACEHOLDER_API_KEY = "clawden-managed"

# Keep Claude Code from calling anything but the model: the container has no network, so a
# stray call would at best fail, at worst wait for a timeout on the hot path.
QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1",
    "DISABLE_NON_ESSENTIAL_MODEL_CALLS": "1",
    # The CLAUDE.md of add_dirs (the global memory folder) loads like the group's own.
    "CLAUDE_CODE_ADDITIONAL_DIRECTORIES_CLAUDE_MD": "1",
    # Tells Claude Code it runs sandboxed, which it requires before bypassPermissions when started
    # as root (the tests run the agent runner as a host process); the container's user is not root.
    "IS_SANDBOX": "1",
}

# The built-ins an agent gets, named rather than denied, so a newer Claude Code's new tools stay off
# until they are looked at. Left out: its interactive, worktree and self-scheduling tools, whose
# place Clawden's own (ask_user_question, schedule_task, ...) takes, and peer messaging.
BUILTIN_TOOLS = [
    "Bash",
    "Read",
    "Write",
    "Edit",
    "NotebookEdit",
    "WebFetch",
    "WebSearch",
    "Task",
    "TaskStop",
    "Skill",
    "ToolSearch",
]

FRESH_NOTICE = (
    "I could not reopen our earlier conversation, so I started a fresh one. My memory file is "
    "still here; anything said only in the chat before now I no longer remember."
)
TOO_LONG_NOTICE = (
    "Our conversation grew too long for the model, so I started a fresh one and answered your "
    "message in it. My memory file is still here."
)

SYSTEM_ADDENDUM = """\
You are {name}, a personal assistant that people reach from a chat app through Clawden. {name} is your
name: people call you by it, and you refer to yourself as {name}, never by another name.
Each user turn holds the new chat traffic as <message seq="…" from="…" time="…">…</message>
elements (and <task seq="…" time="…">…</task> for scheduled work). Answer the chat with the
send_message tool: only what you send with it reaches people. Write chat-sized plain text, send
more than one message when a long job deserves progress updates, and refer to earlier messages by
their #seq when useful. A <delivery-failed seq="…"> element means one of your messages never reached
the chat; say so another way if it mattered. When someone edits or deletes a message you have already
read, a message tells you so: go by the edited text, and do not act on a deleted message. Anything you
write outside send_message is private scratch space."""
# Said only where the runner mounted the session's admin socket (the in-container `clawden`, cli.py).
CLI_ADDENDUM = """
Your shell has a `clawden` command for this Clawden install (`clawden --help`): it shows what your
admins let you see, and asks for changes, such as packages for your image, which wait for an admin's
approval; you are told the outcome in a message. Use it when someone asks you to change how you run."""


def addendum(name: str, *, has_cli: bool) -> str:
    """What Clawden adds to Claude Code's own system prompt."""
    return SYSTEM_ADDENDUM.format(name=name) + (CLI_ADDENDUM if has_cli else "")


@dataclass(frozen=True)
class Config:
    session_dir: Path
    group_dir: Path
    gateway_socket: str | None
    relay_port: int
    model: str | None
    global_dir: Path = Path("/workspace/global")
    max_turns: int = DEFAULT_MAX_TURNS
    turn_budget: float = DEFAULT_TURN_BUDGET
    effort: str | None = None
    max_messages: int = DEFAULT_MAX_MESSAGES
    assistant_name: str = "Clawden"
    skills_dir: Path = Path("/workspace/skills")
    mcp_servers: str = ""  # the group's own MCP servers, as JSON (clawden_agent/mcp.py)
    # The placement this container writes the session folder under (`sessiondb.claim`): the runner that started
    # it and the session's epoch then. No runner (an older one started it): unfenced.
    runner: str = ""
    epoch: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        return cls(
            session_dir=Path(env.get("CLAWDEN_SESSION_DIR", "/workspace/session")),
            group_dir=Path(env.get("CLAWDEN_GROUP_DIR", "/workspace/agent")),
            gateway_socket=env.get("CLAWDEN_GATEWAY_SOCKET") or None,
            relay_port=int(env.get("CLAWDEN_RELAY_PORT", "3128")),
            model=env.get("CLAWDEN_MODEL") or None,
            global_dir=Path(env.get("CLAWDEN_GLOBAL_DIR", "/workspace/global")),
            max_turns=int(env.get("CLAWDEN_MAX_TURNS") or DEFAULT_MAX_TURNS),
            turn_budget=float(env.get("CLAWDEN_TURN_BUDGET") or DEFAULT_TURN_BUDGET),
            effort=_effort(env.get("CLAWDEN_EFFORT", "")),
            max_messages=max(1, int(env.get("CLAWDEN_MAX_MESSAGES_PER_PROMPT") or DEFAULT_MAX_MESSAGES)),
            assistant_name=env.get("CLAWDEN_ASSISTANT_NAME") or "Clawden",
            skills_dir=Path(env.get("CLAWDEN_SKILLS_DIR", "/workspace/skills")),
            mcp_servers=env.get(mcp.ENV, ""),
            runner=env.get("CLAWDEN_RUNNER", ""),
            epoch=int(env.get("CLAWDEN_EPOCH") or 0),
        )

    def add_dirs(self) -> list[str | Path]:
        """Folders Claude Code reads besides the group's: the global memory (its CLAUDE.md) and the skills
        the host mounted for this group (their .claude/skills), each only when there is something in it."""
        dirs: list[str | Path] = [str(self.global_dir)] if (self.global_dir / "CLAUDE.md").is_file() else []
        if (self.skills_dir / ".claude" / "skills").is_dir():
            dirs.append(str(self.skills_dir))
        return dirs


def _effort(value: str) -> str | None:
    if value and value not in EFFORTS:  # the host checks it first; a Claude Code that will not start is worse
        log.warning("effort %r is not one of %s; using Claude Code's default", value, ", ".join(EFFORTS))
    return value if value in EFFORTS else None


def cli_env(config: Config, env: Mapping[str, str]) -> dict[str, str]:
    """The environment Claude Code gets on top of ours."""
    out = dict(QUIET_ENV)
    if config.gateway_socket:
        relay = f"http://127.0.0.1:{config.relay_port}"
        out.update(
            HTTPS_PROXY=relay,
            HTTP_PROXY=relay,
            https_proxy=relay,
            http_proxy=relay,
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            ANTHROPIC_API_KEY=PLACEHOLDER_API_KEY,
        )
        if not env.get("CLAWDEN_CA_FILE"):
            # No gateway CA mounted: the vault's plain-HTTP compatibility path to model.upstream.
            # With it, Claude Code keeps its default https://api.anthropic.com and the gateway intercepts.
            out["ANTHROPIC_BASE_URL"] = relay
    elif not env.get("ANTHROPIC_API_KEY") and not env.get("ANTHROPIC_AUTH_TOKEN"):
        out["ANTHROPIC_API_KEY"] = PLACEHOLDER_API_KEY
    return out


# --- prompt --------------------------------------------------------------------------------------


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def _body(msg: sessiondb.InboundMessage) -> str:
    content = msg.content
    text = next((str(content[k]) for k in ("text", "prompt") if isinstance(content.get(k), str)), None)
    if text is None:
        return json.dumps(content, ensure_ascii=False)
    for a in content.get("attachments") or []:
        # Where the runner saved it; else why not (it says); else the bridge did not fetch it.
        where = (
            f"at {msg_file(a['path'])}"
            if a.get("path")
            else f"(not saved: {a['error']})"
            if a.get("error")
            else "(not downloaded)"
        )
        text += f"\n[attachment {a.get('name')} ({a.get('mime')}, {a.get('size')} bytes) {where}]"
    return text


def msg_file(relative: str) -> str:
    return str(Path(os.environ.get("CLAWDEN_SESSION_DIR", "/workspace/session")) / relative)


def format_prompt(batch: list[sessiondb.InboundMessage]) -> str:
    """One line per row; bodies are escaped so a message cannot close its own element."""
    lines = []
    for msg in batch:
        when = datetime.fromtimestamp(msg.created_at, UTC).astimezone().isoformat(timespec="seconds")
        body = html.escape(_body(msg), quote=False)
        if msg.kind == "task":
            if isinstance(output := msg.content.get("script_output"), str) and output:
                body += f"\n<script-output>{html.escape(output, quote=False)}</script-output>"
            lines.append(f'<task seq="{msg.seq}" time="{when}">{body}</task>')
        else:
            sender = msg.sender_name or msg.sender_id or "unknown"
            lines.append(f'<message seq="{msg.seq}" from="{_attr(sender)}" time="{when}">{body}</message>')
    return "\n".join(lines)


def duration(seconds: float) -> str:
    for unit, size in (("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} seconds"


def short_reason(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- the Claude Code session -----------------------------------------------------------------------


class Agent:
    """One persistent ClaudeSDKClient, recreated (resuming the stored conversation) when it dies.

    It keeps outbound.db's `claude_session_id` current as soon as Claude Code names the session,
    so even a container killed during its first turn comes back to the same conversation.
    """

    def __init__(self, config: Config, state: tools.TurnState, heartbeat: Path) -> None:
        self.config = config
        self.heartbeat = heartbeat
        self.sightings = Sightings()
        self.client: ClaudeSDKClient | None = None
        self._state = state
        self._server = tools.build_server(state)
        self._stderr: deque[str] = deque(maxlen=20)
        self._stored_session: str | None = None
        self.mcp_names: set[str] = set()  # the group's own MCP servers this Claude Code was given

    def _options(self, resume: str | None) -> ClaudeAgentOptions:
        said = addendum(self.config.assistant_name, has_cli=Path(ADMIN_SOCKET).exists())
        env = cli_env(self.config, os.environ)
        # The group's servers run beside Claude Code, their traffic through the same relay and gateway.
        group_servers = mcp.servers(self.config.mcp_servers, {**os.environ, **env})
        self.mcp_names = set(group_servers)
        return ClaudeAgentOptions(
            cwd=str(self.config.group_dir),
            permission_mode="bypassPermissions",
            # Not a snapshot: an updated addendum reaches resumed conversations too.
            system_prompt={"type": "preset", "preset": "claude_code", "append": said, "snapshot": False},
            mcp_servers={**group_servers, tools.SERVER_NAME: cast(McpServerConfig, self._server)},
            strict_mcp_config=True,  # never a .mcp.json the agent wrote
            tools=BUILTIN_TOOLS,
            # CLAUDE.md and the group's .claude/, which the host mounts read-only; never the user
            # settings in the agent's writable home, where a planted hook would outlive /clear.
            setting_sources=["project"],
            add_dirs=self.config.add_dirs(),
            max_turns=self.config.max_turns,
            model=self.config.model,
            effort=cast(Any, self.config.effort),
            resume=resume,
            env=env,
            stderr=self._on_stderr,
            # Claude Code echoes each prompt when it takes it into the conversation: the exact
            # moment the agent's replies start answering it.
            extra_args={"replay-user-messages": None},
            hooks={
                "PreToolUse": [
                    HookMatcher(matcher=None, hooks=[self._tool_starting]),
                    HookMatcher(matcher="Bash", hooks=[self._tool_started]),
                ],
                "PostToolUse": [HookMatcher(matcher="Bash", hooks=[self._tool_finished])],
            },
        )

    async def _tool_starting(self, data: HookInput, tool_use_id: str | None, context: HookContext) -> HookJSONOutput:
        """Every tool waits until the reader has seen the message that called it, and with it every
        prompt Claude Code took in before: a reply is then marked as answering the right message."""
        if tool_use_id:
            await self.sightings.wait(tool_use_id)
        return {}

    async def _tool_started(self, data: HookInput, tool_use_id: str | None, context: HookContext) -> HookJSONOutput:
        """Declare a long Bash call so the host does not take its silence for a hang."""
        tool_input = data.get("tool_input") or {}
        timeout_ms = tool_input.get("timeout", DEFAULT_BASH_TIMEOUT_MS) if isinstance(tool_input, dict) else 0
        self.heartbeat.touch()
        await asyncio.to_thread(
            tools.declare_wait, self.config.session_dir, str(data.get("tool_name", "")), float(timeout_ms) / 1000
        )
        return {}

    async def _tool_finished(self, data: HookInput, tool_use_id: str | None, context: HookContext) -> HookJSONOutput:
        self.heartbeat.touch()
        await asyncio.to_thread(tools.declare_wait, self.config.session_dir, None)
        return {}

    def _on_stderr(self, line: str) -> None:
        self._stderr.append(line)
        log.info("claude: %s", line)

    async def connect(self) -> str | None:
        """Start Claude Code on the stored conversation. When that conversation cannot be resumed
        (gone, or failing to load), start a fresh one and return what the chat should be told."""
        resume = await asyncio.to_thread(sessiondb.get_state, self.config.session_dir, sessiondb.CONVERSATION_KEY)
        self._stored_session = resume
        notice = None
        if resume and await asyncio.to_thread(get_session_info, resume, str(self.config.group_dir)) is None:
            log.warning("stored conversation %s is gone; starting a new one", resume)
            notice, resume = FRESH_NOTICE, None
        try:
            await self._connect(resume)
        except Exception:
            if not resume:
                raise
            log.exception("cannot resume conversation %s; starting a new one", resume)
            notice, resume = FRESH_NOTICE, None
            await self._connect(None)
        if notice:
            await self.forget()
        return notice

    async def _connect(self, resume: str | None) -> None:
        started = time.perf_counter()
        client = ClaudeSDKClient(self._options(resume))
        await client.connect()
        self.client = client
        log.info("claude code ready in %.0f ms (resume=%s)", (time.perf_counter() - started) * 1000, resume)

    async def remember(self, session_id: str | None) -> None:
        if session_id != self._stored_session:
            await asyncio.to_thread(
                sessiondb.set_state, self.config.session_dir, sessiondb.CONVERSATION_KEY, session_id
            )
            self._stored_session = session_id

    async def forget(self) -> None:
        """The next Claude Code starts a new conversation, whose running cost starts at zero."""
        await self.remember(None)
        await asyncio.to_thread(sessiondb.set_state, self.config.session_dir, COST_TOTAL_KEY, None)

    async def send(self, uuid: str, text: str, *, slash_command: bool = False) -> None:
        """Hand Claude Code one prompt. It answers at once, merges it into the running turn, or
        queues it; the uuid comes back in the result that answered it. Only the runner's own
        `slash_command` (/compact) is read by Claude Code as a command: chat text never is."""
        if self.client is None:
            raise CLIConnectionError("Claude Code is not running")
        message = {
            "type": "user",
            "message": {"role": "user", "content": text},
            "parent_tool_use_id": None,
            "uuid": uuid,
            # Delivered as written: an `@/path` in a chat message is text, not a file to read.
            "client_composed": not slash_command,
        }
        await self.client.query(_once(message))

    def dead(self, reason: str) -> str:
        tail = [line for line in self._stderr if line.strip()]
        return short_reason(f"{reason} ({tail[-1]})") if tail and tail[-1] not in reason else reason

    async def close(self, *, interrupt: bool = False) -> None:
        """Stop Claude Code. `interrupt` first aborts a turn in flight, which it would otherwise
        finish (or be killed after a grace period) once its stdin closes."""
        client, self.client = self.client, None
        if client is None:
            return
        if interrupt:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await client.interrupt()
        with contextlib.suppress(Exception):
            await client.disconnect()


class Sightings:
    """The tool calls the reader has seen. Claude Code writes the message that calls a tool before it
    asks the tool's hook, so the wait ends as soon as the reader catches up with its own stream."""

    KEEP = 256

    def __init__(self) -> None:
        self._seen: dict[str, asyncio.Event] = {}

    def _event(self, tool_use_id: str) -> asyncio.Event:
        event = self._seen.get(tool_use_id)
        if event is None:
            event = self._seen[tool_use_id] = asyncio.Event()
            while len(self._seen) > self.KEEP:
                self._seen.pop(next(iter(self._seen))).set()
        return event

    def saw(self, message: AssistantMessage) -> None:
        for block in message.content:
            if isinstance(block, ToolUseBlock):
                self._event(block.id).set()

    async def wait(self, tool_use_id: str) -> None:
        try:
            # Bounded only in case a Claude Code version calls a tool it never reported: then the
            # reply may be marked with an older message, and the log says so.
            async with asyncio.timeout(SIGHTING_WAIT_SECONDS):
                await self._event(tool_use_id).wait()
        except TimeoutError:
            log.warning("tool call %s was never reported; its reply may name an older message", tool_use_id)
        self._seen.pop(tool_use_id, None)


class TurnBudget:
    """How long Claude Code may work on one turn; time spent waiting on a person (a question, an
    approval) does not count. A policy, like the turn limit: no result is matched by it."""

    def __init__(self, seconds: float, state: tools.TurnState, spent: Callable[[], None]) -> None:
        self.seconds = seconds
        self._state = state
        self._spent = spent
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._waited_before = 0.0
        self.over = False

    def start(self) -> None:
        """A turn took in a prompt; the first one of a turn starts its clock."""
        if self._timer is None:
            self._started = time.monotonic()
            self._waited_before = self._state.waiting(self._started)
            self._arm(self.seconds)

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        now = time.monotonic()
        worked = now - self._started - (self._state.waiting(now) - self._waited_before)
        if worked < self.seconds:
            self._arm(max(1.0, self.seconds - worked))
            return
        self._timer, self.over = None, True
        self._spent()

    def stop(self) -> bool:
        """The turn ended; True when it was stopped for its budget."""
        if self._timer is not None:
            self._timer.cancel()
        over, self._timer, self.over = self.over, None, False
        return over


async def _once(message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield message


def result_error(message: ResultMessage, max_turns: int) -> str:
    """Why a result failed, in words for the chat: the CLI's own error text, never the agent's
    private scratch text. A refused model key names the owner's fix: Claude Code's own ("Fix external API key")
    names none that works here."""
    if message.terminal_reason == "max_turns" or message.subtype == "error_max_turns":
        return f"it took more than {max_turns} steps, the limit for one message"
    said = message.subtype
    for candidate in ("; ".join(message.errors or []), message.result or ""):
        if candidate.strip():
            said = short_reason(candidate)
            break
    else:
        if message.api_error_status:
            said = f"API error (HTTP {message.api_error_status})"
    told = f"{message.result} {message.errors}"
    if message.api_error_status in KEY_REFUSED_STATUSES and not any(name in told for name in VAULT_REFUSALS):
        return f"the model API refused the model key ({said}): {KEY_FIX}"
    return said


def key_refused(status: object, error: object) -> bool:
    """An `api_retry` event for a model call refused for its credentials (HTTP 401 or 403)."""
    return status in KEY_REFUSED_STATUSES or error == "authentication_failed"


def named_uuids(message: ResultMessage) -> list[str]:
    if message.user_message_uuids:
        return list(message.user_message_uuids)
    return [message.user_message_uuid] if message.user_message_uuid else []


def too_long(message: ResultMessage) -> bool:
    return message.is_error and "prompt is too long" in f"{message.result} {message.errors}".lower()


# --- the loop --------------------------------------------------------------------------------------


class Runner:
    """Sends each batch of pending rows as one prompt the moment it arrives, and settles rows from the
    results Claude Code returns: the ledger matches them by uuid, whatever the order or the load."""

    def __init__(self, config: Config) -> None:
        self.config = config
        folder = config.session_dir
        self.bell = doorbell.Doorbell(folder / sessiondb.AGENT_BELL)
        self.host_bell = folder / sessiondb.HOST_BELL
        self.ledger = Ledger()
        self.state = tools.TurnState(
            folder, self.ring_host, on_write=self.ledger.wrote_to_chat, answering=lambda: self.ledger.in_conversation
        )
        self.agent = Agent(config, self.state, folder / sessiondb.HEARTBEAT)
        self._stopping = False
        self._draining = False
        self._gave_work = False  # a turn or command was started in this container
        self._reader: asyncio.Task[None] | None = None
        self._writes_at_result = 0
        self._fresh_for: set[int] = set()  # rows already re-run once in a fresh conversation
        self._resent: set[int] = set()  # rows sent again once after Claude Code died under them
        self._budget = TurnBudget(config.turn_budget, self.state, self._over_budget)
        self._interrupting: asyncio.Task[None] | None = None
        self._riders: dict[int, tuple[int, ...]] = {}  # row seq -> edits and deletes folded into it
        self._compacting: set[str] = set()  # uuids of the /compact prompts sent
        self._compacted: dict[str, Any] | None = None  # what Claude Code's last compaction reported
        self._key_refusal_told = False  # this run of failed model calls already named the key as the cause
        self.moved: sessiondb.Fenced | None = None  # the session was moved to another runner: write nothing more

    def ring_host(self) -> None:
        doorbell.ring(self.host_bell)

    def fenced(self, moved: sessiondb.Fenced) -> None:
        """A write found the session moved to another runner (`sessiondb.on_fenced`, from any thread): nothing
        was written, and nothing more will be; the container stops, and its runner drops the session."""
        if self.moved is None:
            self.moved = moved
            log.warning("%s: this container writes nothing more and stops", moved)
        self.stop()

    def drain(self) -> None:
        """SIGUSR1: a chat waits for this container's slot. Finish what Claude Code has been given, take nothing
        new, then stop: what waits here runs in the session's next container, when its turn for a slot comes.
        A container asked before it gave Claude Code anything first answers what it came up for: leaving with
        nothing done would spend a start, and this chat's place in the queue, on nothing."""
        if not self._draining:
            log.info("draining: finishing what is in flight, then stopping")
        self._draining = True
        self.bell.wake()

    def stop(self) -> None:
        """SIGTERM: take no more work. What the agent has not answered runs again in the next container."""
        if self._stopping:
            return
        log.info("stopping")
        self._stopping = True
        self.bell.wake()

    async def run(self) -> None:
        folder = self.config.session_dir
        if self.config.runner:
            self._fence()
        try:
            await asyncio.to_thread(sessiondb.ensure_outbound, folder)
            if done := await asyncio.to_thread(sessiondb.clear_processing, folder):
                log.info("#%s were answered by the container before this one, which stopped before their result", done)
        except sessiondb.Fenced as moved:
            self.fenced(moved)  # moved before this container came up: it touches nothing
            return
        self.bell.open()
        self.agent.heartbeat.touch()
        relay: asyncio.Server | None = None
        try:
            if self.config.gateway_socket:
                from .relay import serve_relay

                relay = await serve_relay(self.config.gateway_socket, "127.0.0.1", self.config.relay_port)
                # Fails loudly (the container exits) when Python or Claude Code does not trust the gateway.
                await selftest.verify({**os.environ, **cli_env(self.config, os.environ)}, self.config.relay_port)
            try:
                await self._start_agent()
            except Exception:
                log.exception("cannot start Claude Code yet; will retry on the next message")
            self.ring_host()  # up: the host starts its next container
            try:
                await self._loop()
            except sessiondb.Fenced as moved:
                self.fenced(moved)
        finally:
            await self._shut_down()
            self.bell.close()
            if relay is not None:
                relay.close()

    def _fence(self) -> None:
        """Write the session folder as the placement the runner gave (every write checks it: `sessiondb`)."""
        sessiondb.write_as(self.config.runner)
        sessiondb.hold(self.config.session_dir, self.config.epoch)
        loop = asyncio.get_running_loop()
        sessiondb.on_fenced = lambda moved: loop.call_soon_threadsafe(self.fenced, moved)

    async def _shut_down(self) -> None:
        busy = self.ledger.busy
        answered, _, _ = self.ledger.lost()
        if answered and self.moved is None:  # the chat has its answer: do not run these again
            with contextlib.suppress(sessiondb.Fenced):
                await asyncio.to_thread(
                    sessiondb.ack, self.config.session_dir, [s for p in answered for s in p.seqs], "completed"
                )
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        await self.agent.close(interrupt=busy)

    async def _start_agent(self) -> None:
        notice = await self.agent.connect()
        assert self.agent.client is not None
        self._reader = asyncio.create_task(self._read(self.agent.client))
        if notice:
            await asyncio.to_thread(self._tell, f"fresh:{uuid.uuid4()}", notice)

    def _pending(self, claimed: set[int]) -> revisions.Folded:
        """Every unread row, with people's edits and deletes folded in (`revisions`); at most max_messages, and as far
        as the first row that asks for an answer, however much chatter kept for context came before it."""
        folder = self.config.session_dir
        pending = [m for m in sessiondb.pending_inbound(folder, limit=0) if m.seq not in claimed]
        earlier = sessiondb.inbound_by_id(folder, revisions.targets(pending))
        folded = revisions.fold(pending, earlier, self.config.max_messages)
        if folded.withdrawn:  # deleted before the agent read them: nothing to answer, nothing lost
            sessiondb.ack(folder, folded.withdrawn, "completed")
            log.info("#%s deleted before the agent read them", folded.withdrawn)
            self.ring_host()
        return folded

    async def _loop(self) -> None:
        while not self._stopping:
            self.bell.clear()
            if self._draining and self._gave_work:  # each result rings the bell: stop once the last one is in
                if not self.ledger.busy:
                    self.stop()
                    break
                await self.bell.wait(SAFETY_POLL_SECONDS)
                continue
            # Each round, the idle poll's too: a container its session was moved away from stops by itself.
            await asyncio.to_thread(sessiondb.check_fence, self.config.session_dir)
            folded = await asyncio.to_thread(self._pending, self.ledger.claimed)
            self._riders = {row.message.seq: row.riders for row in folded.rows}
            batch = [row.message for row in folded.rows]
            if not any(m.trigger for m in batch):
                if self._draining:  # asked to leave, with nothing to answer
                    self.stop()
                    break
                await self.bell.wait(SAFETY_POLL_SECONDS)
                continue
            self._gave_work = True
            command_at = next((i for i, m in enumerate(batch) if m.content.get("command")), None)
            if command_at == 0 or (command_at is not None and not any(m.trigger for m in batch[:command_at])):
                if self.ledger.busy:  # a command waits for what was sent before it; each result rings
                    await self.bell.wait(SAFETY_POLL_SECONDS)
                    continue
                await self._command(batch[: command_at + 1])
                continue
            if command_at is not None:
                batch = batch[:command_at]
            batch = await self._precheck(batch)
            if any(m.trigger for m in batch):
                await self._send(batch)

    def _with_riders(self, batch: list[sessiondb.InboundMessage]) -> list[int]:
        """The rows' seqs and those of the edits and deletes folded into them: they are settled together."""
        return [s for m in batch for s in (m.seq, *self._riders.get(m.seq, ()))]

    async def _send(self, batch: list[sessiondb.InboundMessage]) -> None:
        folder = self.config.session_dir
        seqs = self._with_riders(batch)
        anchor = [m.seq for m in batch if m.trigger][-1]
        if self.agent.client is None:
            try:
                await self._start_agent()
            except Exception as exc:
                log.exception("cannot start Claude Code")
                reason = self.agent.dead(short_reason(f"{type(exc).__name__}: {exc}"))
                await asyncio.to_thread(self._fail, seqs, anchor, reason)
                return
        # Claimed before it is sent: a crash from here on leaves it to the next container.
        await asyncio.to_thread(sessiondb.ack, folder, seqs, "processing")
        if self.agent.client is None:  # Claude Code died meanwhile: the loop sends these to the next one
            await asyncio.to_thread(sessiondb.unclaim, folder, seqs)
            return
        prompt = self.ledger.sent(str(uuid.uuid4()), seqs, anchor)
        self.agent.heartbeat.touch()  # the host measures silence from here
        text = await asyncio.to_thread(self._delivery_notes) + format_prompt(batch)
        try:
            await self.agent.send(prompt.uuid, text)
        except Exception as exc:
            await self._lost(f"{type(exc).__name__}: {exc}")
            return
        log.info("sent #%s as prompt %s", seqs, prompt.uuid)

    # --- what Claude Code says ---------------------------------------------------------------------

    async def _read(self, client: ClaudeSDKClient) -> None:
        """Everything Claude Code says, for as long as it runs: results of turns it started on its
        own (a background task's report) are read too, and never taken for the next prompt's."""
        reason = "Claude Code stopped without a result"
        try:
            async for message in client.receive_messages():
                self.agent.heartbeat.touch()
                await self._on_message(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._stopping or self.agent.client is not client or isinstance(exc, sessiondb.Fenced):
                return  # closed on purpose (a fresh conversation, a shutdown), or moved (`fenced` stops it)
            log.exception("Claude Code failed")
            if isinstance(exc, ProcessError) and exc.exit_code:
                reason = f"Claude Code exited unexpectedly (exit code {exc.exit_code})"
            else:
                reason = f"{type(exc).__name__}: {exc}"
        if not self._stopping and self.agent.client is client:
            await self._lost(short_reason(reason))

    async def _on_message(self, message: Message) -> None:
        if isinstance(message, SystemMessage) and message.subtype == "init":
            await self.agent.remember(str(message.data.get("session_id") or "") or None)
            failed = mcp.failures(message.data.get("mcp_servers"), self.agent.mcp_names)
            if failed:
                failed = await self._mcp_errors(failed)
            await asyncio.to_thread(self._note_mcp, failed)
        elif isinstance(message, SystemMessage) and message.subtype == "compact_boundary":
            self._compacted = message.data.get("compact_metadata") or {}
        elif isinstance(message, SystemMessage) and message.subtype == "api_retry":
            await asyncio.to_thread(self._api_retrying, message.data)
        elif isinstance(message, AssistantMessage):
            self.agent.sightings.saw(message)
        elif isinstance(message, UserMessage):
            prompt = self.ledger.taken(message.uuid)
            if prompt is not None:  # from here on, the agent's replies answer this prompt's rows
                self.state.begin(reply_to=prompt.anchor)
                self._budget.start()
                log.info("claude code took #%s into the conversation", prompt.seqs)
        elif isinstance(message, ResultMessage):
            await self.agent.remember(message.session_id)
            await self._on_result(message)

    async def _on_result(self, message: ResultMessage) -> None:
        over_budget = self._budget.stop()
        wrote = self.state.writes > self._writes_at_result
        self._writes_at_result = self.state.writes
        settled = self.ledger.result(named_uuids(message), error=message.is_error)
        cost = await asyncio.to_thread(self._charge, message, settled.seqs)
        if not settled.prompts:
            text = (message.result or "").strip()
            log.info("a turn Claude Code started on its own ended (%s): %s", message.subtype, short_reason(text))
            if text and not wrote and not message.is_error:
                await asyncio.to_thread(self._tell, f"own:{message.uuid or uuid.uuid4()}", text)
            return
        if too_long(message) and not self._fresh_for.intersection(settled.seqs):
            await self._start_fresh(settled)
            return
        status = await asyncio.to_thread(self._settle, settled, message, wrote, over_budget)
        self.ring_host()
        self.bell.wake()  # a command waiting for the agent to be idle may go now
        log.info(
            "settled #%s %s api_turns=%d sends=%s cost_usd=%.6f duration_ms=%d",
            settled.seqs,
            status,
            message.num_turns,
            wrote,
            cost,
            message.duration_ms,
        )

    def _settle(self, settled: Settled, message: ResultMessage, wrote: bool, over_budget: bool) -> str:
        """Make sure the chat hears back about the rows a result names, then ack them."""
        anchor = settled.anchor
        assert anchor is not None
        if message.is_error:
            self._fail(
                settled.seqs,
                anchor,
                f"it worked on this for more than {duration(self.config.turn_budget)}, the limit for one message"
                if over_budget
                else result_error(message, self.config.max_turns),
            )
            return "failed"
        text = (message.result or "").strip()
        if self._compacting.intersection(p.uuid for p in settled.prompts):  # the reply to an admin's /compact
            self._compacting.difference_update(p.uuid for p in settled.prompts)
            compacted, self._compacted = self._compacted, None
            tools.write_reply(
                self.state,
                commands.compacted_text(compacted, text),
                suffix="compact",
                reply_to=anchor,
                answers=settled.seqs,
            )
        elif text and not wrote:  # answered without send_message: the final text still reaches the chat
            tools.write_reply(self.state, text, suffix="result", reply_to=anchor, answers=settled.seqs)
        sessiondb.ack(self.config.session_dir, settled.seqs, "completed")
        return "completed"

    def _charge(self, message: ResultMessage, seqs: list[int]) -> float:
        """Claude Code reports the conversation's running total; each result costs the difference."""
        folder = self.config.session_dir
        total = float(message.total_cost_usd or 0.0)
        before = float(sessiondb.get_state(folder, COST_TOTAL_KEY) or 0.0)
        cost = total - before if total >= before else total  # a lower total: a new conversation
        sessiondb.set_state(folder, COST_TOTAL_KEY, repr(total))
        if seqs:
            usage = message.usage or {}
            sessiondb.record_cost(
                folder,
                seqs,
                usd=cost,
                input_tokens=int(usage.get("input_tokens") or 0),
                output_tokens=int(usage.get("output_tokens") or 0),
            )
        return cost

    async def _start_fresh(self, settled: Settled) -> None:
        """The conversation no longer fits the model: start a new one and run these rows in it."""
        log.warning("conversation too long; starting a fresh one for #%s", settled.seqs)
        self._fresh_for.update(settled.seqs)
        await self._restart_agent()
        await asyncio.to_thread(self._tell, f"fresh:{uuid.uuid4()}", TOO_LONG_NOTICE)
        await asyncio.to_thread(sessiondb.unclaim, self.config.session_dir, settled.seqs)
        self.bell.wake()

    async def _restart_agent(self) -> None:
        """Stop Claude Code and forget its conversation; the next prompt starts a fresh one."""
        reader, self._reader = self._reader, None
        self._budget.stop()
        await self.agent.close(interrupt=True)
        await self.agent.forget()
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        lost = self.ledger.lost()  # whatever else was in flight is sent again to the fresh conversation
        await asyncio.to_thread(
            sessiondb.unclaim, self.config.session_dir, [s for group in lost for p in group for s in p.seqs]
        )

    def _over_budget(self) -> None:
        client = self.agent.client
        if client is not None:
            log.warning("the turn ran past its budget of %.0f s; interrupting it", self.config.turn_budget)
            self._interrupting = asyncio.create_task(client.interrupt())

    async def _lost(self, reason: str) -> None:
        """Claude Code died. What it answered is done; what it was answering fails (it may be what killed
        it), unless it died waiting on a person; what it had not started on is sent once more, to the next
        Claude Code."""
        if self.agent.client is None and not self.ledger.busy:
            return
        waiting = self.state.waiting_since is not None  # read before the close, which ends the wait
        await self.agent.close()
        self._reader = None
        self._budget.stop()
        answered, failed, unseen = self.ledger.lost()
        if waiting:
            # It died while the turn waited on a person (a question): the prompt did not kill it. It runs again,
            # once, and asks again under the same request id, where the person's answer is taken.
            failed, unseen = [], unseen + failed
        failed += [p for p in unseen if self._resent.intersection(p.seqs)]
        unseen = [p for p in unseen if not self._resent.intersection(p.seqs)]
        self._resent.update(s for p in unseen for s in p.seqs)
        reason = self.agent.dead(reason)
        folder = self.config.session_dir

        def settle() -> None:
            if answered:
                sessiondb.ack(folder, [s for p in answered for s in p.seqs], "completed")
            for p in failed:
                self._fail(p.seqs, p.anchor, reason)
            if unseen:
                sessiondb.unclaim(folder, [s for p in unseen for s in p.seqs])

        await asyncio.to_thread(settle)
        log.warning(
            "claude code is gone (%s): %d answered, %d failed, %d to send again",
            reason,
            len(answered),
            len(failed),
            len(unseen),
        )
        self.ring_host()
        self.bell.wake()

    def _fail(self, seqs: list[int], anchor: int, reason: str) -> None:
        log.warning("turn failed: %s", reason)
        text = f"Sorry — the agent failed: {reason}"
        tools.write_reply(self.state, text, suffix="failed", reply_to=anchor, answers=seqs, failed=True)
        sessiondb.ack(self.config.session_dir, seqs, "failed")
        self.ring_host()

    async def _mcp_errors(self, failed: dict[str, str]) -> dict[str, str]:
        """Why the failed servers failed, as Claude Code's MCP status says (its init message only says that
        they did); bounded, since it is only the detail of a notice."""
        client = self.agent.client
        try:
            assert client is not None
            async with asyncio.timeout(MCP_STATUS_WAIT_SECONDS):
                status = await client.get_mcp_status()
        except Exception:
            log.exception("cannot read the MCP servers' status")
            return failed
        return failed | mcp.failures(status.get("mcpServers"), set(failed))

    def _note_mcp(self, failed: dict[str, str]) -> None:
        """The group's MCP servers that failed to start: the chat hears of each once (again only if it
        recovers and fails anew), and the host reads the list for `clawden status`."""
        folder = self.config.session_dir
        told = json.loads(sessiondb.get_state(folder, sessiondb.MCP_FAILED_KEY) or "{}")
        if new := mcp.news(failed, told):
            log.warning("MCP servers failed to start: %s", new)
            self._tell(f"mcp:{uuid.uuid4()}", mcp.notice(new))
        if failed != told:
            sessiondb.set_state(folder, sessiondb.MCP_FAILED_KEY, json.dumps(failed) if failed else None)

    def _api_retrying(self, retry: dict[str, Any]) -> None:
        """Claude Code tries a model call again (the API overloaded, down, or out of reach): past a blip, the chat
        hears that its message is still being worked on, once per run of failures, where it heard nothing for
        minutes while the tries backed off. A notice, not an answer: the message still waits for its reply.
        A refused key is no blip and no outage: the chat hears what the owner must do at its first retry, once
        per run, and not that the API is not answering."""
        attempt, tries = retry.get("attempt"), retry.get("max_retries")
        status, error = retry.get("error_status"), retry.get("error") or "no answer"
        why = f"{status} {error}" if status else str(error)
        if attempt == 1:  # a new run of failures
            self._key_refusal_told = False
        if key_refused(status, error):
            if self._key_refusal_told or not self.ledger.busy:
                return
            self._key_refusal_told = True
            log.warning("the model API refused the model key (%s); Claude Code keeps trying", why)
            self._notice(f"The model API refused the model key ({why}): {KEY_FIX}.")
            return
        if attempt != RETRY_NOTICE_AT or not self.ledger.busy:  # no message waits on it (a turn of its own)
            return
        if self._key_refusal_told:  # the chat knows the cause: the key, not the API's health
            return
        log.warning("the model's API failed %s times in a row (%s); Claude Code keeps trying", attempt, why)
        upto = f", up to {tries} times" if tries else ""
        self._notice(f"The model's API is not answering ({why}); I keep trying{upto}.")

    def _notice(self, text: str) -> None:
        """A notice about the message being worked on, which answers nothing."""
        routing = sessiondb.session_routing(self.config.session_dir)
        if routing is None:
            return
        sessiondb.write_outbound(
            self.config.session_dir,
            id=f"api-retry:{uuid.uuid4().hex}",
            kind="chat",
            content={"text": text, "says": "notice"},
            routing=routing,
        )
        self.ring_host()

    def _tell(self, row_id: str, text: str) -> None:
        """A message of the agent's own, answering nothing in particular."""
        routing = sessiondb.session_routing(self.config.session_dir)
        if routing is not None:
            sessiondb.write_outbound(
                self.config.session_dir,
                id=row_id,
                kind="chat",
                content={"text": text},
                routing=routing,
                in_reply_to=None,
            )
            self.ring_host()

    # --- rows that need no model -------------------------------------------------------------------

    async def _command(self, rows: list[sessiondb.InboundMessage]) -> None:
        """An admin's command, answered here and never read by the model as text: /clear forgets the
        conversation (what came before it in the batch is moot), /cost tells what the conversation and the
        last message cost, /context how full the context is, /files what the group's folder holds, and
        /compact has Claude Code compact the conversation."""
        command = rows[-1]
        word = str(command.content["command"])
        if word == "compact":
            await self._compact(rows)
            return
        if word == "clear":
            await self._restart_agent()
            text = "Cleared. The next message starts a fresh conversation."
        elif word == "context":
            text = await self._context_text()
        elif word == "files":
            text = commands.files_text(await asyncio.to_thread(commands.workspace_files, self.config.group_dir))
        else:
            text = await asyncio.to_thread(self._cost_text, command.seq)
        self.state.begin(reply_to=command.seq)
        await asyncio.to_thread(tools.write_reply, self.state, text, suffix=word)
        await asyncio.to_thread(sessiondb.ack, self.config.session_dir, self._with_riders(rows), "completed")
        self.ring_host()
        log.info("/%s by #%d", word, command.seq)

    async def _compact(self, rows: list[sessiondb.InboundMessage]) -> None:
        """Claude Code compacts the conversation as a turn of its own (the model writes the summary); its
        result settles the rows and tells the chat the sizes before and after."""
        seqs, anchor = self._with_riders(rows), rows[-1].seq
        if self.agent.client is None:
            try:
                await self._start_agent()
            except Exception as exc:
                await asyncio.to_thread(self._fail, seqs, anchor, self.agent.dead(f"{type(exc).__name__}: {exc}"))
                return
        await asyncio.to_thread(sessiondb.ack, self.config.session_dir, seqs, "processing")
        prompt = self.ledger.sent(str(uuid.uuid4()), seqs, anchor)
        self._compacting.add(prompt.uuid)
        self._compacted = None
        self.agent.heartbeat.touch()
        try:
            await self.agent.send(prompt.uuid, "/compact", slash_command=True)
        except Exception as exc:
            await self._lost(f"{type(exc).__name__}: {exc}")
            return
        log.info("/compact by #%d sent as prompt %s", anchor, prompt.uuid)

    async def _context_text(self) -> str:
        """What Claude Code says fills its context window now (no model call)."""
        try:
            if self.agent.client is None:
                await self._start_agent()
            assert self.agent.client is not None
            usage = await self.agent.client.get_context_usage()
        except Exception as exc:
            log.exception("context usage failed")
            return f"I could not read the context usage: {short_reason(f'{type(exc).__name__}: {exc}')}"
        return commands.context_text(cast(Mapping[str, Any], usage))

    def _cost_text(self, before: int) -> str:
        folder = self.config.session_dir
        total = sessiondb.cost(folder)
        if not total.messages:
            return "Nothing has been spent in this chat yet."
        charged = [seq for seq in sessiondb.charged_seqs(folder) if seq < before]
        last = sessiondb.cost(folder, charged[-1:])
        return (
            f"This chat has cost ${total.usd:.4f} over {total.messages} messages ({total.input_tokens:,} "
            f"input and {total.output_tokens:,} output tokens). The last one, #{charged[-1]}, cost "
            f"${last.usd:.4f} ({last.input_tokens:,} in, {last.output_tokens:,} out)."
        )

    async def _precheck(self, batch: list[sessiondb.InboundMessage]) -> list[sessiondb.InboundMessage]:
        """A task with a pre-check script runs it first. A yes keeps the task, with the script's data for
        the agent; a no settles its row without waking the model; a broken script does too, and the
        chat is told (once per distinct error, not at every run)."""
        kept: list[sessiondb.InboundMessage] = []
        for msg in batch:
            script = msg.content.get("script") if msg.kind == "task" else None
            if not isinstance(script, str) or not script.strip():
                kept.append(msg)
                continue
            verdict = await precheck.run(
                script, self.config.group_dir, {**os.environ, **cli_env(self.config, os.environ)}
            )
            await asyncio.to_thread(self._note_precheck, msg, verdict)
            if verdict.wake:
                kept.append(replace(msg, content={**msg.content, "script_output": verdict.data}))
        return kept

    def _note_precheck(self, msg: sessiondb.InboundMessage, verdict: precheck.Verdict) -> None:
        folder = self.config.session_dir
        task = msg.id.split(":")[1] if msg.id.startswith("task:") else msg.id
        key = PRECHECK_ERROR_KEY + task
        told = sessiondb.get_state(folder, key) or ""
        if verdict.error and verdict.error != told:
            # It answers the task's row alone: Claude Code may be busy with another message meanwhile, whose replies
            # and claim this notice must neither take over nor settle.
            tools.write_reply(
                self.state,
                f"⚠️ The pre-check script of task {task} failed ({verdict.error}), so "
                "this run was skipped. Ask me to fix or remove it.",
                suffix="precheck",
                reply_to=msg.seq,
                answers=[msg.seq],
            )
            self.ring_host()
        if verdict.error != told:
            sessiondb.set_state(folder, key, verdict.error)
        if not verdict.wake:
            sessiondb.ack(folder, [msg.seq], "completed")
            log.info(
                "task #%d skipped by its pre-check script%s", msg.seq, f": {verdict.error}" if verdict.error else ""
            )

    def _delivery_notes(self) -> str:
        """Sends the platform refused for good since the last turn, so the agent can react."""
        folder = self.config.session_dir
        seen = int(sessiondb.get_state(folder, DELIVERY_SEEN_KEY) or 0)
        failures = sessiondb.failed_deliveries(folder, after_seq=seen)
        if not failures:
            return ""
        sessiondb.set_state(folder, DELIVERY_SEEN_KEY, str(failures[-1][0]))
        return "".join(
            f'<delivery-failed seq="{seq}">{html.escape(error, quote=False)}</delivery-failed>\n'
            for seq, error in failures
        )


async def run(config: Config) -> None:
    runner = Runner(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    loop.add_signal_handler(signal.SIGUSR1, runner.drain)
    await runner.run()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("CLAWDEN_LOG_LEVEL", "INFO").upper(),
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = Config.from_env(os.environ)
    log.info(
        "agent runner starting: session=%s group=%s gateway=%s",
        config.session_dir,
        config.group_dir,
        config.gateway_socket or "-",
    )
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run(config))
    log.info("agent runner stopped")
