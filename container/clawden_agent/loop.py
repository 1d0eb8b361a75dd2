"""The agent runner's loop: wait for the doorbell, turn pending inbound rows into one prompt, run it
through one long-lived Claude Code session, and ack the rows in outbound.db."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    HookContext,
    HookInput,
    HookJSONOutput,
    HookMatcher,
    McpServerConfig,
    ProcessError,
    ResultError,
    ResultMessage,
    SystemMessage,
    TextBlock,
)

from clawden import sessiondb

from . import doorbell, precheck, selftest, tools

log = logging.getLogger("clawden_agent")

SESSION_ID_KEY = "claude_session_id"
DELIVERY_SEEN_KEY = "delivery_failures_seen"  # the newest failed send already shown to the agent
PRECHECK_ERROR_KEY = "precheck_error:"  # + task id: the error the chat was last told about
CURRENT_TOOL_KEY = "current_tool"  # the host reads it to tell a long tool call from a hang
DEFAULT_BASH_TIMEOUT_MS = 120_000  # Claude Code's Bash default when the call declares none
HEARTBEAT = ".heartbeat"
# Only the safety net: rings wake the loop at once, this catches a ring that was lost.
SAFETY_POLL_SECONDS = 2.0
BATCH_LIMIT = 10
MERGE_GRACE_SECONDS = 1.0
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
    # The container is the sandbox; Claude Code refuses bypassPermissions as root without this.
    "IS_SANDBOX": "1",
}

# Interactive and self-scheduling built-ins that make no sense behind a chat; Clawden's own
# tools (ask_user_question, schedule_task, ...) take their place.
DISALLOWED_TOOLS = [
    "AskUserQuestion", "EnterPlanMode", "ExitPlanMode", "EnterWorktree", "ExitWorktree",
    "CronCreate", "CronDelete", "CronList", "ScheduleWakeup", "PushNotification", "RemoteTrigger",
]

SYSTEM_ADDENDUM = """\
You are a personal assistant that people reach from a chat app through Clawden.
Each user turn holds the new chat traffic as <message seq="…" from="…" time="…">…</message>
elements (and <task seq="…" time="…">…</task> for scheduled work). Answer the chat with the
send_message tool: only what you send with it reaches people. Write chat-sized plain text, send
more than one message when a long job deserves progress updates, and refer to earlier messages by
their #seq when useful. A <delivery-failed seq="…"> element means one of your messages never reached
the chat; say so another way if it mattered. Anything you write outside send_message is private
scratch space."""


@dataclass(frozen=True)
class Config:
    session_dir: Path
    group_dir: Path
    gateway_socket: str | None
    relay_port: int
    model: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        return cls(
            session_dir=Path(env.get("CLAWDEN_SESSION_DIR", "/workspace/session")),
            group_dir=Path(env.get("CLAWDEN_GROUP_DIR", "/workspace/agent")),
            gateway_socket=env.get("CLAWDEN_GATEWAY_SOCKET") or None,
            relay_port=int(env.get("CLAWDEN_RELAY_PORT", "3128")),
            model=env.get("CLAWDEN_MODEL") or None,
        )


def cli_env(config: Config, env: Mapping[str, str]) -> dict[str, str]:
    """The environment Claude Code gets on top of ours."""
    out = dict(QUIET_ENV)
    if config.gateway_socket:
        relay = f"http://127.0.0.1:{config.relay_port}"
        out.update(HTTPS_PROXY=relay, HTTP_PROXY=relay, https_proxy=relay,
                   http_proxy=relay, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                   ANTHROPIC_API_KEY=PLACEHOLDER_API_KEY)
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
        where = f"at {msg_file(a['path'])}" if a.get("path") else "(not downloaded)"
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


def short_reason(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- the Claude Code session -----------------------------------------------------------------------

@dataclass
class TurnOutcome:
    # Final texts of queries the agent answered without send_message: they still reach the chat.
    unsent: list[str] = field(default_factory=list)
    error: str | None = None
    num_turns: int = 0


class Agent:
    """One persistent ClaudeSDKClient, recreated (resuming the stored conversation) if it dies.

    It keeps outbound.db's `claude_session_id` current as soon as Claude Code names the session,
    so even a container killed during its first turn comes back to the same conversation.
    """

    def __init__(self, config: Config, state: tools.TurnState, heartbeat: Path) -> None:
        self.config = config
        self.heartbeat = heartbeat
        self._client: ClaudeSDKClient | None = None
        self._state = state
        self._server = tools.build_server(state)
        self._stderr: deque[str] = deque(maxlen=20)
        self._stored_session: str | None = None
        self._expected = 0  # results the open turn still waits for (one per query sent)
        self._open = False

    def _options(self, resume: str | None) -> ClaudeAgentOptions:
        return ClaudeAgentOptions(
            cwd=str(self.config.group_dir),
            permission_mode="bypassPermissions",
            system_prompt={"type": "preset", "preset": "claude_code", "append": SYSTEM_ADDENDUM},
            mcp_servers=cast(dict[str, McpServerConfig], {tools.SERVER_NAME: self._server}),
            disallowed_tools=DISALLOWED_TOOLS,
            setting_sources=["project", "user"],
            model=self.config.model,
            resume=resume,
            env=cli_env(self.config, os.environ),
            stderr=self._on_stderr,
            hooks={
                "PreToolUse": [HookMatcher(matcher="Bash", hooks=[self._tool_started])],
                "PostToolUse": [HookMatcher(matcher="Bash", hooks=[self._tool_finished])],
            },
        )

    async def _tool_started(self, data: HookInput, tool_use_id: str | None, context: HookContext
                            ) -> HookJSONOutput:
        """Declare a long Bash call so the host does not take its silence for a hang."""
        tool_input = data.get("tool_input") or {}
        timeout_ms = tool_input.get("timeout", DEFAULT_BASH_TIMEOUT_MS) if isinstance(tool_input, dict) else 0
        declared = json.dumps({"name": data.get("tool_name", ""), "timeout": float(timeout_ms) / 1000,
                               "started_at": time.time()})
        self.heartbeat.touch()
        await asyncio.to_thread(sessiondb.set_state, self.config.session_dir, CURRENT_TOOL_KEY, declared)
        return {}

    async def _tool_finished(self, data: HookInput, tool_use_id: str | None, context: HookContext
                             ) -> HookJSONOutput:
        self.heartbeat.touch()
        await asyncio.to_thread(sessiondb.set_state, self.config.session_dir, CURRENT_TOOL_KEY, None)
        return {}

    def _on_stderr(self, line: str) -> None:
        self._stderr.append(line)
        log.info("claude: %s", line)

    async def connect(self) -> None:
        resume = await asyncio.to_thread(sessiondb.get_state, self.config.session_dir, SESSION_ID_KEY)
        self._stored_session = resume
        try:
            await self._connect(resume)
        except Exception as exc:
            if not resume or "No conversation found" not in str(exc):
                raise
            # The Claude state dir lost that conversation: start a new one rather than fail forever.
            log.warning("stored conversation %s is gone; starting a new one", resume)
            await self._remember(None)
            await self._connect(None)

    async def _connect(self, resume: str | None) -> None:
        started = time.perf_counter()
        client = ClaudeSDKClient(self._options(resume))
        await client.connect()
        self._client = client
        log.info("claude code ready in %.0f ms (resume=%s)", (time.perf_counter() - started) * 1000, resume)

    async def _remember(self, session_id: str | None) -> None:
        if session_id != self._stored_session:
            await asyncio.to_thread(sessiondb.set_state, self.config.session_dir, SESSION_ID_KEY, session_id)
            self._stored_session = session_id

    async def turn(self, prompt: str) -> TurnOutcome:
        """Run one query to its ResultMessage. SDK failures come back as `error`, never raised."""
        outcome = TurnOutcome()
        try:
            if self._client is None:
                await self.connect()
            assert self._client is not None
            self._expected, self._open = 1, True
            await self._client.query(prompt)
            texts: list[str] = []
            results = 0
            sent_before = len(self._state.sent)
            stream = self._client.receive_messages().__aiter__()
            short_of_results = False
            while True:
                try:
                    if short_of_results:
                        # A follow-up fed in mid-turn is either answered in this same turn (after a
                        # tool call) or queued as a turn of its own, whose first message comes at
                        # once; silence after the result means it was merged.
                        message = await asyncio.wait_for(stream.__anext__(), MERGE_GRACE_SECONDS)
                    else:
                        message = await stream.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    self._open = False
                    return outcome
                short_of_results = False
                self.heartbeat.touch()
                if isinstance(message, AssistantMessage):
                    texts.extend(b.text for b in message.content if isinstance(b, TextBlock))
                elif isinstance(message, SystemMessage) and message.subtype == "init":
                    await self._remember(str(message.data.get("session_id") or "") or None)
                elif isinstance(message, ResultMessage):
                    await self._remember(message.session_id)
                    results += 1
                    outcome.num_turns += message.num_turns
                    text = (message.result or "").strip()
                    if text and len(self._state.sent) == sent_before:
                        outcome.unsent.append(text)
                    sent_before = len(self._state.sent)
                    if message.is_error and outcome.error is None:
                        outcome.error = self._result_error(message, texts)
                    if results >= self._expected:
                        self._open = False
                        return outcome
                    short_of_results = True
            raise ProcessError("Claude Code stopped without a result")
        except Exception as exc:
            self._open = False
            log.exception("turn failed")
            if isinstance(exc, ProcessError) and not isinstance(exc, ResultError) and exc.exit_code:
                reason = f"Claude Code exited unexpectedly (exit code {exc.exit_code})"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            outcome.error = self._dead(short_reason(reason))
            await self.close()  # the next turn starts a fresh Claude Code on the same conversation
            return outcome

    async def push(self, prompt: str) -> bool:
        """Hand a follow-up to the running turn; Claude Code answers it right after what it is doing.

        False when no turn is open (it just ended): the caller's rows then wait for the next turn.
        """
        if not self._open or self._client is None:
            return False
        self._expected += 1  # before the await: the turn must not end between query and count
        await self._client.query(prompt)
        return True

    def _result_error(self, message: ResultMessage, texts: list[str]) -> str:
        for candidate in ("; ".join(message.errors or []), message.result or "", texts[-1] if texts else ""):
            if candidate.strip():
                return short_reason(candidate)
        if message.api_error_status:
            return f"API error (HTTP {message.api_error_status})"
        return message.subtype

    def _dead(self, reason: str) -> str:
        tail = [line for line in self._stderr if line.strip()]
        return short_reason(f"{reason} ({tail[-1]})") if tail and tail[-1] not in reason else reason

    async def reset(self) -> None:
        await self.close()
        await self._remember(None)

    async def close(self, *, interrupt: bool = False) -> None:
        """Stop Claude Code. `interrupt` first aborts a turn in flight, which it would otherwise
        finish (or be killed after a grace period) once its stdin closes."""
        client, self._client = self._client, None
        if client is None:
            return
        if interrupt:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await client.interrupt()
        with contextlib.suppress(Exception):
            await client.disconnect()


# --- the loop --------------------------------------------------------------------------------------

class Runner:
    def __init__(self, config: Config) -> None:
        self.config = config
        folder = config.session_dir
        self.bell = doorbell.Doorbell(folder / sessiondb.AGENT_BELL)
        self.host_bell = folder / sessiondb.HOST_BELL
        self.state = tools.TurnState(folder, self.ring_host)
        self.agent = Agent(config, self.state, folder / HEARTBEAT)
        self._stopping = False
        self._turn: asyncio.Task[None] | None = None
        self._interrupted = False

    def ring_host(self) -> None:
        doorbell.ring(self.host_bell)

    def stop(self) -> None:
        """SIGTERM: take no more work; an unfinished turn is cancelled and its rows run again later."""
        if self._stopping:
            return
        log.info("stopping")
        self._stopping = True
        self.bell.wake()
        if self._turn is not None:
            self._turn.cancel()
            self._interrupted = True

    async def run(self) -> None:
        folder = self.config.session_dir
        await asyncio.to_thread(sessiondb.ensure_outbound, folder)
        await asyncio.to_thread(sessiondb.clear_processing, folder)
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
                await self.agent.connect()
            except Exception:
                log.exception("cannot start Claude Code yet; will retry on the next message")
            await self._loop()
        finally:
            await self.agent.close(interrupt=self._interrupted)
            self.bell.close()
            if relay is not None:
                relay.close()

    async def _loop(self) -> None:
        folder = self.config.session_dir
        free_since = time.perf_counter()
        while not self._stopping:
            # Latency accounting starts at the ring, or when the loop got free if it rang meanwhile.
            woke = max(self.bell.rung_at, free_since) if self.bell.rung_at else time.perf_counter()
            self.bell.clear()
            batch = await asyncio.to_thread(sessiondb.pending_inbound, folder, limit=BATCH_LIMIT)
            if not any(m.trigger for m in batch):
                await self.bell.wait(SAFETY_POLL_SECONDS)
                continue
            clear_at = next((i for i, m in enumerate(batch) if m.content.get("command") == "clear"), None)
            if clear_at is not None:
                await self._clear(batch[: clear_at + 1])  # what came before /clear is moot
                continue
            batch = await self._precheck(batch)
            if not any(m.trigger for m in batch):
                continue
            claimed = [m.seq for m in batch]
            self._turn = asyncio.create_task(self._handle(batch, woke, claimed))
            try:
                await self._feed(self._turn, claimed)
                if not self._turn.cancelled() and self._turn.exception() is not None:
                    log.error("turn crashed", exc_info=self._turn.exception())
            finally:
                self._turn = None
                free_since = time.perf_counter()

    async def _feed(self, turn: asyncio.Task[None], claimed: list[int]) -> None:
        """While a turn runs, messages that arrive go into it at once, not after it."""
        folder = self.config.session_dir
        while not turn.done():
            self.bell.clear()
            rung = asyncio.create_task(self.bell.wait(SAFETY_POLL_SECONDS))
            await asyncio.wait({turn, rung}, return_when=asyncio.FIRST_COMPLETED)
            rung.cancel()
            if turn.done() or self._stopping:
                break
            fresh = [m for m in await asyncio.to_thread(sessiondb.pending_inbound, folder, limit=BATCH_LIMIT)
                     if m.seq not in claimed]
            if not any(m.trigger for m in fresh) or any(m.content.get("command") for m in fresh):
                continue  # commands (/clear) wait for the turn to end
            if await self.agent.push(format_prompt(fresh)):
                seqs = [m.seq for m in fresh]
                claimed.extend(seqs)
                await asyncio.to_thread(sessiondb.ack, folder, seqs, "processing")
                log.info("fed #%s into the running turn", seqs)
        await asyncio.wait({turn})

    async def _clear(self, rows: list[sessiondb.InboundMessage]) -> None:
        """/clear: forget the conversation; the next message starts a fresh one."""
        await self.agent.reset()
        self.state.begin(reply_to=rows[-1].seq)
        await asyncio.to_thread(tools.write_reply, self.state, "Cleared. The next message starts a fresh "
                                "conversation.", suffix="clear")
        await asyncio.to_thread(sessiondb.ack, self.config.session_dir, [m.seq for m in rows], "completed")
        self.ring_host()
        log.info("conversation cleared by #%d", rows[-1].seq)

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
            verdict = await precheck.run(script, self.config.group_dir, {**os.environ, **cli_env(self.config,
                                                                                               os.environ)})
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
            self.state.begin(reply_to=msg.seq)
            tools.write_reply(self.state, f"⚠️ The pre-check script of task {task} failed ({verdict.error}), so "
                              "this run was skipped. Ask me to fix or remove it.", suffix="precheck")
            self.ring_host()
        if verdict.error != told:
            sessiondb.set_state(folder, key, verdict.error)
        if not verdict.wake:
            sessiondb.ack(folder, [msg.seq], "completed")
            log.info("task #%d skipped by its pre-check script%s", msg.seq,
                     f": {verdict.error}" if verdict.error else "")

    def _delivery_notes(self) -> str:
        """Sends the platform refused for good since the last turn, so the agent can react."""
        folder = self.config.session_dir
        seen = int(sessiondb.get_state(folder, DELIVERY_SEEN_KEY) or 0)
        failures = sessiondb.failed_deliveries(folder, after_seq=seen)
        if not failures:
            return ""
        sessiondb.set_state(folder, DELIVERY_SEEN_KEY, str(failures[-1][0]))
        return "".join(f'<delivery-failed seq="{seq}">{html.escape(error, quote=False)}</delivery-failed>\n'
                       for seq, error in failures)

    async def _handle(self, batch: list[sessiondb.InboundMessage], woke: float, seqs: list[int]) -> None:
        """Run one turn for `batch`; `seqs` grows while it runs as follow-ups are fed in."""
        folder = self.config.session_dir
        # The claim is written while Claude Code already works: it only has to land before the
        # final ack, and a crash before it merely leaves the rows pending, to be run again.
        claim = asyncio.create_task(asyncio.to_thread(sessiondb.ack, folder, list(seqs), "processing"))
        self.agent.heartbeat.touch()  # a turn starts: the host measures silence from here
        self.state.begin(reply_to=[m.seq for m in batch if m.trigger][-1])
        prompt = await asyncio.to_thread(self._delivery_notes) + format_prompt(batch)
        before = time.perf_counter()
        try:
            outcome = await self.agent.turn(prompt)
            await claim
        except asyncio.CancelledError:
            if self.state.sent:  # the chat already has its answer: do not run it again
                await claim
                await asyncio.to_thread(sessiondb.ack, folder, seqs, "completed")
            raise
        after = time.perf_counter()
        status = await asyncio.to_thread(self._finish, outcome, seqs)
        self.ring_host()
        done = time.perf_counter()
        pre = (before - woke) * 1000
        log.info("turn seqs=%s %s sends=%d api_turns=%d runner_ms=%.1f (pre=%.1f post=%.1f) cli_ms=%.1f",
                 seqs, status, len(self.state.sent), outcome.num_turns, pre + (done - after) * 1000, pre,
                 (done - after) * 1000, (after - before) * 1000)

    def _finish(self, outcome: TurnOutcome, seqs: list[int]) -> str:
        """Blocking tail of a turn: make sure the chat hears back, then ack."""
        replies = [(text, f"result:{i}") for i, text in enumerate(outcome.unsent)]
        if outcome.error is not None:
            log.warning("turn failed: %s", outcome.error)
            replies = [(f"Sorry — the agent failed: {outcome.error}", "failed")]
        for text, suffix in replies:
            if tools.write_reply(self.state, text, suffix=suffix) is None:
                log.warning("no session routing: the reply to #%s had nowhere to go", self.state.reply_to)
        status = "failed" if outcome.error is not None else "completed"
        sessiondb.ack(self.config.session_dir, seqs, status)
        return status


async def run(config: Config) -> None:
    runner = Runner(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    await runner.run()


def main() -> None:
    logging.basicConfig(level=os.environ.get("CLAWDEN_LOG_LEVEL", "INFO").upper(), force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = Config.from_env(os.environ)
    log.info("agent runner starting: session=%s group=%s gateway=%s", config.session_dir, config.group_dir,
             config.gateway_socket or "-")
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run(config))
    log.info("agent runner stopped")

