"""The Discord bridge: the Gateway in (heartbeat, resume after a drop, re-identify and read the REST history when
a resume is refused), messages, thread replies, edits, reactions, files and button cards out through the REST API.

Settings (`[channels.discord]` in config.toml, or `CLAWDEN_DISCORD_<KEY>`): `api_url` (the REST base, default
Discord's v10), `gateway_url` (default Discord's), `send_deadline`. The credential is the bot token, `keys/discord`
(mode 0600) or `CLAWDEN_DISCORD_TOKEN`.

Chats are channel ids (a guild text channel or a DM channel); a thread is its own channel in Discord, and here the
thread of its parent channel (route `chat_id` the parent, `thread_id` the thread). A chat id `@<user id>` means that
person's DM channel, created through `POST /users/@me/channels` (approvals reach an approver so). A platform message
id is `<channel id>:<message id>`: edits, reactions and deletes need the channel. HTTP and the WebSocket are aiohttp's
(services/channels/README.md says why not discord.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from clawden.backoff import backoff
from clawden.bridgeconfig import BridgeConfigError, channel_settings, read_secret
from clawden.bus import events as ev
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.channels.bridge import Bridge, ButtonRef, Capabilities, Inbound, http_download
from services.channels.pacing import Limit, Pacer
from services.channels.reach import Trouble, call_trouble, why_unreachable
from services.channels.retry import PlatformError, RetryPolicy
from services.channels.service import serve

log = logging.getLogger("clawden.channels.discord")

CHANNEL = "discord"
DEFAULT_API_URL = "https://discord.com/api/v10"
DEFAULT_GATEWAY_URL = "wss://gateway.discord.gg"
MAX_TEXT = 2000  # a message's content (Discord docs, "Message Resource": Create Message, content)
LABEL = 80  # a button's label (Discord docs, "Message Components": Button)
# Gateway intents (Discord docs, "Gateway": List of Intents): GUILDS (threads created), GUILD_MESSAGES,
# DIRECT_MESSAGES, MESSAGE_CONTENT (privileged: switched on in the developer portal, else close code 4014).
INTENTS = (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15)
# Close codes after which a session cannot go on (Discord docs, "Opcodes and Status Codes": Gateway Close Event Codes).
FATAL_CLOSE = {
    4004: "the token was refused",
    4010: "invalid shard",
    4011: "sharding required",
    4012: "invalid API version",
    4013: "invalid intents",
    4014: "a disallowed intent: switch on Message Content in the developer portal (Bot page)",
}
FATAL_RETRY = 600.0  # seconds between identifies while a close code says the configuration is wrong
# How the owner mends a token Discord refuses (the running bridge notices a new keys/discord: `keywatch`).
DISCORD_FIX = (
    "put the bot token (developer portal, Bot, Reset Token) in keys/discord; the bridge notices and restarts with it; "
    "`clawden doctor` tries it"
)
NO_RESUME_CLOSE = {4007, 4009}  # invalid seq, session timed out: identify anew
# Create Message takes about 5 a channel per 5 seconds; sends and edits into one channel are paced to it. A rate only:
# the buckets the X-RateLimit headers describe are what the bridge obeys.
CHANNEL_LIMIT = Limit(5, 5.0)
SEEN_KEPT = 5000
HISTORY_PAGE = 100  # Get Channel Messages: limit 1-100

CAPABILITIES = Capabilities(
    max_text=MAX_TEXT,
    threads=True,
    edits=True,
    reactions=True,
    files=True,
    cards=True,
    typing=True,
    typing_interval=8.0,  # Trigger Typing Indicator lasts 10 seconds
    max_file_bytes=10 * 1024 * 1024,
    max_download_bytes=25 * 1024 * 1024,  # 10 MiB without boosts
    # Create Message with `nonce` and `enforce_nonce: true`: a repeat "in the past few minutes" returns the first
    # message; how many is not said, so two.
    idempotent_sends=True,
    dedupe_window=120.0,
)


# --- the pure part: Discord messages -> Clawden events ------------------------------------------------------


def message_id(channel: str, message: str) -> str:
    return f"{channel}:{message}"


def split_id(platform_id: str) -> tuple[str, str]:
    channel, _, message = platform_id.rpartition(":")
    if not channel or not message:
        raise PlatformError(f"{platform_id!r} is not a Discord message id", "permanent")
    return channel, message


def nonce(key: str) -> str:
    """A nonce of at most 25 characters, the same on every try of one part."""
    return hashlib.sha256(key.encode()).hexdigest()[:25]


def snowflake_after(a: str, b: str) -> bool:
    return int(a) > int(b)


@dataclass(frozen=True)
class Place:
    """Where a channel sits: a DM, a guild channel, or a thread under `parent`."""

    dm: bool
    parent: str | None = None

    def route(self, channel: str) -> ev.Route:
        if self.parent:
            return ev.Route(channel=CHANNEL, chat_id=self.parent, thread_id=channel)
        return ev.Route(channel=CHANNEL, chat_id=channel)


def clean_text(text: str, me: str) -> str:
    return re.sub(rf"<@!?{re.escape(me)}>", "", text).strip()


def sent_at(msg: dict[str, Any]) -> float:
    """When the message was posted (its ISO 8601 `timestamp`); now, for one without a readable one."""
    try:
        return datetime.fromisoformat(str(msg["timestamp"])).timestamp()
    except (KeyError, ValueError):
        return time.time()


def inbound_message(msg: dict[str, Any], me: str, place: Place) -> ev.InboundMessage | None:
    """A person's message as an inbound event; None for bots (the bridge's own included), system messages and empty
    ones. `mentioned`: a DM, the bot among `mentions`, or a reply to the bot's message."""
    author = msg.get("author") or {}
    if author.get("bot") or str(author.get("id")) == me or msg.get("type", 0) not in (0, 19):  # DEFAULT, REPLY
        return None
    channel = str(msg["channel_id"])
    raw = str(msg.get("content") or "")
    text = clean_text(raw, me)
    attachments = tuple(
        ev.Attachment(
            name=str(a.get("filename") or "file"),
            mime=str(a.get("content_type") or "application/octet-stream"),
            size=int(a.get("size") or 0),
            url=str(a.get("url") or ""),
        )
        for a in msg.get("attachments") or []
        if isinstance(a, dict)
    )
    if not text and not attachments:
        return None
    referenced = msg.get("referenced_message") or {}
    replied_to_me = str((referenced.get("author") or {}).get("id")) == me
    mentioned = place.dm or replied_to_me or any(str(u.get("id")) == me for u in msg.get("mentions") or [])
    ref = (msg.get("message_reference") or {}).get("message_id")
    user = str(author["id"])
    return ev.InboundMessage(
        route=place.route(channel),
        message_id=message_id(channel, str(msg["id"])),
        sender=ev.Sender(id=f"{CHANNEL}:{user}", name=str(author.get("global_name") or author.get("username") or user)),
        text=text,
        sent_at=sent_at(msg),
        is_group=not place.dm,
        mentioned=mentioned,
        reply_to=message_id(channel, str(ref)) if ref else None,
        attachments=attachments,
        supports_threads=True,
    )


