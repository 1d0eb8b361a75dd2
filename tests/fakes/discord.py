"""A fake Discord on loopback for tests: the Gateway over a real WebSocket and the REST API (v10) over HTTP (aiohttp),
in Discord's own JSON shapes, recording what it was sent, with faults to inject.

The world: one guild, the bot (its user and token), people, text channels, threads and DM channels, each with its
messages. People act through `say`, `thread` and `click`; the fake turns that into Gateway dispatches, as Discord
does. It is strict where a bridge can go wrong, each rule citing the Discord developer docs page it comes from:

- "Gateway": Hello (op 10) with `heartbeat_interval` opens a connection; the URL carries `v=10&encoding=json`; the
  first thing sent must be Identify (op 2, the token, `intents`, `properties`) or Resume (op 6, `token`, `session_id`,
  `seq`), anything else closes with 4003 (not authenticated); a second Identify closes with 4005; a wrong token with
  4004; a privileged intent not switched on in the developer portal with 4014. Ready carries `session_id` and
  `resume_gateway_url`. Heartbeat (op 1) is answered with Heartbeat ACK (op 11). Every dispatch (op 0) carries the
  next `s`; a Resume replays what came after its `seq` and ends with RESUMED. Invalid Session (op 9, `d` false): the
  session is gone, identify anew. Reconnect (op 7). A client whose heartbeats stop loses its session (close 4009,
  "Opcodes and Status Codes": session timed out).
- "Gateway": Message Content Intent: without intent 1<<15 a guild message's `content`, `attachments` and
  `components` are empty, unless it mentions the bot (DMs always carry them).
- "Rate Limits": every answer carries `X-RateLimit-Limit`, `-Remaining`, `-Reset`, `-Reset-After`, `-Bucket`; a call
  over its bucket gets 429 with a JSON `retry_after` (seconds, float), `global`, and `Retry-After`.
- "Message Resource": Create Message: `content` at most 2000 characters (50035 Invalid Form Body), not empty
  (50006), `nonce` with `enforce_nonce` returns the first message for a repeat; multipart with `payload_json` and
  `files[n]`; Edit Message only for the bot's own (50005); Unknown Channel 10003, Unknown Message 10008; Create
  Reaction takes a Unicode emoji or `name:id` (10014 Unknown Emoji).
- "Message Components": up to 5 action rows of up to 5 buttons, `custom_id` at most 100 characters, `label` 80.
- "Receiving and Responding" (Interactions): the callback must come within 3 seconds of the interaction, once
  (10062 Unknown interaction after, 40060 already acknowledged).
- "User Resource": Get Current User; Create DM (`recipient_id`) returns the DM channel (type 1).

    fake = FakeDiscord(); fake.start_in_thread()
    ada = fake.user("ada"); general = fake.channel("general")
    fake.say(general, ada, f"<@{fake.bot_id}> hello"); fake.inject("create_message", Error(429, retry_after=2))
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

from tests.fakes.threaded import ThreadedServer, serve_from_command_line
from tests.fakes.trickle import Trickle

TOKEN = "MTAxFakeDiscordBotToken.ForTests.Only0000000000"
BOT_ID = "1000000000000000001"
GUILD = "1000000000000000002"
MESSAGE_CONTENT = 1 << 15
CALLBACK_WINDOW = 3.0
MAX_TEXT = 2000


@dataclass
class Fault:
    channel: str = field(default="", kw_only=True)  # only calls about this channel ("" for any)


@dataclass
class Error(Fault):
    status: int = 500
    code: int = 0
    retry_after: float | None = None
    is_global: bool = False


@dataclass
class Drop(Fault):
    """The connection closes without an answer."""


@dataclass
class Call:
    name: str
    method: str
    path: str
    body: Any
    outcome: int
    at: float


@dataclass
class Channel:
    id: str
    name: str
    type: int  # 0 guild text, 1 DM, 11 public thread
    parent_id: str | None = None
    recipient: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type, "name": self.name}
        if self.type != 1:
            out["guild_id"] = GUILD
        if self.parent_id:
            out["parent_id"] = self.parent_id
        return out


@dataclass
class GatewaySession:
    id: str
    intents: int
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)  # every dispatch, for resumes
    resumable: bool = True


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeDiscord(ThreadedServer):
    def __init__(
        self, *, heartbeat_ms: int = 41250, bucket: tuple[int, float] = (5, 5.0), message_content: bool = True
    ) -> None:
        self.heartbeat_ms = heartbeat_ms
        self.message_content = message_content  # the privileged intent switched on in the developer portal
        self.bucket = bucket
        self.token = TOKEN
        self.bot_id = BOT_ID
        self.users: dict[str, dict[str, Any]] = {
            BOT_ID: {"id": BOT_ID, "username": "clawden", "bot": True, "global_name": None, "discriminator": "0"}
        }
        self.channels: dict[str, Channel] = {}
        self.calls: list[Call] = []
        self.connections = 0
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.heartbeats: list[Any] = []
        self.timeouts = 0  # sessions ended for missed heartbeats (close 4009)
        self._last_beat = 0.0
        self.callbacks: list[tuple[str, int, float]] = []  # interaction id, type, seconds after it was sent
        self.sent_dispatches: list[int] = []  # every seq sent, over every connection
        self.session: GatewaySession | None = None
        self.files: dict[str, bytes] = {}
        self.cdn_calls: list[int] = []  # the status of each attachment download, in turn
        self.trickle: Trickle | None = None  # set: attachment downloads go at the test's pace
        self._ids = itertools.count(1)
        self._faults: dict[str, list[Fault]] = {}
        self._interactions: dict[str, tuple[str, float, bool]] = {}  # id -> token, sent at, acknowledged
        self._nonces: dict[tuple[str, str], dict[str, Any]] = {}
        self._buckets: dict[str, tuple[int, float]] = {}
        self._ws: web.WebSocketResponse | None = None
        self._outq: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._identified = False
        self._duplicate = 0
        self._ack_heartbeats = True
        self._refuse_resume = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.base = ""
        self.url = ""
        self.gateway_url = ""

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeDiscord:
        self._loop = asyncio.get_running_loop()
        app = web.Application()
        for path in ("/gateway", "/gateway/", "/resume", "/resume/"):
            app.router.add_get(path, self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._api)
        app.router.add_get("/attachments/{channel}/{id}/{name}", self._cdn)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0]
        self.base = f"http://{bound[0]}:{bound[1]}"
        self.url = self.base + "/api/v10"
        self.gateway_url = f"ws://{bound[0]}:{bound[1]}/gateway"
        return self

    async def stop(self) -> None:
        if self.trickle is not None:
            self.trickle.finish()
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> FakeDiscord:
        self._serve_in_thread(host, port, "fake-discord")
        return self

    def _soon(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        if threading.current_thread() is self._thread or self._thread is None:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    # --- the world ----------------------------------------------------------------------------------

    def _snowflake(self) -> str:
        # Snowflakes grow with time (Discord docs, "Reference": Snowflakes); ms since the Discord epoch, shifted 22.
        return str(((int(time.time() * 1000) - 1420070400000) << 22) + next(self._ids))

    def user(self, name: str) -> str:
        uid = self._snowflake()
        self.users[uid] = {"id": uid, "username": name, "global_name": name.title(), "discriminator": "0"}
        return uid

    def channel(self, name: str) -> str:
        cid = self._snowflake()
        self.channels[cid] = Channel(cid, name, 0)
        return cid

    def dm(self, user: str) -> str:
        for c in self.channels.values():
            if c.type == 1 and c.recipient == user:
                return c.id
        cid = self._snowflake()
        self.channels[cid] = Channel(cid, "", 1, recipient=user)
        return cid

    def thread(self, parent: str, name: str, starter: str) -> str:
        """A person starts a public thread in `parent` (THREAD_CREATE, GUILDS intent)."""
        cid = self._snowflake()
        with self._lock:
            self.channels[cid] = Channel(cid, name, 11, parent_id=parent)
            data = dict(self.channels[cid].wire(), owner_id=starter, newly_created=True)
        self._soon(self._dispatch, "THREAD_CREATE", data)
        return cid

    def say(
        self, channel: str, user: str, text: str, *, reply_to: str | None = None, files: dict[str, bytes] | None = None
    ) -> str:
        """A person posts; returns the message id. `<@id>` in the text mentions that user."""
        with self._lock:
            c = self.channels[channel]
            msg = self._message(c, user, text)
            msg["mentions"] = [self.users[u] for u in self.users if f"<@{u}>" in text]
            if reply_to:
                ref = next(m for m in c.messages if m["id"] == reply_to)
                msg["type"] = 19
                msg["message_reference"] = {"message_id": reply_to, "channel_id": channel, "type": 0}
                msg["referenced_message"] = ref
            for name, content in (files or {}).items():
                aid = self._snowflake()
                self.files[aid] = content
                msg["attachments"].append(
                    {
                        "id": aid,
                        "filename": name,
                        "size": len(content),
                        "content_type": "text/plain",
                        "url": f"{self.base}/attachments/{channel}/{aid}/{name}",
                    }
                )
            c.messages.append(msg)
            data: dict[str, Any] = dict(msg)
            if c.type != 1:
                data |= {"guild_id": GUILD, "member": {"roles": [], "joined_at": "2026-01-01T00:00:00+00:00"}}
        self._soon(self._dispatch, "MESSAGE_CREATE", data)
        return str(msg["id"])

    def edit(self, channel: str, message: str, text: str) -> str:
        """The author edits their message: MESSAGE_UPDATE with the message as it now reads and its
        `edited_timestamp` set (Discord docs, "Gateway Events": Message Update); returns that timestamp."""
        with self._lock:
            c = self.channels[channel]
            i, before = next((i, m) for i, m in enumerate(c.messages) if m["id"] == message)
            stamp = datetime.now(UTC).isoformat(timespec="microseconds")
            after = dict(before, content=text, edited_timestamp=stamp)
            after["mentions"] = [self.users[u] for u in self.users if f"<@{u}>" in text]
            c.messages[i] = after
            data = dict(after) | ({"guild_id": GUILD} if c.type != 1 else {})
        self._soon(self._dispatch, "MESSAGE_UPDATE", data)
        return stamp

    def embed(self, channel: str, message: str) -> None:
        """Discord resolves a link preview: a partial MESSAGE_UPDATE, only the id, the channel and the embeds
        ("message updates may contain only a subset of the full message object payload (but will always
        contain an ID and channel_id)": Discord docs, "Gateway Events": Message Update). No one edited it."""
        with self._lock:
            c = self.channels[channel]
            msg = next(m for m in c.messages if m["id"] == message)
            msg["embeds"] = [{"type": "link", "url": "https://example.invalid/", "title": "A page"}]
            data = {"id": message, "channel_id": channel, "embeds": msg["embeds"]}
            if c.type != 1:
                data["guild_id"] = GUILD
        self._soon(self._dispatch, "MESSAGE_UPDATE", data)

    def delete(self, channel: str, message: str) -> None:
        """A message is deleted: MESSAGE_DELETE carries only its id, the channel and the guild; not who
        deleted it nor who wrote it (Discord docs, "Gateway Events": Message Delete)."""
        with self._lock:
            c = self.channels[channel]
            c.messages = [m for m in c.messages if m["id"] != message]
            data = {"id": message, "channel_id": channel} | ({"guild_id": GUILD} if c.type != 1 else {})
        self._soon(self._dispatch, "MESSAGE_DELETE", data)

    def _message(self, c: Channel, author: str, text: str) -> dict[str, Any]:
        return {
            "id": self._snowflake(),
            "channel_id": c.id,
            "author": self.users[author],
            "content": text,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "components": [],
        }

    def click(self, channel: str, message: str, user: str, button: int = 0) -> str:
        """A person presses button number `button` (reading order) of the bot's message; returns the interaction id."""
        with self._lock:
            c = self.channels[channel]
            msg = next(m for m in c.messages if m["id"] == message)
            pressed = [b for row in msg["components"] for b in row["components"]][button]
            iid, token = self._snowflake(), "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(24)
            data: dict[str, Any] = {
                "id": iid,
                "application_id": BOT_ID,
                "type": 3,
                "token": token,
                "version": 1,
                "channel_id": channel,
                "channel": c.wire(),
                "message": msg,
                "data": {"custom_id": pressed["custom_id"], "component_type": 2},
            }
            if c.type == 1:
                data["user"] = self.users[user]
            else:
                data |= {"guild_id": GUILD, "member": {"user": self.users[user], "roles": []}}
            self._interactions[iid] = (token, 0.0, False)
        self._soon(self._dispatch, "INTERACTION_CREATE", data)
        return iid

    # --- faults and what was recorded ---------------------------------------------------------------

    def inject(self, name: str, *faults: Fault) -> None:
        """Faults for the next calls of one REST route, by name: me, channel, history, create_message, edit_message,
        delete_message, reaction, typing, create_dm, callback; or "cdn" for the next attachment downloads."""
        with self._lock:
            self._faults.setdefault(name, []).extend(faults)

    def duplicate(self, count: int) -> None:
        """The next `count` dispatches go out twice (the same payload and seq)."""
        self._duplicate += count

    def drop_socket(self) -> None:
        """The Gateway connection dies without a close frame; the session can be resumed."""

        def drop() -> None:
            if self._ws is not None and self._ws._req is not None and self._ws._req.transport is not None:
                self._ws._req.transport.close()

        self._soon(drop)

    def ask_reconnect(self) -> None:
        """Reconnect (op 7): the client should resume on a new connection."""
        self._soon(self._send_later, {"op": 7, "d": None})

    def refuse_resumes(self, count: int = 1) -> None:
        """The next `count` resumes get Invalid Session (d false): the session is over."""
        self._refuse_resume += count

    def end_session(self) -> None:
        """The session ends on Discord's side and the connection drops: a resume gets Invalid Session, and what is said
        until the bot identifies again reaches no Gateway connection (only the REST history has it)."""
        with self._lock:
            self.session = None
        self.drop_socket()

    def time_out_session(self) -> None:
        """Discord ends the session as if its heartbeats had been missed: close code 4009, identify anew."""
        ws = self._ws
        if ws is not None:
            self.call(self._time_out(ws))

    def stop_acking_heartbeats(self) -> None:
        """Heartbeats go unanswered on this connection (a zombie): the client should reconnect and resume."""
        self._ack_heartbeats = False

    def bot_messages(self, channel: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.channels[channel].messages if m["author"]["id"] == BOT_ID]

    def texts(self, channel: str) -> list[str]:
        return [str(m["content"]) for m in self.bot_messages(channel)]

    def calls_to(self, name: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.name == name]

    # --- the Gateway --------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("v") != "10" or request.query.get("encoding") != "json":
            return web.json_response({"message": "the Gateway takes v=10&encoding=json", "code": 50035}, status=400)
        if self._ws is not None and not self._ws.closed:
            await self._ws.close(code=4000)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        self._identified = False
        self._ack_heartbeats = True
        self._last_beat = time.monotonic()
        self.connections += 1
        resume_path = request.path.startswith("/resume")
        # One writer per connection: dispatches leave in seq order.
        self._outq = asyncio.Queue()
        writer = asyncio.create_task(self._writer(ws, self._outq))
        watchdog = asyncio.create_task(self._watch_heartbeats(ws))
        self._outq.put_nowait({"op": 10, "d": {"heartbeat_interval": self.heartbeat_ms}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                await self._op(ws, json.loads(msg.data), resume_path)
        finally:
            writer.cancel()
            watchdog.cancel()
            if self._ws is ws:
                self._ws = None
        return ws

    async def _watch_heartbeats(self, ws: web.WebSocketResponse) -> None:
        """A client that stops heartbeating loses its session: closed with 4009 (session timed out), not resumable.
        Half an interval and two seconds of grace past the interval."""
        interval = self.heartbeat_ms / 1000
        while not ws.closed:
            await asyncio.sleep(min(interval / 4, 1.0))
            if time.monotonic() - self._last_beat > interval * 1.5 + 2.0:
                await self._time_out(ws)
                return

    async def _time_out(self, ws: web.WebSocketResponse) -> None:
        with self._lock:
            self.session = None
            self.timeouts += 1
        await ws.close(code=4009, message=b"Session timed out")

    async def _writer(self, ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while not ws.closed:
            event = await queue.get()
            if event.get("op") == 0:
                self.sent_dispatches.append(int(event["s"]))
            try:
                await ws.send_json(event)
            except ConnectionError:
                return

    async def _op(self, ws: web.WebSocketResponse, payload: dict[str, Any], resume_path: bool) -> None:
        op, d = payload.get("op"), payload.get("d") or {}
        if op == 1:
            self.heartbeats.append(payload.get("d"))
            self._last_beat = time.monotonic()
            if self._ack_heartbeats:
                self._outq.put_nowait({"op": 11, "d": None, "s": None, "t": None})
        elif op in (2, 6) and self._identified:
            await ws.close(code=4005, message=b"Already authenticated")
        elif op == 2:
            await self._identify(ws, d)
        elif op == 6:
            await self._resume(ws, d, resume_path)
        elif not self._identified:
            await ws.close(code=4003, message=b"Not authenticated")

    async def _identify(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        if d.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed")
            return
        if not isinstance(d.get("intents"), int) or not isinstance(d.get("properties"), dict):
            await ws.close(code=4002, message=b"Decode error")
            return
        if d["intents"] & MESSAGE_CONTENT and not self.message_content:
            await ws.close(code=4014, message=b"Disallowed intent(s)")
            return
        self.identifies.append(d)
        self._identified = True
        self.session = GatewaySession(secrets.token_hex(16), int(d["intents"]))
        host = self.gateway_url.rsplit("/", 1)[0]
        self._dispatch(
            "READY",
            {
                "v": 10,
                "user": self.users[BOT_ID],
                "guilds": [{"id": GUILD, "unavailable": True}],
                "session_id": self.session.id,
                "resume_gateway_url": host + "/resume",
                "application": {"id": BOT_ID, "flags": 0},
            },
        )
        with self._lock:
            guild = [c.wire() for c in self.channels.values() if c.type == 0]
            threads = [c.wire() for c in self.channels.values() if c.type == 11]
        self._dispatch(
            "GUILD_CREATE", {"id": GUILD, "name": "home", "channels": guild, "threads": threads, "unavailable": False}
        )

    async def _resume(self, ws: web.WebSocketResponse, d: dict[str, Any], resume_path: bool) -> None:
        self.resumes.append(dict(d, on_resume_url=resume_path))
        s = self.session
        if d.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed")
            return
        if self._refuse_resume > 0 and s is not None:
            self._refuse_resume -= 1
            s.resumable = False
        if s is None or not s.resumable or d.get("session_id") != s.id or not isinstance(d.get("seq"), int):
            self.session = None
            self._outq.put_nowait({"op": 9, "d": False, "s": None, "t": None})
            return
        self._identified = True
        for event in [e for e in s.events if e["s"] > d["seq"]]:
            self._outq.put_nowait(event)
        s.seq += 1
        event = {"op": 0, "t": "RESUMED", "s": s.seq, "d": {}}
        s.events.append(event)
        self._outq.put_nowait(event)

    def _dispatch(self, kind: str, data: dict[str, Any]) -> None:
        """A dispatch into the session (kept for resumes), sent now when a connection is identified. Events while no
        session exists are lost to the Gateway: only the REST history has them."""
        s = self.session
        if s is None:
            return
        if (
            # The Message Content intent governs creates and updates alike (Discord docs, "Gateway": Message
            # Content Intent).
            kind in ("MESSAGE_CREATE", "MESSAGE_UPDATE")
            and "content" in data
            and "guild_id" in data
            and not s.intents & MESSAGE_CONTENT
            and not any(u["id"] == BOT_ID for u in data.get("mentions", []))
        ):
            data = dict(data, content="", attachments=[], embeds=[], components=[])
        s.seq += 1
        event = {"op": 0, "t": kind, "s": s.seq, "d": data}
        s.events.append(event)
        if kind == "INTERACTION_CREATE":
            token, _, acked = self._interactions[data["id"]]
            self._interactions[data["id"]] = (token, time.monotonic(), acked)
        if self._ws is not None and self._identified:
            self._send_later(event)
            if self._duplicate > 0:
                self._duplicate -= 1
                self._send_later(event)

    def _send_later(self, event: dict[str, Any]) -> None:
        if self._ws is not None:
            self._outq.put_nowait(event)

    # --- the REST API -------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        parts = path.strip("/").split("/")
        name, route = _route(request.method, parts)
        body = await self._body(request)
        channel = parts[1] if parts[0] == "channels" and len(parts) > 1 else ""
        fault = self._next_fault(name, channel)
        if isinstance(fault, Drop):
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if name != "callback" and request.headers.get("Authorization") != f"Bot {self.token}":
            return self._answer(name, request, body, 401, {"message": "401: Unauthorized", "code": 0}, route)
        if isinstance(fault, Error):
            answer: dict[str, Any] = {"message": "injected", "code": fault.code}
            if fault.status == 429:
                answer = {
                    "message": "You are being rate limited.",
                    "retry_after": fault.retry_after or 1.0,
                    "global": fault.is_global,
                }
            return self._answer(name, request, body, fault.status, answer, route)
        if (limited := self._spend(route)) is not None:
            return self._answer(
                name,
                request,
                body,
                429,
                {"message": "You are being rate limited.", "retry_after": limited, "global": False},
                route,
            )
        try:
            status, answer = self._handle(name, parts, body, request)
        except ApiError as exc:
            status, answer = exc.status, {"message": exc.message, "code": exc.code}
        return self._answer(name, request, body, status, answer, route)

    async def _body(self, request: web.Request) -> Any:
        if request.content_type == "multipart/form-data":
            form: dict[str, Any] = {"files": {}}
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)
                if part.name == "payload_json":
                    form |= json.loads(await part.text())
                elif part.name and part.name.startswith("files["):
                    form["files"][part.filename] = bytes(await part.read())
            return form
        if request.can_read_body:
            return await request.json()
        return None

    def _answer(self, name: str, request: web.Request, body: Any, status: int, answer: Any, route: str) -> web.Response:
        with self._lock:
            self.calls.append(Call(name, request.method, request.path_qs, body, status, time.time()))
        remaining, reset = self._buckets.get(route, (self.bucket[0], time.time() + self.bucket[1]))
        headers = {
            "X-RateLimit-Limit": str(self.bucket[0]),
            "X-RateLimit-Remaining": str(max(remaining, 0)),
            "X-RateLimit-Reset": f"{reset:.3f}",
            "X-RateLimit-Reset-After": f"{max(reset - time.time(), 0):.3f}",
            "X-RateLimit-Bucket": route.encode().hex()[:16],
        }
        if status == 429:
            headers["Retry-After"] = str(int(answer["retry_after"] + 0.999))
            headers["X-RateLimit-Scope"] = "global" if answer.get("global") else "user"
            if answer.get("global"):
                headers["X-RateLimit-Global"] = "true"
        if status == 204:
            return web.Response(status=204, headers=headers)
        return web.json_response(answer, status=status, headers=headers)

    def _spend(self, route: str) -> float | None:
        """One call from the route's bucket; the seconds until its reset when it is spent."""
        now = time.time()
        remaining, reset = self._buckets.get(route, (self.bucket[0], now + self.bucket[1]))
        if reset <= now:
            remaining, reset = self.bucket[0], now + self.bucket[1]
        if remaining <= 0:
            return round(reset - now, 3)
        self._buckets[route] = (remaining - 1, reset)
        return None

    def _next_fault(self, name: str, channel: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(name) or []
            for i, fault in enumerate(queue):
                if not fault.channel or fault.channel == channel:
                    return queue.pop(i)
        return None

    def _chan(self, cid: str) -> Channel:
        if cid not in self.channels:
            raise ApiError(404, 10003, "Unknown Channel")
        return self.channels[cid]

    def _own(self, cid: str, mid: str) -> dict[str, Any]:
        msg = next((m for m in self._chan(cid).messages if m["id"] == mid), None)
        if msg is None:
            raise ApiError(404, 10008, "Unknown Message")
        if msg["author"]["id"] != BOT_ID:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        return msg

    def _handle(self, name: str, parts: list[str], body: Any, request: web.Request) -> tuple[int, Any]:
        with self._lock:
            if name == "me":
                return 200, self.users[BOT_ID]
            if name == "channel":
                return 200, self._chan(parts[1]).wire()
            if name == "history":
                return 200, self._history(parts[1], request)
            if name == "create_message":
                return 200, self._create(parts[1], body)
            if name == "edit_message":
                return 200, self._edit(parts[1], parts[3], body)
            if name == "delete_message":
                self._chan(parts[1]).messages.remove(self._own(parts[1], parts[3]))
                return 204, None
            if name == "reaction":
                return self._react(parts[1], parts[3], parts[5])
            if name == "typing":
                self._chan(parts[1])
                return 204, None
            if name == "create_dm":
                recipient = str((body or {}).get("recipient_id"))
                if recipient not in self.users:
                    raise ApiError(400, 50033, "Invalid Recipient(s)")
                return 200, dict(self.channels[self.dm(recipient)].wire(), recipients=[self.users[recipient]])
            if name == "callback":
                return self._callback(parts[1], parts[2], body)
        raise ApiError(404, 0, "404: Not Found")

    def _history(self, cid: str, request: web.Request) -> list[dict[str, Any]]:
        limit = int(request.query.get("limit", "50"))
        if not 1 <= limit <= 100:
            raise ApiError(400, 50035, "Invalid Form Body")
        after = int(request.query.get("after", "0"))
        newer = [m for m in self._chan(cid).messages if int(m["id"]) > after]
        return list(reversed(newer[:limit]))  # the oldest `limit` after `after`, newest first

    def _create(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        c = self._chan(cid)
        text = str(body.get("content") or "")
        if len(text) > MAX_TEXT:
            raise ApiError(400, 50035, "Invalid Form Body (content: Must be 2000 or fewer in length.)")
        _check_components(body.get("components") or [])
        files = body.get("files") or {}
        if not text and not files and not body.get("components"):
            raise ApiError(400, 50006, "Cannot send an empty message")
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce") and (cid, str(nonce)) in self._nonces:
            return self._nonces[(cid, str(nonce))]
        msg = self._message(c, BOT_ID, text)
        msg["components"] = body.get("components") or []
        ref = (body.get("message_reference") or {}).get("message_id")
        if ref:
            msg["type"] = 19
            msg["message_reference"] = {"message_id": ref, "channel_id": cid}
        for fname, data in files.items():
            aid = self._snowflake()
            self.files[aid] = data
            msg["attachments"].append(
                {"id": aid, "filename": fname, "size": len(data), "url": f"{self.base}/attachments/{cid}/{aid}/{fname}"}
            )
        if nonce is not None:
            msg["nonce"] = nonce
            self._nonces[(cid, str(nonce))] = msg
        c.messages.append(msg)
        return msg

    def _edit(self, cid: str, mid: str, body: dict[str, Any]) -> dict[str, Any]:
        msg = self._own(cid, mid)
        if "content" in body:
            if len(str(body["content"] or "")) > MAX_TEXT:
                raise ApiError(400, 50035, "Invalid Form Body (content: Must be 2000 or fewer in length.)")
            msg["content"] = body["content"]
        if "components" in body:
            _check_components(body["components"] or [])
            msg["components"] = body["components"] or []
        msg["edited_timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        return msg

    def _react(self, cid: str, mid: str, emoji: str) -> tuple[int, Any]:
        from urllib.parse import unquote

        msg = next((m for m in self._chan(cid).messages if m["id"] == mid), None)
        if msg is None:
            raise ApiError(404, 10008, "Unknown Message")
        name = unquote(emoji)
        if name.isascii() and ":" not in name:
            raise ApiError(400, 10014, "Unknown Emoji")
        msg.setdefault("reactions", []).append({"emoji": {"id": None, "name": name}, "count": 1, "me": True})
        return 204, None

    def _callback(self, iid: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
        known = self._interactions.get(iid)
        if known is None or known[0] != token:
            raise ApiError(404, 10062, "Unknown interaction")
        _, sent_at, acked = known
        after = time.monotonic() - sent_at
        if acked:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if after > CALLBACK_WINDOW:
            raise ApiError(404, 10062, "Unknown interaction")
        kind = int((body or {}).get("type") or 0)
        if kind not in (4, 5, 6, 7):
            raise ApiError(400, 50035, "Invalid Form Body (type)")
        self._interactions[iid] = (token, sent_at, True)
        self.callbacks.append((iid, kind, after))
        return 204, None

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        fault = self._next_fault("cdn", request.match_info["channel"])
        if isinstance(fault, Drop):
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if isinstance(fault, Error):
            self.cdn_calls.append(fault.status)
            return web.Response(status=fault.status, text="upstream failure")
        data = self.files.get(request.match_info["id"])
        if data is None:
            self.cdn_calls.append(404)
            return web.Response(status=404, text="Not Found")
        self.cdn_calls.append(200)
        if self.trickle is not None:
            return await self.trickle.serve(request, data)
        return web.Response(body=data, content_type="application/octet-stream")


def _route(method: str, parts: list[str]) -> tuple[str, str]:
    """A REST call's name (for faults and records) and its rate-limit route (the top-level id kept)."""
    top = "/".join(parts[:2])
    table = {
        ("GET", ("users", "@me")): "me",
        ("POST", ("users", "@me", "channels")): "create_dm",
        ("GET", ("channels", "*")): "channel",
        ("GET", ("channels", "*", "messages")): "history",
        ("POST", ("channels", "*", "messages")): "create_message",
        ("PATCH", ("channels", "*", "messages", "*")): "edit_message",
        ("DELETE", ("channels", "*", "messages", "*")): "delete_message",
        ("PUT", ("channels", "*", "messages", "*", "reactions", "*", "@me")): "reaction",
        ("POST", ("channels", "*", "typing")): "typing",
        ("POST", ("interactions", "*", "*", "callback")): "callback",
    }
    shape = tuple(
        p if not (p.isdigit() or (i == 2 and parts[0] == "interactions") or (i == 5 and len(parts) == 7)) else "*"
        for i, p in enumerate(parts)
    )
    name = table.get((method, shape), "unknown")
    return name, f"{method} {top} {name}"


def _check_components(rows: list[dict[str, Any]]) -> None:
    if len(rows) > 5:
        raise ApiError(400, 50035, "Invalid Form Body (components: Must be 5 or fewer in length.)")
    for row in rows:
        if row.get("type") != 1 or not 1 <= len(row.get("components") or []) <= 5:
            raise ApiError(400, 50035, "Invalid Form Body (components: an action row holds 1 to 5 components)")
        for button in row["components"]:
            if (
                button.get("type") != 2
                or not 1 <= len(str(button.get("custom_id") or "")) <= 100
                or len(str(button.get("label") or "")) > 80
                or button.get("style") not in (1, 2, 3, 4)
            ):
                raise ApiError(400, 50035, "Invalid Form Body (components: a button is invalid)")


if __name__ == "__main__":
    serve_from_command_line(FakeDiscord, __doc__ or "", lambda f: f"{f.url} {f.gateway_url} {f.token}")
