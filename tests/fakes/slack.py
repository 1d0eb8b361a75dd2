"""A fake Slack on loopback for tests: the Web API over HTTP and Socket Mode over a real WebSocket (aiohttp),
in Slack's own JSON shapes, recording what it was sent, with faults to inject.

The world: one workspace, the bot (its user and bot ids, a bot token and an app-level token), people, public
channels and DMs, each with its messages. People act through `say`, `click` and `upload`; the fake turns that
into Events API and interactive envelopes on the app's socket, as Slack does. It is strict where a bridge can go
wrong, each rule citing the Slack docs page it comes from:

- Socket Mode (api.slack.com/apis/socket-mode): apps.connections.open takes only an app-level token and hands
  out a WebSocket URL good for one connection; `hello` opens it; every envelope must be acknowledged by its
  `envelope_id`, and an events_api envelope not acknowledged within 3 seconds is delivered again (with
  `retry_attempt` and `retry_reason: timeout`, on this socket or the next; an ack after that counts as late);
  a `disconnect` envelope asks the app to connect anew.
- The Web API (api.slack.com/web): a token in `Authorization: Bearer`, `ok: false` with an `error` code, the
  token type each method takes (`not_allowed_token_type`), JSON bodies only for methods that take them
  (files.* take form fields), HTTP 429 with `Retry-After` (api.slack.com/apis/rate-limits).
- chat.postMessage (api.slack.com/methods/chat.postMessage): `channel_not_found`, `not_in_channel`, `no_text`,
  `msg_too_long` past 40,000 characters, `invalid_blocks` (api.slack.com/reference/block-kit/blocks: a section's
  text at most 3,000 characters, a button's label at most 75 and its value 2,000, action ids unique in a message).
- chat.update / chat.delete: `message_not_found`, `cant_update_message` / `cant_delete_message` for a message
  the bot did not post. reactions.add: `invalid_name`, `already_reacted`. files.getUploadURLExternal +
  files.completeUploadExternal (api.slack.com/messaging/files#uploading_files): the upload URL takes the
  bytes; completing an id that was never uploaded is `file_not_found`; private file URLs need the bot token
  (api.slack.com/types/file#authentication), else Slack answers a login page.

    fake = FakeSlack(); fake.start_in_thread()
    ada = fake.user("ada"); general = fake.channel("general", ada)
    fake.say(general, ada, f"<@{fake.bot_user}> hello"); fake.inject("chat.postMessage", Error(429, retry_after=2))
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.threaded import ThreadedServer, serve_from_command_line
from tests.fakes.trickle import Trickle

BOT_TOKEN = "xoxb-1111-2222-FakeBotTokenForTestsOnly"
APP_TOKEN = "xapp-1-A0APP-3333-FakeAppTokenForTestsOnly"
TEAM = "T0TEAM"
BOT_USER = "U0BOT"
BOT_ID = "B0BOT"
APP_ID = "A0APP"
ACK_WINDOW = 3.0
MAX_RETRIES = 3  # the Events API tries a delivery up to three more times (api.slack.com/apis/events-api#retries)
MAX_TEXT = 40000
JSON_METHODS = {
    "chat.postMessage",
    "chat.update",
    "chat.delete",
    "reactions.add",
    "conversations.open",
    "auth.test",
    "apps.connections.open",
}
# Standard emoji names reactions.add takes (a subset of Slack's; another is `invalid_name`).
EMOJI = {
    "+1",
    "-1",
    "heart",
    "fire",
    "tada",
    "eyes",
    "white_check_mark",
    "x",
    "pray",
    "clap",
    "joy",
    "grin",
    "thinking_face",
    "100",
    "zap",
    "rocket",
    "ok_hand",
    "cry",
    "heart_eyes",
    "slightly_smiling_face",
    "hourglass_flowing_sand",
    "writing_hand",
    "handshake",
    "sunglasses",
    "thumbsup",
}


@dataclass
class Fault:
    channel: str = field(default="", kw_only=True)  # only calls about this channel ("" for any)


@dataclass
class Error(Fault):
    status: int = 200
    error: str = "internal_error"
    retry_after: int | None = None


@dataclass
class Drop(Fault):
    """The connection closes without an answer."""


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    token: str
    outcome: str
    at: float


@dataclass
class Envelope:
    envelope_id: str
    kind: str
    payload: dict[str, Any]
    retry_attempt: int = 0
    sent_at: float = 0.0
    acked: bool = False

    def wire(self) -> str:
        body: dict[str, Any] = {
            "envelope_id": self.envelope_id,
            "payload": self.payload,
            "type": self.kind,
            "accepts_response_payload": False,
        }
        if self.kind == "events_api":
            body |= {"retry_attempt": self.retry_attempt, "retry_reason": "timeout" if self.retry_attempt else ""}
        return json.dumps(body)


@dataclass
class Ack:
    envelope_id: str
    after: float  # seconds from (re)delivery to the ack
    late: bool


@dataclass
class Channel:
    id: str
    name: str
    kind: str  # channel, im
    members: set[str] = field(default_factory=set)
    messages: list[dict[str, Any]] = field(default_factory=list)


class FakeSlack(ThreadedServer):
    def __init__(self, *, ack_window: float = ACK_WINDOW) -> None:
        self.ack_window = ack_window
        self.bot_user = BOT_USER
        self.bot_token = BOT_TOKEN
        self.app_token = APP_TOKEN
        self.token = f"{BOT_TOKEN} {APP_TOKEN}"  # as keys/slack holds them
        self.users: dict[str, dict[str, Any]] = {BOT_USER: {"id": BOT_USER, "name": "clawden", "is_bot": True}}
        self.channels: dict[str, Channel] = {}
        self.calls: list[Call] = []
        self.acks: list[Ack] = []
        self.connections = 0
        self.files: dict[str, dict[str, Any]] = {}
        self.uploaded: dict[str, bytes] = {}
        self.trickle: Trickle | None = None  # set: file downloads go at the test's pace
        self._ids = itertools.count(1)
        self._ts = itertools.count(1)
        self._faults: dict[str, list[Fault]] = {}
        self._tickets: set[str] = set()
        self._pending: dict[str, Envelope] = {}  # sent or waiting, not acknowledged
        self._queue: list[Envelope] = []
        self._ws: web.WebSocketResponse | None = None
        self._duplicate = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._sends: set[asyncio.Future[None]] = set()
        self.url = ""

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeSlack:
        self._loop = asyncio.get_running_loop()
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files/{file_id}/{name}", self._download)
        app.router.add_get("/socket/{ticket}", self._socket)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.base = f"http://{bound[0]}:{bound[1]}"
        self.url = self.base + "/api/"
        self._redeliverer = asyncio.create_task(self._redeliver_forever())
        return self

    async def stop(self) -> None:
        if self.trickle is not None:
            self.trickle.finish()
        self._redeliverer.cancel()
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> FakeSlack:
        self._serve_in_thread(host, port, "fake-slack")
        return self

    def _soon(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        if threading.current_thread() is self._thread or self._thread is None:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    # --- the world ----------------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def user(self, name: str) -> str:
        uid = self._id("U")
        self.users[uid] = {"id": uid, "name": name}
        return uid

    def channel(self, name: str, *members: str, bot: bool = True) -> str:
        cid = self._id("C")
        self.channels[cid] = Channel(cid, name, "channel", set(members) | ({BOT_USER} if bot else set()))
        return cid

    def dm(self, user: str) -> str:
        for c in self.channels.values():
            if c.kind == "im" and c.members == {user, BOT_USER}:
                return c.id
        cid = self._id("D")
        self.channels[cid] = Channel(cid, "", "im", {user, BOT_USER})
        return cid

    def say(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        thread_ts: str | None = None,
        files: list[bytes] | None = None,
        names: list[str] | None = None,
    ) -> str:
        """A person posts; returns the message's ts. The bot gets `message` (and `app_mention` when named)."""
        with self._lock:
            c = self.channels[channel]
            ts = self._next_ts()
            msg: dict[str, Any] = {
                "type": "message",
                "user": user,
                "text": text,
                "ts": ts,
                "team": TEAM,
                "client_msg_id": secrets.token_hex(8),
            }
            if thread_ts:
                msg["thread_ts"] = thread_ts
            if files:
                msg["files"] = [
                    self._file(data, (names or [])[i] if names and i < len(names) else f"file{i}.txt", user)
                    for i, data in enumerate(files)
                ]
                msg["subtype"] = "file_share"
            c.messages.append(msg)
            event = dict(msg, channel=channel, event_ts=ts, channel_type=c.kind)
            envelopes = [self._event_envelope(event)]
            if f"<@{BOT_USER}>" in text and c.kind != "im":
                mention = {k: v for k, v in event.items() if k not in ("channel_type", "subtype", "client_msg_id")}
                envelopes.append(self._event_envelope(dict(mention, type="app_mention")))
        for envelope in envelopes:
            self._soon(self._enqueue, envelope)
        return ts

    def edit(self, channel: str, ts: str, text: str) -> str:
        """The author edits their message; returns the edit's ts. Slack sends a `message` event with subtype
        `message_changed`: the whole message as it now reads (with `edited: {user, ts}`) and
        `previous_message`, under a ts of its own (api.slack.com/events/message/message_changed)."""
        with self._lock:
            c = self.channels[channel]
            i, before = next((i, m) for i, m in enumerate(c.messages) if m["ts"] == ts)
            edit_ts = self._next_ts()
            after = dict(before, text=text, edited={"user": before["user"], "ts": edit_ts})
            c.messages[i] = after
            envelope = self._event_envelope(self._changed(channel, c.kind, edit_ts, after, before))
        self._soon(self._enqueue, envelope)
        return edit_ts

    def unfurl(self, channel: str, ts: str) -> None:
        """Slack adds a link preview to a message: also `message_changed`, but nobody edited it (no
        `edited` in the message, the text as it was: api.slack.com/events/message/message_changed)."""
        with self._lock:
            c = self.channels[channel]
            i, before = next((i, m) for i, m in enumerate(c.messages) if m["ts"] == ts)
            after = dict(before, attachments=[{"from_url": "https://example.invalid/", "title": "A page"}])
            c.messages[i] = after
            envelope = self._event_envelope(self._changed(channel, c.kind, self._next_ts(), after, before))
        self._soon(self._enqueue, envelope)

    def _changed(
        self, channel: str, kind: str, ts: str, after: dict[str, Any], before: dict[str, Any]
    ) -> dict[str, Any]:
        # The shape of api.slack.com/events/message/message_changed: hidden, the channel, its own ts.
        inner = {k: v for k, v in after.items() if k != "client_msg_id"}
        return {
            "type": "message",
            "subtype": "message_changed",
            "hidden": True,
            "channel": channel,
            "channel_type": kind,
            "ts": ts,
            "event_ts": ts,
            "message": inner,
            "previous_message": {k: v for k, v in before.items() if k != "client_msg_id"},
        }

    def delete(self, channel: str, ts: str) -> None:
        """Someone deletes a message: a `message` event with subtype `message_deleted`, naming it by
        `deleted_ts` with `previous_message`, and not saying who deleted it
        (api.slack.com/events/message/message_deleted)."""
        with self._lock:
            c = self.channels[channel]
            before = next(m for m in c.messages if m["ts"] == ts)
            c.messages.remove(before)
            now = self._next_ts()
            event = {
                "type": "message",
                "subtype": "message_deleted",
                "hidden": True,
                "channel": channel,
                "channel_type": c.kind,
                "ts": now,
                "event_ts": now,
                "deleted_ts": ts,
                "previous_message": {k: v for k, v in before.items() if k != "client_msg_id"},
            }
            envelope = self._event_envelope(event)
        self._soon(self._enqueue, envelope)

    def _file(self, data: bytes, name: str, user: str) -> dict[str, Any]:
        fid = self._id("F")
        self.uploaded[fid] = data
        info = {
            "id": fid,
            "name": name,
            "title": name,
            "mimetype": "text/plain",
            "size": len(data),
            "user": user,
            "url_private": f"{self.base}/files/{fid}/{name}",
            "url_private_download": f"{self.base}/files/{fid}/{name}",
        }
        self.files[fid] = info
        return info

    def click(self, channel: str, ts: str, user: str, button: int = 0) -> None:
        """A person presses button number `button` (in reading order) of the bot's message `ts`."""
        msg = self._message(channel, ts)
        assert msg is not None, f"no message {ts} in {channel}"
        buttons = [e for b in msg.get("blocks") or [] if b.get("type") == "actions" for e in b["elements"]]
        pressed = buttons[button]
        payload = {
            "type": "block_actions",
            "user": {
                "id": user,
                "username": self.users[user]["name"],
                "name": self.users[user]["name"],
                "team_id": TEAM,
            },
            "api_app_id": APP_ID,
            "token": "verification",
            "trigger_id": secrets.token_hex(8),
            "team": {"id": TEAM},
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "channel": {"id": channel, "name": self.channels[channel].name},
            "message": msg,
            "response_url": f"{self.base}/respond/{secrets.token_hex(4)}",
            "actions": [
                {
                    "action_id": pressed["action_id"],
                    "block_id": "x",
                    "text": pressed["text"],
                    "value": pressed.get("value", ""),
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        self._soon(self._enqueue, Envelope(secrets.token_hex(16), "interactive", payload))

    def _event_envelope(self, event: dict[str, Any]) -> Envelope:
        payload = {
            "token": "verification",
            "team_id": TEAM,
            "api_app_id": APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": self._id("Ev"),
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
            "is_ext_shared_channel": False,
        }
        return Envelope(secrets.token_hex(16), "events_api", payload)

    def _message(self, channel: str, ts: str) -> dict[str, Any] | None:
        c = self.channels.get(channel)
        return next((m for m in c.messages if m["ts"] == ts), None) if c else None

    # --- faults and what was recorded ---------------------------------------------------------------

    def inject(self, method: str, *faults: Fault) -> None:
        """Faults for the next calls of a Web API method, or of "download" (a file's private URL), in turn."""
        with self._lock:
            self._faults.setdefault(method, []).extend(faults)

    def heal(self, method: str) -> None:
        """Drop the faults still waiting for a method: its next call is answered as usual."""
        with self._lock:
            self._faults.pop(method, None)

    def duplicate(self, count: int) -> None:
        """The next `count` envelopes go out twice (a second envelope id, `retry_attempt` 1)."""
        self._duplicate += count

    def drop_socket(self) -> None:
        """The app's WebSocket dies without a close frame (what is not acknowledged comes again later)."""

        def drop() -> None:
            if self._ws is not None and self._ws._req is not None and self._ws._req.transport is not None:
                self._ws._req.transport.close()

        self._soon(drop)

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack asks the app to connect anew (a `disconnect` envelope), then closes the socket a moment later."""

        async def send() -> None:
            ws = self._ws
            if ws is not None and not ws.closed:
                await ws.send_str(json.dumps({"type": "disconnect", "reason": reason, "debug_info": {"host": "fake"}}))

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(send(), self._loop).result(5)

    def bot_messages(self, channel: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.channels[channel].messages if m.get("user") == BOT_USER]

    def texts(self, channel: str, thread_ts: str | None = None) -> list[str]:
        return [m["text"] for m in self.bot_messages(channel) if m.get("thread_ts") == thread_ts]

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    @property
    def unacked(self) -> int:
        return len(self._pending)

    @property
    def late_acks(self) -> list[Ack]:
        return [a for a in self.acks if a.late]

    # --- Socket Mode --------------------------------------------------------------------------------

    def _enqueue(self, envelope: Envelope) -> None:
        self._pending[envelope.envelope_id] = envelope
        self._queue.append(envelope)
        if self._duplicate > 0 and envelope.kind == "events_api":
            self._duplicate -= 1
            twin = Envelope(secrets.token_hex(16), envelope.kind, envelope.payload, retry_attempt=1)
            self._pending[twin.envelope_id] = twin
            self._queue.append(twin)
        self._flush()

    def _flush(self) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        queue, self._queue = self._queue, []
        for envelope in queue:
            envelope.sent_at = time.monotonic()
            task = asyncio.ensure_future(ws.send_str(envelope.wire()))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _redeliver_forever(self) -> None:
        """An events_api envelope unacknowledged after the window comes again (up to MAX_RETRIES times)."""
        while True:
            await asyncio.sleep(self.ack_window / 4)  # the fake's own clock for Slack's retry timer
            now = time.monotonic()
            for envelope in list(self._pending.values()):
                if envelope.sent_at and now - envelope.sent_at > self.ack_window:
                    del self._pending[envelope.envelope_id]
                    if envelope.kind == "events_api" and envelope.retry_attempt < MAX_RETRIES:
                        again = Envelope(
                            secrets.token_hex(16),
                            envelope.kind,
                            envelope.payload,
                            retry_attempt=envelope.retry_attempt + 1,
                        )
                        self._pending[again.envelope_id] = again
                        self._queue.append(again)
            self._flush()

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.match_info["ticket"]
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid or used socket URL")
        self._tickets.discard(ticket)  # one connection per URL
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        old, self._ws = self._ws, ws
        if old is not None and not old.closed:
            await old.close()
        self.connections += 1
        # What was sent on a socket that died unacknowledged is sent again on this one.
        for envelope in self._pending.values():
            if envelope not in self._queue:
                self._queue.append(envelope)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                    "connection_info": {"app_id": APP_ID},
                }
            )
        )
        self._flush()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                envelope_id = json.loads(msg.data).get("envelope_id", "")
                sent = self._pending.pop(envelope_id, None)
                if sent is not None:
                    after = time.monotonic() - sent.sent_at
                    self.acks.append(Ack(envelope_id, after, after > self.ack_window))
        finally:
            self._sockets.discard(ws)
            if self._ws is ws:
                self._ws = None
        return ws

    # --- the Web API --------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = await self._params(request, method)
        if isinstance(params, str):
            return self._answer(method, {}, "", {"ok": False, "error": params})
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else str(params.get("token", ""))
        fault = self._next_fault(method, params)
        if isinstance(fault, Drop):
            self._record(method, params, token, "dropped")
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if isinstance(fault, Error):
            self._record(method, params, token, f"fault {fault.status} {fault.error}")
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            if fault.status >= 500:
                return web.Response(status=fault.status, text="upstream failure", headers=headers)
            return web.json_response({"ok": False, "error": fault.error}, status=fault.status, headers=headers)
        if not token:
            return self._answer(method, params, token, {"ok": False, "error": "not_authed"})
        if token not in (BOT_TOKEN, APP_TOKEN):
            return self._answer(method, params, token, {"ok": False, "error": "invalid_auth"})
        wants_app = method == "apps.connections.open"
        if (token == APP_TOKEN) != wants_app:
            return self._answer(method, params, token, {"ok": False, "error": "not_allowed_token_type"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return self._answer(method, params, token, {"ok": False, "error": "unknown_method"})
        with self._lock:
            try:
                result = handler(params)
            except _Refused as exc:
                result = {"ok": False, "error": exc.code}
        return self._answer(method, params, token, result)

    async def _params(self, request: web.Request, method: str) -> dict[str, Any] | str:
        ctype = request.content_type
        if ctype == "application/json":
            if method not in JSON_METHODS:
                return "invalid_form_data"  # this method reads form fields only
            try:
                body = await request.json()
            except ValueError:
                return "invalid_json"
            return body if isinstance(body, dict) else "invalid_json"
        if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            return {k: str(v) for k, v in form.items()} | dict(request.query)
        return dict(request.query)

    def _answer(self, method: str, params: dict[str, Any], token: str, body: dict[str, Any]) -> web.Response:
        self._record(method, params, token, "ok" if body.get("ok") else str(body.get("error")))
        return web.json_response(body)

    def _record(self, method: str, params: dict[str, Any], token: str, outcome: str) -> None:
        with self._lock:
            self.calls.append(Call(method, params, token, outcome, time.monotonic()))

    def _next_fault(self, method: str, params: dict[str, Any]) -> Fault | None:
        with self._lock:
            faults = self._faults.get(method) or []
            channel = str(params.get("channel") or params.get("channel_id") or "")
            for i, fault in enumerate(faults):
                if not fault.channel or fault.channel == channel:
                    return faults.pop(i)
        return None

    def _chan(self, params: dict[str, Any], key: str = "channel") -> Channel:
        c = self.channels.get(str(params.get(key) or ""))
        if c is None:
            raise _Refused("channel_not_found")
        if BOT_USER not in c.members:
            raise _Refused("not_in_channel")
        return c

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.test/",
            "team": "Clawden Test",
            "user": "clawden",
            "team_id": TEAM,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = secrets.token_hex(8)
        self._tickets.add(ticket)
        return {"ok": True, "url": f"{self.base.replace('http', 'ws', 1)}/socket/{ticket}"}

    def _m_conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        user = str(params.get("users") or "")
        if user not in self.users:
            raise _Refused("user_not_found")
        return {"ok": True, "channel": {"id": self.dm(user)}}

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self._chan(params)
        text = str(params.get("text") or "")
        blocks = params.get("blocks") or []
        if not text and not blocks:
            raise _Refused("no_text")
        if len(text) > MAX_TEXT:
            raise _Refused("msg_too_long")
        _check_blocks(blocks)
        ts = self._next_ts()
        msg: dict[str, Any] = {
            "type": "message",
            "user": BOT_USER,
            "bot_id": BOT_ID,
            "text": text,
            "ts": ts,
            "team": TEAM,
        }
        if blocks:
            msg["blocks"] = blocks
        if params.get("thread_ts"):
            if self._message(c.id, str(params["thread_ts"])) is None:
                raise _Refused("thread_not_found")
            msg["thread_ts"] = str(params["thread_ts"])
        c.messages.append(msg)
        return {"ok": True, "channel": c.id, "ts": ts, "message": msg}

    def _own(self, params: dict[str, Any], refusal: str) -> tuple[Channel, dict[str, Any]]:
        c = self._chan(params)
        msg = self._message(c.id, str(params.get("ts") or params.get("timestamp") or ""))
        if msg is None:
            raise _Refused("message_not_found")
        if msg.get("user") != BOT_USER and refusal:
            raise _Refused(refusal)
        return c, msg

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        c, msg = self._own(params, "cant_update_message")
        text = str(params.get("text") or "")
        if len(text) > MAX_TEXT:
            raise _Refused("msg_too_long")
        blocks = params.get("blocks")
        _check_blocks(blocks or [])
        msg["text"] = text
        if blocks is not None:
            msg["blocks"] = blocks
        msg.setdefault("edits", 0)
        msg["edits"] += 1
        return {"ok": True, "channel": c.id, "ts": msg["ts"], "text": text}

    def _m_chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        c, msg = self._own(params, "cant_delete_message")
        c.messages.remove(msg)
        return {"ok": True, "channel": c.id, "ts": msg["ts"]}

    def _m_reactions_add(self, params: dict[str, Any]) -> dict[str, Any]:
        _, msg = self._own(params, "")
        name = str(params.get("name") or "")
        if name not in EMOJI:
            raise _Refused("invalid_name")
        mine = msg.setdefault("reactions", [])
        if name in mine:
            raise _Refused("already_reacted")
        mine.append(name)
        return {"ok": True}

    def _m_files_getUploadURLExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("filename") or not str(params.get("length") or "").isdigit():
            raise _Refused("invalid_arguments")
        fid = self._id("F")
        self.files[fid] = {
            "id": fid,
            "name": str(params["filename"]),
            "length": int(params["length"]),
            "uploaded": False,
        }
        return {"ok": True, "upload_url": f"{self.base}/upload/{fid}", "file_id": fid}

    def _m_files_completeUploadExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            files = json.loads(str(params.get("files") or ""))
        except ValueError:
            raise _Refused("invalid_arguments") from None
        shared = []
        for f in files:
            info = self.files.get(str(f.get("id")))
            if info is None or not info.get("uploaded"):
                raise _Refused("file_not_found")
            shared.append({"id": info["id"], "name": info["name"], "title": f.get("title") or info["name"]})
        if params.get("channel_id"):
            c = self._chan(params, "channel_id")
            msg: dict[str, Any] = {
                "type": "message",
                "user": BOT_USER,
                "bot_id": BOT_ID,
                "text": "",
                "ts": self._next_ts(),
                "files": shared,
            }
            if params.get("thread_ts"):
                msg["thread_ts"] = str(params["thread_ts"])
            c.messages.append(msg)
        return {"ok": True, "files": shared}

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        fid = request.match_info["file_id"]
        data = await request.read()
        with self._lock:
            info = self.files.get(fid)
            if info is None or info.get("uploaded"):
                return web.Response(status=404, text="not found")
            if len(data) != info["length"]:
                return web.Response(status=400, text="length does not match")
            info["uploaded"] = True
            self.uploaded[fid] = data
        return web.Response(status=200, text=f"OK - {len(data)}", content_type="text/plain")

    async def _download(self, request: web.Request) -> web.StreamResponse:
        fid = request.match_info["file_id"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        fault = self._next_fault("download", {})
        if isinstance(fault, Drop):
            self._record("download", {"file": fid}, token, "dropped")
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if isinstance(fault, Error):
            self._record("download", {"file": fid}, token, f"fault {fault.status}")
            return web.Response(status=fault.status, text="upstream failure")
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.Response(status=200, text="<html>Sign in to Slack</html>", content_type="text/html")
        if fid not in self.uploaded:
            return web.Response(status=404, text="not found")
        self._record("download", {"file": fid}, token, "ok")
        if self.trickle is not None:
            return await self.trickle.serve(request, self.uploaded[fid])
        return web.Response(body=self.uploaded[fid], content_type="application/octet-stream")


class _Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _check_blocks(blocks: Any) -> None:
    if not isinstance(blocks, list):
        raise _Refused("invalid_blocks")
    action_ids: set[str] = set()
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "section":
            if len(str((block.get("text") or {}).get("text") or "")) > 3000:
                raise _Refused("invalid_blocks")
        elif kind == "actions":
            elements = block.get("elements") or []
            if not elements or len(elements) > 25:
                raise _Refused("invalid_blocks")
            for e in elements:
                label = str((e.get("text") or {}).get("text") or "")
                if e.get("type") != "button" or not label or len(label) > 75 or len(str(e.get("value", ""))) > 2000:
                    raise _Refused("invalid_blocks")
                if e.get("action_id") in action_ids:
                    raise _Refused("invalid_blocks")
                action_ids.add(str(e.get("action_id")))
        else:
            raise _Refused("invalid_blocks")


if __name__ == "__main__":
    serve_from_command_line(FakeSlack, __doc__ or "", lambda f: f"{f.url}\ntoken: {f.token}")