def inbound_edit(data: dict[str, Any], me: str, place: Place) -> ev.InboundEdit | None:
    """A MESSAGE_UPDATE that is a person's edit: the message with its text and a new `edited_timestamp`
    (Discord docs, "Gateway Events": Message Update). An update may be partial ("only a subset of the full
    message object", e.g. the embeds Discord resolved for a link): without `content`, an author or an
    `edited_timestamp`, nobody edited anything (None)."""
    stamp = data.get("edited_timestamp")
    if not stamp or "content" not in data or not data.get("author"):
        return None
    message = inbound_message(data, me, place)
    if message is None:
        return None
    try:
        edited_at = datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        edited_at = time.time()
    return ev.InboundEdit(
        route=message.route,
        message_id=message.message_id,
        edit_id=str(stamp),
        sender=message.sender,
        text=message.text,
        edited_at=edited_at,
    )


def inbound_delete(data: dict[str, Any], place: Place) -> ev.InboundDelete:
    """A MESSAGE_DELETE: only the message's id and channel; Discord says neither who wrote nor who deleted it
    (Discord docs, "Gateway Events": Message Delete). The router knows whether it was a person's it passed on."""
    channel = str(data["channel_id"])
    return ev.InboundDelete(
        route=place.route(channel), message_id=message_id(channel, str(data["id"])), deleted_at=time.time()
    )


def components(buttons: list[list[ButtonRef]]) -> list[dict[str, Any]]:
    """Action rows of buttons (Discord docs, "Message Components"); custom_id is the button data. 5 rows of 5."""
    styles = {"primary": 1, "danger": 4, "success": 3}
    return [
        {
            "type": 1,
            "components": [
                {"type": 2, "style": styles.get(b.style, 2), "label": b.label[:LABEL] or "?", "custom_id": b.data}
                for b in row[:5]
            ],
        }
        for row in buttons[:5]
    ]


# --- rate limits: the per-route buckets and the global limit -------------------------------------------------


def route_key(method: str, path: str) -> str:
    """The route a bucket is learnt for: the method, the path with ids masked except the top-level resource's
    (channel, guild, webhook), which Discord keys buckets by (Discord docs, "Rate Limits")."""
    parts = path.strip("/").split("/")
    masked = [
        p if not p.isdigit() or (i > 0 and parts[i - 1] in ("channels", "guilds", "webhooks")) else "{id}"
        for i, p in enumerate(parts)
    ]
    if parts and parts[0] == "interactions":
        masked = ["interactions", "{id}", "{token}", *masked[3:]]
    if "reactions" in parts:
        masked = masked[: masked.index("reactions") + 1]
    return f"{method} /{'/'.join(masked)}"


@dataclass
class Buckets:
    """What the X-RateLimit-* headers said, per route: how many calls are left until when. Pure: the clock comes in."""

    bucket_of: dict[str, str] = field(default_factory=dict)  # route -> bucket hash
    left: dict[str, tuple[int, float]] = field(default_factory=dict)  # bucket (or route) -> (remaining, reset at)
    global_until: float = 0.0

    def wait(self, route: str, now: float) -> float:
        """Seconds before a call on `route` may go (0: now), a call booked when it may."""
        if self.global_until > now:
            return self.global_until - now
        key = self.bucket_of.get(route, route)
        remaining, reset = self.left.get(key, (1, 0.0))
        if reset <= now:
            return 0.0
        if remaining <= 0:
            return reset - now
        self.left[key] = (remaining - 1, reset)
        return 0.0

    def learn(self, route: str, headers: dict[str, str], now: float) -> None:
        if bucket := headers.get("x-ratelimit-bucket"):
            self.bucket_of[route] = bucket
        with contextlib.suppress(KeyError, ValueError):
            key = self.bucket_of.get(route, route)
            self.left[key] = (int(headers["x-ratelimit-remaining"]), now + float(headers["x-ratelimit-reset-after"]))

    def limited(self, route: str, retry_after: float, is_global: bool, now: float) -> None:
        if is_global:
            self.global_until = max(self.global_until, now + retry_after)
        else:
            self.left[self.bucket_of.get(route, route)] = (0, now + retry_after)


# --- the REST API ---------------------------------------------------------------------------------------------


class DiscordError(PlatformError):
    pass


def classify(status: int, body: Any, headers: dict[str, str], what: str) -> DiscordError:
    data = body if isinstance(body, dict) else {}
    said = f" {data['message']}" if data.get("message") else ""
    text = f"{what}: HTTP {status}{said} (code {data.get('code', '-')})"
    if status == 429:
        retry = data.get("retry_after") or headers.get("retry-after")
        return DiscordError(text, "rate_limited", code=429, retry_after=float(retry) if retry is not None else None)
    if status >= 500 or status in (401, 408):  # 401: a token the operator must fix; kept until the deadline
        return DiscordError(text, "transient", code=status)
    return DiscordError(text, "permanent", code=status)


class RestApi:
    """One bot's REST API. A route whose bucket is spent, or any route under the global limit, fails at once as rate
    limited, without reaching Discord, until its reset: other routes and channels go on."""

    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.buckets = Buckets()
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30),
                headers={"Authorization": f"Bot {self.token}", "User-Agent": "DiscordBot (https://clawden.invalid, 1)"},
            )
        return self.session

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        form: aiohttp.FormData | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        route = route_key(method, path)
        what = f"{method} {route.partition(' ')[2]}"
        if (wait := self.buckets.wait(route, time.monotonic())) > 0:
            raise DiscordError(
                f"{what}: rate limited (held {wait:.2f}s more)", "rate_limited", code=429, retry_after=wait
            )
        try:
            async with self._session().request(
                method, self.api_url + path, json=json, data=form, params=params
            ) as resp:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                body = await resp.json(content_type=None) if resp.status != 204 else None
        except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError, ConnectionRefusedError) as exc:
            raise DiscordError(
                f"{what}: cannot reach Discord ({type(exc).__name__})", "transient", connection=True
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DiscordError(
                f"{what}: Discord's answer was lost ({type(exc).__name__})", "unknown", connection=True
            ) from None
        now = time.monotonic()
        self.buckets.learn(route, headers, now)
        if resp.status >= 400:
            error = classify(resp.status, body, headers, what)
            if error.kind == "rate_limited":
                scope_global = bool((body or {}).get("global")) or headers.get("x-ratelimit-global") == "true"
                self.buckets.limited(route, error.retry_after or 1.0, scope_global, now)
            raise error
        return body

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


# --- the Gateway session, as far as it outlives one connection ------------------------------------------------


@dataclass
class Session:
    """What a resume needs (Discord docs, "Gateway": Resuming): the session id, its resume URL, the last seq."""

    session_id: str = ""
    resume_url: str = ""
    seq: int | None = None

    def forget(self) -> None:
        self.session_id, self.resume_url, self.seq = "", "", None


class Refused(BridgeConfigError):
    """Discord closed the Gateway with a code that ends every session until a person mends the bot (FATAL_CLOSE)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"Discord closed the Gateway with {code}: {FATAL_CLOSE[code]}")
        self.code = code


def refused_trouble(platform: str, exc: Refused) -> Trouble:
    """A fatal close in a person's words: 4004 is the token refused, as a REST 401 is; the others say what to switch
    on or mend, which the next identify, rare (FATAL_RETRY), finds mended."""
    if exc.code == 4004:
        return call_trouble(platform, DiscordError(str(exc), "transient", code=401), DISCORD_FIX)
    return Trouble(
        str(exc),
        problem=f"{platform} refuses the bridge's Gateway session",
        outcome=f"nothing comes in until it is mended; the bridge tries again every {FATAL_RETRY / 60:.0f} minutes",
    )


def gateway_trouble(platform: str, exc: BaseException) -> Trouble:
    """A Gateway connection that failed before its first payload: a handshake Discord answered with an HTTP status
    (a 429 holds the bridge back) in Discord's terms, else why it could not connect."""
    if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status:
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        return call_trouble(platform, classify(exc.status, None, headers, "the Gateway"), DISCORD_FIX)
    return Trouble(why_unreachable(exc))


class Reconnect(Exception):
    """The connection is over; `resume` says whether the session may go on."""

    def __init__(self, reason: str, *, resume: bool) -> None:
        super().__init__(reason)
        self.resume = resume


class DiscordBridge(Bridge):
    name = CHANNEL
    capabilities = CAPABILITIES
    deaf_after = 120.0

    def __init__(self, api_url: str, gateway_url: str, token: str) -> None:
        self.rest = RestApi(api_url, token)
        self.gateway_url = gateway_url.rstrip("/")
        self.token = token
        self.me = ""
        self.session = Session()
        self.places: dict[str, Place] = {}
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.pacer = Pacer(CHANNEL_LIMIT, slack=0.1)
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        self._inbound: Inbound | None = None
        self._catching_up: asyncio.Task[None] | None = None
        self.identifies = 0
        self.resumes = 0
        self._heard = False  # the Gateway connection in hand has sent a payload past its hello

    async def start(self) -> DiscordError | None:
        try:
            await self._whoami()
        except DiscordError as exc:
            if exc.code == 401 or exc.kind == "permanent":
                raise BridgeConfigError(f"Discord refused the bot token: {exc.description}") from None
            # Outbound work queues up, the listener keeps trying, and the service says why until it gets through.
            log.warning("cannot reach Discord yet (%s); will keep trying", exc.description)
            return exc
        return None

    async def _whoami(self) -> str:
        user = await self.rest.call("GET", "/users/@me")
        self.me = str(user["id"])
        log.info("discord: signed in as %s (%s)", user.get("username"), self.me)
        return self.me

    # --- in: the Gateway ---------------------------------------------------------------------------

    async def listen(self, inbound: Inbound) -> None:
        self._inbound = inbound
        platform = inbound.reach.platform
        failures = 0
        while not self.me:  # start could not ask who the bot is
            try:
                await self._whoami()
            except DiscordError as exc:
                failures += 1
                delay = exc.retry_after if exc.retry_after is not None else backoff(failures, base=0.5, cap=30.0)
                log.warning("discord: GET /users/@me failed (%s); trying again in %.1fs", exc.description, delay)
                inbound.reach.failed(call_trouble(platform, exc, DISCORD_FIX))  # in Discord's terms, at once
                await inbound.pause(delay)
        if self._ws_session is None or self._ws_session.closed:
            self._ws_session = aiohttp.ClientSession()
        failures = 0
        while True:
            resuming = bool(self.session.session_id)
            url = (self.session.resume_url if resuming else self.gateway_url) + "/?v=10&encoding=json"
            try:
                await self._connection(url, inbound)
            except Reconnect as exc:
                failures = 0
                if not exc.resume:
                    self.session.forget()
                log.info("discord: %s; %s", exc, "resuming" if exc.resume else "identifying anew")
                continue
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                delay = backoff(failures, base=0.5, cap=30.0)
                log.warning("discord: the Gateway failed (%r); connecting again in %.1fs", exc, delay)
                if not self._heard:  # it never got going (a drop after payloads is no trouble): why, at once
                    inbound.reach.failed(gateway_trouble(platform, exc))
                await inbound.pause(delay)
            except Refused as exc:
                # Only a person can fix it; Discord allows 1000 identifies a day and resets the token past that,
                # so the bridge tries again rarely instead of at the listener's restart pace.
                self.session.forget()
                log.error("discord: %s; trying again in %.0f minutes", exc, FATAL_RETRY / 60)
                inbound.reach.failed(refused_trouble(platform, exc))
                await inbound.pause(FATAL_RETRY)

    async def _connection(self, url: str, inbound: Inbound) -> None:
        assert self._ws_session is not None
        self._heard = False
        async with self._ws_session.ws_connect(url, autoping=True, max_msg_size=0) as ws:
            self.socket = ws
            acked = asyncio.Event()
            beat: asyncio.Task[None] | None = None
            try:
                hello = await self._receive(ws)
                if hello.get("op") != 10:
                    raise Reconnect(f"the Gateway did not say hello ({hello.get('op')})", resume=True)
                interval = float(hello["d"]["heartbeat_interval"]) / 1000
                beat = asyncio.create_task(self._heartbeat(ws, interval, acked))
                await self._hello(ws)
                while True:
                    payload = await self._receive(ws)
                    self._heard = True
                    inbound.alive()
                    await self._payload(ws, payload, acked, inbound)
            finally:
                for task in (beat, self._catching_up):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                self._catching_up = None
                self.socket = None

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            payload = msgspec.json.decode(msg.data)
            if isinstance(payload, dict):
                return payload
            raise Reconnect("a Gateway payload that is not an object", resume=True)
        code = ws.close_code or 0
        if code in FATAL_CLOSE:
            raise Refused(code)
        raise Reconnect(f"the Gateway closed ({code or msg.type.name})", resume=code not in NO_RESUME_CLOSE)

    async def _hello(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self.session.session_id:
            self.resumes += 1
            await ws.send_json(
                {"op": 6, "d": {"token": self.token, "session_id": self.session.session_id, "seq": self.session.seq}}
            )
        else:
            self.identifies += 1
            await ws.send_json(
                {
                    "op": 2,
                    "d": {
                        "token": self.token,
                        "intents": INTENTS,
                        "properties": {"os": "linux", "browser": "clawden", "device": "clawden"},
                    },
                }
            )

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse, interval: float, acked: asyncio.Event) -> None:
        """Every `interval` (the first after a random part of it) send the last seq; a beat not acked by the next one
        means a zombied connection: close it and resume (Discord docs, "Gateway": Sending Heartbeats)."""
        await asyncio.sleep(interval * random.random())
        acked.set()
        while True:
            if not acked.is_set():
                log.warning("discord: no heartbeat ack; reconnecting")
                await ws.close(code=4000)
                return
            acked.clear()
            await ws.send_json({"op": 1, "d": self.session.seq})
            await asyncio.sleep(interval)

    async def _payload(
        self, ws: aiohttp.ClientWebSocketResponse, payload: dict[str, Any], acked: asyncio.Event, inbound: Inbound
    ) -> None:
        op = payload.get("op")
        if op == 11:
            acked.set()
        elif op == 1:
            await ws.send_json({"op": 1, "d": self.session.seq})
        elif op == 7:
            raise Reconnect("the Gateway asked to reconnect", resume=True)
        elif op == 9:
            if not payload.get("d"):
                self.session.forget()
            raise Reconnect("invalid session", resume=bool(payload.get("d")))
        elif op == 0:
            try:
                await self._dispatch(str(payload.get("t")), payload.get("d") or {}, inbound)
            except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
                log.error("skipping a discord %s that does not parse: %r", payload.get("t"), exc)
            # Only once the event is stored: a resume from this seq never skips it.
            if isinstance(payload.get("s"), int):
                self.session.seq = payload["s"]

    async def _dispatch(self, kind: str, data: dict[str, Any], inbound: Inbound) -> None:
        if kind == "READY":
            self.session.session_id = str(data["session_id"])
            self.session.resume_url = str(data.get("resume_gateway_url") or self.gateway_url).rstrip("/")
            self.me = str((data.get("user") or {}).get("id") or self.me)
            log.info("discord: identified (session %s); reading what was missed", self.session.session_id[:8])
            await self._open_gaps(inbound)
            self._start_catch_up(inbound)
        elif kind == "RESUMED":
            log.info("discord: resumed at seq %s", self.session.seq)
            self._start_catch_up(inbound)  # a history read an earlier drop cut short goes on
        elif kind in ("THREAD_CREATE", "CHANNEL_CREATE"):
            self._learn_channel(data)
        elif kind == "GUILD_CREATE":
            for channel in [*(data.get("channels") or []), *(data.get("threads") or [])]:
                self._learn_channel(dict(channel, guild_id=data.get("id")))
        elif kind == "MESSAGE_CREATE":
            await self._message(data, inbound)
        elif kind in ("MESSAGE_UPDATE", "MESSAGE_DELETE"):
            await self._revision(kind, data, inbound)
        elif kind == "INTERACTION_CREATE":
            await self._interaction(data, inbound)

    def _learn_channel(self, channel: dict[str, Any]) -> None:
        kind = int(channel.get("type") or 0)
        parent = channel.get("parent_id") if kind in (10, 11, 12) else None
        self.places[str(channel["id"])] = Place(dm=kind in (1, 3), parent=str(parent) if parent else None)

    async def _place(self, channel: str, guild: bool | None, inbound: Inbound) -> Place:
        """Where a channel sits: learnt from the Gateway, kept in the bridge's state, else asked of the REST API."""
        if channel in self.places:
            return self.places[channel]
        saved = await inbound.state.cursor(f"place:{channel}")
        if saved is not None:
            dm, _, parent = saved[0].partition(":")
            place = Place(dm=dm == "dm", parent=parent or None)
        elif guild is False:
            place = Place(dm=True)
        else:
            try:
                self._learn_channel(await self.rest.call("GET", f"/channels/{channel}"))
            except DiscordError as exc:  # not kept: asked again next time
                log.warning(
                    "discord: cannot tell where channel %s sits (%s); taking it for a channel", channel, exc.description
                )
                return Place(dm=False)
            place = self.places[channel]
        self.places[channel] = place
        await inbound.state.set_cursor(f"place:{channel}", f"{'dm' if place.dm else 'guild'}:{place.parent or ''}")
        return place

    async def _message(self, data: dict[str, Any], inbound: Inbound, *, guild: bool | None = None) -> None:
        channel = str(data["channel_id"])
        if guild is None:
            guild = bool(data.get("guild_id"))
        key = message_id(channel, str(data["id"]))
        if key in self.seen:
            return  # a duplicated dispatch
        place = await self._place(channel, guild, inbound)
        message = inbound_message(data, self.me, place)
        if message is not None:
            await inbound.deliver(message)
        self._saw(key)
        last = await inbound.state.cursor(f"last:{channel}")
        if last is None or snowflake_after(str(data["id"]), last[0]):
            await inbound.state.set_cursor(f"last:{channel}", str(data["id"]))

    async def _revision(self, kind: str, data: dict[str, Any], inbound: Inbound) -> None:
        """A person's edit or a delete: passed on; the router sends it where the message went, if anywhere."""
        place = await self._place(str(data["channel_id"]), bool(data.get("guild_id")), inbound)
        if kind == "MESSAGE_UPDATE":
            revision: ev.Revision | None = inbound_edit(data, self.me, place)
        else:
            revision = inbound_delete(data, place)
        if revision is not None:
            await inbound.publish(revision)

    def _saw(self, key: str) -> None:
        self.seen[key] = None
        while len(self.seen) > SEEN_KEPT:
            self.seen.popitem(last=False)

    async def _open_gaps(self, inbound: Inbound) -> None:
        """A new session replays nothing: each known channel has a gap from the last message stored (`last:`) on,
        kept (`gap:`) until its history is read, however many drops and live messages come meanwhile. Recorded
        before the read loop takes the next dispatch, so no live message can move a channel's mark past its gap."""
        db = inbound.state.db
        await db.execute(
            "INSERT OR IGNORE INTO cursor SELECT 'gap:' || substr(name, 6), value, updated_at"
            " FROM cursor WHERE name LIKE 'last:%'"
        )
        await db.commit()

    def _start_catch_up(self, inbound: Inbound) -> None:
        # Beside the read loop, which must go on taking heartbeat acks while the history is read.
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.create_task(self._catch_up(inbound))

    async def _catch_up(self, inbound: Inbound) -> None:
        """Read each open gap's history, oldest first, through Get Channel Messages (`after`); the gap's mark moves
        after each page, and the gap closes when a page comes back short."""
        db = inbound.state.db
        cursor = await db.execute("SELECT name, value FROM cursor WHERE name LIKE 'gap:%'")
        channels = [(str(name)[4:], str(value)) async for name, value in cursor]
        for channel, after in channels:
            while True:
                try:
                    page = await self.rest.call(
                        "GET", f"/channels/{channel}/messages", params={"after": after, "limit": str(HISTORY_PAGE)}
                    )
                except DiscordError as exc:
                    if exc.kind == "permanent":  # the channel is gone or closed to the bot
                        log.warning("discord: cannot read the history of %s: %s", channel, exc.description)
                        break
                    await inbound.wait(exc.retry_after or 1.0)  # the catch-up's own slowing down: the gateway is heard
                    continue
                messages = sorted(page, key=lambda m: int(m["id"]))
                for msg in messages:
                    await self._message(dict(msg, channel_id=channel), inbound)
                    inbound.alive()
                if len(messages) < HISTORY_PAGE:
                    break
                after = str(messages[-1]["id"])
                await inbound.state.set_cursor(f"gap:{channel}", after)
            await db.execute("DELETE FROM cursor WHERE name = ?", (f"gap:{channel}",))
            await db.commit()
            log.info("discord: %s read up to date", channel)

    async def _interaction(self, data: dict[str, Any], inbound: Inbound) -> None:
        """A button press (type 3, a message component): acknowledged at once with DEFERRED_UPDATE_MESSAGE (6), within
        Discord's 3 seconds, then published; whoever asked (approvals) checks the clicker."""
        if int(data.get("type") or 0) != 3:
            return
        interaction = str(data["id"])
        if interaction in self.seen:
            return
        self._saw(interaction)
        try:
            await self.rest.call("POST", f"/interactions/{interaction}/{data['token']}/callback", json={"type": 6})
        except DiscordError as exc:  # the person sees "interaction failed"; the press itself still counts
            log.warning("discord: could not acknowledge interaction %s: %s", interaction, exc.description)
        user = (data.get("member") or {}).get("user") or data.get("user") or {}
        channel = str(data["channel_id"])
        msg = data.get("message") or {}
        place = await self._place(channel, bool(data.get("guild_id")), inbound)
        pressed = await inbound.click(
            place.route(channel),
            str((data.get("data") or {}).get("custom_id") or ""),
            action_id=interaction,
            sender=ev.Sender(
                id=f"{CHANNEL}:{user.get('id')}", name=str(user.get("global_name") or user.get("username") or "")
            ),
            message_id=message_id(channel, str(msg.get("id"))) if msg.get("id") else None,
        )
        if not pressed:
            log.info("discord: a press on an expired card in %s", channel)

    async def fetch_file(self, attachment: ev.Attachment, dest: Path) -> None:
        """Attachment URLs are the CDN's, signed, fetched without the token."""
        if self._ws_session is None or self._ws_session.closed:
            self._ws_session = aiohttp.ClientSession()
        await http_download(
            self._ws_session, attachment.url, dest, self.capabilities.max_download_bytes, platform="Discord"
        )

    # --- out: the REST API -------------------------------------------------------------------------

    async def _channel(self, route: ev.Route) -> str:
        """The channel to post in: the thread, the route's channel, or for `@<user id>` the DM channel with them."""
        if route.thread_id:
            return route.thread_id
        chat = route.chat_id
        if not chat.startswith("@"):
            return chat
        state = self._inbound.state if self._inbound is not None else None
        if state is not None and (saved := await state.cursor(f"dm:{chat}")) is not None:
            return saved[0]
        opened = await self.rest.call("POST", "/users/@me/channels", json={"recipient_id": chat[1:]})
        channel = str(opened["id"])
        if state is not None:
            await state.set_cursor(f"dm:{chat}", channel)
        return channel

    def pace(self, route: ev.Route) -> float:
        now = time.monotonic()
        return self.pacer.reserve(route.thread_id or route.chat_id, group=False, now=now) - now

    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        channel = await self._channel(route)
        body: dict[str, Any] = {
            "content": text,
            "nonce": nonce(key),
            "enforce_nonce": True,
            "allowed_mentions": {"parse": [], "replied_user": True},
        }
        if buttons:
            body["components"] = components(buttons)
        if reply_to:
            ref_channel, ref = split_id(reply_to)
            if ref_channel == channel:
                body["message_reference"] = {"message_id": ref, "fail_if_not_exists": False}
        posted = await self.rest.call("POST", f"/channels/{channel}/messages", json=body)
        return message_id(channel, str(posted["id"]))

    async def send_file(self, route: ev.Route, path: Path, *, key: str) -> str:
        channel = await self._channel(route)
        data = await asyncio.to_thread(path.read_bytes)
        form = aiohttp.FormData()
        form.add_field(
            "payload_json",
            msgspec.json.encode(
                {"nonce": nonce(key), "enforce_nonce": True, "attachments": [{"id": 0, "filename": path.name}]}
            ).decode(),
            content_type="application/json",
        )
        form.add_field("files[0]", data, filename=path.name, content_type="application/octet-stream")
        posted = await self.rest.call("POST", f"/channels/{channel}/messages", form=form)
        return message_id(channel, str(posted["id"]))

    async def edit(self, route: ev.Route, target: str, text: str, buttons: list[list[ButtonRef]]) -> None:
        channel, msg = split_id(target)
        # components=[] takes a decided card's buttons away, so no one can press them again.
        await self.rest.call(
            "PATCH", f"/channels/{channel}/messages/{msg}", json={"content": text, "components": components(buttons)}
        )

    async def delete(self, route: ev.Route, target: str) -> None:
        channel, msg = split_id(target)
        try:
            await self.rest.call("DELETE", f"/channels/{channel}/messages/{msg}")
        except DiscordError as exc:
            if exc.code != 404:
                raise

    async def react(self, route: ev.Route, target: str, emoji: str) -> None:
        channel, msg = split_id(target)
        await self.rest.call("PUT", f"/channels/{channel}/messages/{msg}/reactions/{quote(emoji, safe='')}/@me")

    async def typing(self, route: ev.Route) -> None:
        await self.rest.call("POST", f"/channels/{await self._channel(route)}/typing")

    async def reconnect(self) -> None:
        if self.socket is not None:
            await self.socket.close()

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self._ws_session is not None:
            await self._ws_session.close()
        await self.rest.close()


# --- the service ------------------------------------------------------------------------------------------------


def url_of(settings: dict[str, str], key: str, default: str, schemes: str) -> str:
    url = settings.get(key, default)
    if not re.match(rf"^({schemes})://[^/\s]+", url):
        raise BridgeConfigError(f"[channels.discord] {key} must be a {schemes.replace('|', ' or ')} URL, not {url!r}")
    return url


def bridge_from_settings(ctx: ServiceContext) -> tuple[DiscordBridge, RetryPolicy]:
    settings = channel_settings(ctx.config, CHANNEL)
    bridge = DiscordBridge(
        url_of(settings, "api_url", DEFAULT_API_URL, "https?"),
        url_of(settings, "gateway_url", DEFAULT_GATEWAY_URL, "wss?"),
        read_secret(ctx.config, CHANNEL).strip(),
    )
    try:
        deadline = float(settings.get("send_deadline", 600.0))
    except ValueError:
        raise BridgeConfigError("[channels.discord] send_deadline must be a number of seconds") from None
    return bridge, RetryPolicy(deadline=deadline)


async def check_token(cfg: Config, environ: dict[str, str] | None = None) -> str:
    """For `clawden doctor`: GET /users/@me with the token and API URL the bridge would use."""
    settings = channel_settings(cfg, CHANNEL, environ)
    api = RestApi(url_of(settings, "api_url", DEFAULT_API_URL, "https?"), read_secret(cfg, CHANNEL, environ).strip())
    try:
        user = await api.call("GET", "/users/@me")
    finally:
        await api.close()
    return f"{user.get('username')} ({user.get('id')})"


async def main(ctx: ServiceContext) -> None:
    bridge, policy = bridge_from_settings(ctx)
    await serve(ctx, bridge, policy=policy)
