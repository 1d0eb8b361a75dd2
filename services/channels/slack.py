"""The Slack bridge: Socket Mode in (each envelope acknowledged once it is stored, redeliveries dropped by event id);
messages, thread replies, edits, deletes, reactions, files and Block Kit cards out through the Web API.

Settings (`[channels.slack]` in config.toml, or `CLAWDEN_SLACK_<KEY>`): `api_url` (the Web API base, default
Slack's own), `send_deadline`. The credential is `keys/slack` (mode 0600) or `CLAWDEN_SLACK_TOKEN`: the bot
token (`xoxb-…`) and the app-level token (`xapp-…`, scope `connections:write`), separated by whitespace.

Chats are Slack conversation ids (`C…` channels, `G…` private ones, `D…` direct messages); a chat id that is a
user id (`U…`, `W…`) means that person's DM, opened with conversations.open (approvals reach an approver so).
A thread is its root message's `ts`. A platform message id is `<channel>:<ts>`, since a `ts` is unique only
within its channel. Web API calls go through slack-sdk's AsyncWebClient (its retries off, so the shared retry
policy is the only one); the Socket Mode WebSocket is aiohttp's (services/channels/README.md says why).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from clawden.bridgeconfig import BridgeConfigError, channel_settings, read_secret, redact
from clawden.bus import events as ev
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.channels.bridge import Bridge, ButtonRef, Capabilities, Inbound, http_download
from services.channels.pacing import Limit, Pacer
from services.channels.reach import call_trouble
from services.channels.retry import PlatformError, RetryPolicy
from services.channels.service import serve

log = logging.getLogger("clawden.channels.slack")

CHANNEL = "slack"
DEFAULT_API_URL = "https://slack.com/api/"
# chat.postMessage: "we recommend ... no more than 4,000 characters"; longer text is truncated past 40,000
# (api.slack.com/methods/chat.postMessage, "Truncating content"). Measured after escaping (see `measure`).
MAX_TEXT = 4000
SECTION_TEXT = 3000  # a section block's text (api.slack.com/reference/block-kit/blocks#section)
BUTTON_TEXT = 75  # a button's label (api.slack.com/reference/block-kit/block-elements#button)
# chat.postMessage is "Special": about one message a second per channel, bursts allowed briefly
# (api.slack.com/methods/chat.postMessage, "Rate limiting"). Sends and edits into one channel are paced to it.
CHANNEL_LIMIT = Limit(1, 1.0)
SEEN_KEPT = 5000  # event ids kept in memory to drop a redelivered envelope
# Unicode emoji the agent uses, by the names reactions.add takes (api.slack.com/methods/reactions.add: `name`).
EMOJI_NAMES = {
    "👍": "+1",
    "👎": "-1",
    "❤": "heart",
    "❤️": "heart",
    "🔥": "fire",
    "🎉": "tada",
    "👀": "eyes",
    "✅": "white_check_mark",
    "❌": "x",
    "🙏": "pray",
    "👏": "clap",
    "😂": "joy",
    "😁": "grin",
    "🤔": "thinking_face",
    "💯": "100",
    "⚡": "zap",
    "🚀": "rocket",
    "👌": "ok_hand",
    "😢": "cry",
    "😍": "heart_eyes",
    "🙂": "slightly_smiling_face",
    "⏳": "hourglass_flowing_sand",
    "✍": "writing_hand",
    "🤝": "handshake",
    "😎": "sunglasses",
}

CAPABILITIES = Capabilities(
    max_text=MAX_TEXT,
    measure=lambda text: measure(text),
    threads=True,
    edits=True,
    reactions=True,
    files=True,
    cards=True,
    typing=False,
    # files.getUploadURLExternal takes up to 1 GB; a home server's agents send far less, and the whole file
    # is read into memory, so the bridge keeps to 100 MB both ways.
    max_file_bytes=100 * 1024 * 1024,
    max_download_bytes=100 * 1024 * 1024,
    # chat.postMessage has no idempotency key: a send whose answer was lost is sent once more (a duplicate is
    # the lesser harm than a lost answer), then reported unconfirmed.
    ambiguous_resends=1,
)


# --- the pure part: text, cards, Slack events -> Clawden events --------------------------------------------


def escape(text: str) -> str:
    """Slack's three control characters (api.slack.com/reference/surfaces/formatting#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def measure(text: str) -> int:
    return len(escape(text))


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def message_id(channel: str, ts: str) -> str:
    return f"{channel}:{ts}"


def split_id(platform_id: str) -> tuple[str, str]:
    channel, _, ts = platform_id.rpartition(":")
    if not channel or not ts:
        raise PlatformError(f"{platform_id!r} is not a Slack message id", "permanent")
    return channel, ts


def card_blocks(text: str, buttons: list[list[ButtonRef]]) -> list[dict[str, Any]]:
    """A card: a section with its text, then one actions block per row of buttons (value: the button data)."""
    body = escape(text)
    if len(body) > SECTION_TEXT:
        body = body[: SECTION_TEXT - 1] + "…"
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": body or " "}}]
    for r, row in enumerate(buttons):
        elements = []
        for i, button in enumerate(row):
            element: dict[str, Any] = {
                "type": "button",
                "action_id": f"b{r}-{i}",
                "value": button.data,
                "text": {"type": "plain_text", "text": button.label[:BUTTON_TEXT] or "?"},
            }
            if button.style in ("primary", "danger"):
                element["style"] = button.style
            elements.append(element)
        blocks.append({"type": "actions", "block_id": f"row{r}", "elements": elements})
    return blocks


@dataclass(frozen=True)
class Me:
    user_id: str
    bot_id: str
    team_id: str


def clean_text(text: str, me: Me) -> str:
    """Slack's markup as a person wrote it: the bot's own mention dropped, entities unescaped."""
    return unescape(re.sub(rf"<@{re.escape(me.user_id)}(\|[^>]*)?>", "", text)).strip()


def inbound_message(event: dict[str, Any], me: Me, own_threads: Container[str]) -> ev.InboundMessage | None:
    """A person's message (or app mention) as an inbound event; None for the bot's own, other bots', edits,
    deletes and joins. Slack sends a mention twice (`message` and `app_mention`): both make the same event, so
    the second is dropped by its key."""
    subtype = event.get("subtype")
    if subtype not in (None, "file_share", "thread_broadcast"):
        return None  # message_changed, message_deleted, channel_join, bot_message …
    if event.get("bot_id") or event.get("user") in (None, me.user_id):
        return None
    channel = str(event["channel"])
    ts = str(event["ts"])
    raw = str(event.get("text") or "")
    text = clean_text(raw, me)
    thread_ts = event.get("thread_ts")
    thread = str(thread_ts) if thread_ts and thread_ts != ts else None
    direct = event.get("channel_type") == "im" or channel.startswith("D")
    mentioned = (
        direct
        or event.get("type") == "app_mention"
        or f"<@{me.user_id}" in raw
        or (thread is not None and message_id(channel, thread) in own_threads)
    )
    attachments = tuple(
        ev.Attachment(
            name=str(f.get("name") or "file"),
            mime=str(f.get("mimetype") or "application/octet-stream"),
            size=int(f.get("size") or 0),
            url=str(f.get("url_private_download") or f.get("url_private") or ""),
        )
        for f in event.get("files") or []
        if isinstance(f, dict)
    )
    if not text and not attachments:
        return None
    user = str(event["user"])
    return ev.InboundMessage(
        route=ev.Route(channel=CHANNEL, chat_id=channel, thread_id=thread),
        message_id=message_id(channel, ts),
        sender=ev.Sender(id=f"{CHANNEL}:{user}", name=user),
        text=text,
        sent_at=float(ts),
        is_group=not direct,
        mentioned=mentioned,
        reply_to=message_id(channel, thread) if thread else None,
        attachments=attachments,
        supports_threads=True,
    )


def inbound_edit(event: dict[str, Any], me: Me, own_threads: Container[str]) -> ev.InboundEdit | None:
    """A `message_changed` event that is a person's edit: the message as it now reads, with `edited`
    (api.slack.com/events/message/message_changed). Slack sends the same subtype when it adds a link
    preview or a thread's reply count changes: no `edited`, or the same text, is no edit (None)."""
    after = event.get("message") or {}
    before = event.get("previous_message") or {}
    edited = after.get("edited")
    if not isinstance(edited, dict) or after.get("text") == before.get("text"):
        return None
    inner = dict(after, channel=event["channel"], channel_type=event.get("channel_type"))
    inner.pop("subtype", None)  # a file share that was edited is still a person's message
    message = inbound_message(inner, me, own_threads)
    if message is None:
        return None  # the bot's own, another bot's, or nothing left to read
    return ev.InboundEdit(
        route=message.route,
        message_id=message.message_id,
        edit_id=str(event.get("ts") or edited.get("ts")),
        sender=message.sender,
        text=message.text,
        edited_at=float(edited.get("ts") or event.get("ts") or 0),
    )


def inbound_delete(event: dict[str, Any], me: Me) -> ev.InboundDelete | None:
    """A `message_deleted` event (api.slack.com/events/message/message_deleted): it names the message by
    `deleted_ts`, its thread by the `previous_message`, and not who deleted it. The bot's own are not news."""
    before = event.get("previous_message") or {}
    if before.get("bot_id") or before.get("user") == me.user_id:
        return None
    channel, ts = str(event["channel"]), str(event["deleted_ts"])
    thread_ts = before.get("thread_ts")
    thread = str(thread_ts) if thread_ts and thread_ts != ts else None
    return ev.InboundDelete(
        route=ev.Route(channel=CHANNEL, chat_id=channel, thread_id=thread),
        message_id=message_id(channel, ts),
        deleted_at=float(event.get("ts") or 0),
    )


# --- the Web API through slack-sdk ---------------------------------------------------------------------


class SlackError(PlatformError):
    pass


# How the owner mends tokens Slack refuses (`clawden status` says it beside the refusal).
SLACK_FIX = (
    "keys/slack holds the bot token and the app-level token (`clawden doctor` tries both); the bridge notices a new "
    "keys/slack and restarts with it"
)


# Errors an operator fixes (a token, a scope): retried until the deadline, like a 5xx, so nothing is lost.
FIXABLE = {
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "missing_scope",
    "team_access_not_granted",
}


def classify(exc: SlackApiError, method: str) -> SlackError:
    status = int(exc.response.status_code or 0)
    data = exc.response.data if isinstance(exc.response.data, dict) else {}
    code = str(data.get("error") or f"HTTP {status}")
    text = f"{method}: {code}"
    if status == 429 or code == "ratelimited":
        header = exc.response.headers.get("Retry-After") if exc.response.headers else None
        retry = float(header) if header and str(header).isdigit() else None
        return SlackError(text, "rate_limited", code=429, retry_after=retry)
    if (
        status >= 500
        or status == 0
        or code in ("internal_error", "fatal_error", "service_unavailable", "request_timeout")
    ):
        return SlackError(text, "transient", code=status)
    if code in FIXABLE:
        return SlackError(text, "transient", code=401)
    return SlackError(text, "permanent", code=status or 400)


class WebApi:
    """One Slack workspace's Web API for one token. A 429 holds that method (in that channel, for the methods
    Slack limits per channel) until its Retry-After has passed: a call made meanwhile fails at once as rate
    limited, without reaching Slack, and other channels and methods go on."""

    PER_CHANNEL = frozenset({"chat.postMessage", "chat.update", "chat.delete"})

    def __init__(self, api_url: str, token: str, session: aiohttp.ClientSession) -> None:
        self.client = AsyncWebClient(token=token, base_url=api_url, session=session, retry_handlers=[], timeout=30)
        self.held: dict[tuple[str, str], float] = {}

    async def call(
        self, method: str, *, json: dict[str, Any] | None = None, form: dict[str, Any] | None = None, channel: str = ""
    ) -> dict[str, Any]:
        hold = (method, channel if method in self.PER_CHANNEL else "")
        left = self.held.get(hold, 0.0) - time.monotonic()
        if left > 0:
            raise SlackError(
                f"{method}: ratelimited (held {left:.1f}s more)", "rate_limited", code=429, retry_after=left
            )
        try:
            resp = await self.client.api_call(method, json=json, data=form)
        except SlackApiError as exc:
            error = classify(exc, method)
            if error.kind == "rate_limited":
                self.held[hold] = time.monotonic() + (error.retry_after or 1.0)
            raise error from None
        except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError, ConnectionRefusedError) as exc:
            raise SlackError(
                f"{method}: cannot reach Slack ({type(exc).__name__})", "transient", connection=True
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SlackError(
                f"{method}: Slack's answer was lost ({type(exc).__name__})", "unknown", connection=True
            ) from None
        data = resp.data
        assert isinstance(data, dict)
        return data


@dataclass(frozen=True)
class Tokens:
    bot: str
    app: str


def parse_tokens(secret: str) -> Tokens:
    words = secret.split()
    bot = next((w for w in words if w.startswith("xoxb-")), "")
    app = next((w for w in words if w.startswith("xapp-")), "")
    if not bot or not app:
        raise BridgeConfigError(
            "the Slack credential needs both the bot token (xoxb-…) and the app-level token "
            "(xapp-…), separated by a space or a new line"
        )
    redact(bot)
    redact(app)
    return Tokens(bot, app)


# --- the bridge -----------------------------------------------------------------------------------------


class SlackBridge(Bridge):
    name = CHANNEL
    capabilities = CAPABILITIES
    deaf_after = 90.0

    def __init__(self, api_url: str, tokens: Tokens) -> None:
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.tokens = tokens
        self.session: aiohttp.ClientSession | None = None
        self._bot: WebApi | None = None
        self._app: WebApi | None = None
        self.me: Me | None = None
        self.pacer = Pacer(CHANNEL_LIMIT, slack=0.1)
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.own_threads: OrderedDict[str, None] = OrderedDict()  # `<channel>:<ts>` of threads it posted in
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self._inbound: Inbound | None = None
        self.acks = 0

    def _apis(self) -> tuple[WebApi, WebApi]:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
            self._bot = WebApi(self.api_url, self.tokens.bot, self.session)
            self._app = WebApi(self.api_url, self.tokens.app, self.session)
        assert self._bot is not None and self._app is not None
        return self._bot, self._app

    @property
    def bot(self) -> WebApi:
        return self._apis()[0]

    async def start(self) -> None:
        try:
            await self._identify()
        except SlackError as exc:
            if exc.code == 401 or exc.kind == "permanent":
                raise BridgeConfigError(f"Slack refused the bot token: {exc.description}") from None
            log.warning("cannot reach Slack yet (%s); will keep trying", exc.description)

    async def _identify(self) -> Me:
        who = await self.bot.call("auth.test")
        self.me = Me(str(who["user_id"]), str(who.get("bot_id") or ""), str(who.get("team_id") or ""))
        log.info("slack: signed in as %s (bot %s) in team %s", self.me.user_id, self.me.bot_id, self.me.team_id)
        return self.me

    # --- in: Socket Mode -------------------------------------------------------------------------

    async def listen(self, inbound: Inbound) -> None:
        self._inbound = inbound
        me = self.me or await self._identify()
        _, app = self._apis()
        failures = 0
        while True:
            try:
                opened = await app.call("apps.connections.open")
            except SlackError as exc:
                failures += 1
                delay = exc.retry_after if exc.retry_after is not None else min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("slack: apps.connections.open failed (%s); retrying in %.1fs", exc.description, delay)
                inbound.reach.failed(call_trouble(inbound.reach.platform, exc, SLACK_FIX))  # in Slack's terms, at once
                await inbound.pause(delay)
                continue
            try:
                reason = await self._session(str(opened["url"]), me, inbound)
                failures = 0
                log.info("slack: the socket ended (%s); connecting again", reason)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("slack: the socket failed (%r); connecting again in %.1fs", exc, delay)
                await inbound.pause(delay)

    async def _session(self, url: str, me: Me, inbound: Inbound) -> str:
        """One WebSocket connection, until Slack closes it, asks for a new one (`disconnect`) or it drops."""
        assert self.session is not None
        async with self.session.ws_connect(url, heartbeat=20.0, autoping=True) as ws:
            self.socket = ws
            try:
                while True:
                    try:
                        msg = await ws.receive(timeout=30.0)
                    except TimeoutError:
                        inbound.alive()  # quiet, but the heartbeat's pongs say the socket is up
                        continue
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                        return f"closed by Slack ({ws.close_code})"
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        return f"error {ws.exception()!r}"
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    inbound.alive()
                    envelope = msgspec.json.decode(msg.data)
                    if not isinstance(envelope, dict):
                        continue
                    kind = envelope.get("type")
                    if kind == "disconnect":
                        return f"disconnect ({envelope.get('reason')})"
                    if kind == "hello":
                        log.info("slack: socket connected (%s connections)", envelope.get("num_connections"))
                    elif kind in ("events_api", "interactive"):
                        await self._envelope(kind, envelope.get("payload") or {}, me, inbound)
                    if envelope.get("envelope_id"):
                        # Only once JetStream holds what it carried (milliseconds): a process killed before
                        # then leaves it unacknowledged, and Slack sends it again (to be stored once, by key).
                        await ws.send_str(msgspec.json.encode({"envelope_id": envelope["envelope_id"]}).decode())
                        self.acks += 1
            finally:
                self.socket = None

    def _own_thread(self, root: str) -> None:
        self.own_threads[root] = None
        self.own_threads.move_to_end(root)
        while len(self.own_threads) > SEEN_KEPT:
            self.own_threads.popitem(last=False)

    def _handled(self, key: str) -> None:
        """Remember an event as stored (only then: one cut short by a reconnect is taken when it comes again)."""
        if key:
            self.seen[key] = None
            while len(self.seen) > SEEN_KEPT:
                self.seen.popitem(last=False)

    async def _envelope(self, kind: str, payload: dict[str, Any], me: Me, inbound: Inbound) -> None:
        try:
            if kind == "events_api":
                event_id = str(payload.get("event_id") or "")
                if event_id in self.seen:
                    return  # a redelivery (retry_attempt > 0) of what is already stored
                event = payload.get("event") or {}
                if event.get("type") in ("message", "app_mention"):
                    await self._message(event, me, inbound)
                self._handled(event_id)
            elif payload.get("type") == "block_actions":
                await self._actions(payload, inbound)
        except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
            log.error("skipping a slack %s envelope that does not parse: %r", kind, exc)

    async def _message(self, event: dict[str, Any], me: Me, inbound: Inbound) -> None:
        thread_ts = event.get("thread_ts")
        root = message_id(str(event.get("channel") or ""), str(thread_ts))
        if thread_ts and root not in self.own_threads and await inbound.state.message_of(root) is not None:
            self._own_thread(root)  # a thread under what the bot said before this run
        if event.get("subtype") in ("message_changed", "message_deleted"):
            await self._revision(event, me, inbound)
            return
        message = inbound_message(event, me, self.own_threads)
        if message is None:
            return
        await inbound.deliver(message)

    async def _revision(self, event: dict[str, Any], me: Me, inbound: Inbound) -> None:
        """A person's edit or a delete: passed on; the router sends it where the message went, if anywhere."""
        if event["subtype"] == "message_changed":
            revision: ev.Revision | None = inbound_edit(event, me, self.own_threads)
        else:
            revision = inbound_delete(event, me)
        if revision is not None:
            await inbound.publish(revision)

    async def _actions(self, payload: dict[str, Any], inbound: Inbound) -> None:
        """A button press on a card: the clicker is checked by whoever asked (approvals), not here."""
        user = payload.get("user") or {}
        container = payload.get("container") or {}
        channel = str(container.get("channel_id") or (payload.get("channel") or {}).get("id") or "")
        ts = str(container.get("message_ts") or "")
        thread = (payload.get("message") or {}).get("thread_ts")
        route = ev.Route(channel=CHANNEL, chat_id=channel, thread_id=str(thread) if thread and thread != ts else None)
        for action in payload.get("actions") or []:
            if action.get("type") != "button":
                continue
            key = f"{channel}:{ts}:{action.get('action_ts')}:{user.get('id')}"
            if key in self.seen:
                continue
            pressed = await inbound.click(
                route,
                str(action.get("value") or ""),
                action_id=key,
                sender=ev.Sender(
                    id=f"{CHANNEL}:{user.get('id')}", name=str(user.get("username") or user.get("name") or "")
                ),
                message_id=message_id(channel, ts),
            )
            self._handled(key)
            if not pressed:
                log.info("slack: a press on an expired card in %s", channel)

    async def fetch_file(self, attachment: ev.Attachment, dest: Path) -> None:
        """`url_private_download` needs the bot token (api.slack.com/types/file#authentication); without access,
        Slack answers its sign-in page."""

        def sign_in_page(resp: aiohttp.ClientResponse) -> None:
            if resp.status == 200 and resp.content_type == "text/html":
                raise SlackError("Slack answered its sign-in page: the bot may not read this file", "permanent")

        self._apis()
        assert self.session is not None
        await http_download(
            self.session,
            attachment.url,
            dest,
            self.capabilities.max_download_bytes,
            platform="Slack",
            headers={"Authorization": f"Bearer {self.tokens.bot}"},
            refuse=sign_in_page,
        )

    # --- out: the Web API -----------------------------------------------------------------------

    async def _channel(self, route: ev.Route) -> str:
        """The conversation to post in: the route's, or for a user id the DM opened with them."""
        chat = route.chat_id
        if not re.fullmatch(r"[UW][A-Z0-9]+", chat):
            return chat
        if self._inbound is not None and (saved := await self._inbound.state.cursor(f"dm:{chat}")) is not None:
            return saved[0]
        opened = await self.bot.call("conversations.open", json={"users": chat})
        channel = str(opened["channel"]["id"])
        if self._inbound is not None:
            await self._inbound.state.set_cursor(f"dm:{chat}", channel)
        return channel

    def pace(self, route: ev.Route) -> float:
        now = time.monotonic()
        return self.pacer.reserve(route.chat_id, group=False, now=now) - now

    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        channel = await self._channel(route)
        body: dict[str, Any] = {"channel": channel, "text": escape(text), "unfurl_links": False}
        if buttons:
            body["blocks"] = card_blocks(text, buttons)
        if route.thread_id:
            body["thread_ts"] = route.thread_id.rpartition(":")[2]
        posted = await self.bot.call("chat.postMessage", json=body, channel=channel)
        ts = str(posted["ts"])
        sent_in = str(posted.get("channel") or channel)
        self._own_thread(message_id(sent_in, str(body.get("thread_ts") or ts)))
        return message_id(sent_in, ts)

    async def send_file(self, route: ev.Route, path: Path, *, key: str) -> str:
        channel = await self._channel(route)
        data = await asyncio.to_thread(path.read_bytes)
        got = await self.bot.call("files.getUploadURLExternal", form={"filename": path.name, "length": len(data)})
        assert self.session is not None
        try:
            async with self.session.post(str(got["upload_url"]), data=data) as resp:
                if resp.status >= 400:
                    raise SlackError(
                        f"file upload: HTTP {resp.status}",
                        "transient" if resp.status >= 500 else "permanent",
                        code=resp.status,
                    )
        except aiohttp.ClientError as exc:
            raise SlackError(f"file upload: {type(exc).__name__}", "transient", connection=True) from None
        form: dict[str, Any] = {
            "files": msgspec.json.encode([{"id": got["file_id"], "title": path.name}]).decode(),
            "channel_id": channel,
        }
        if route.thread_id:
            form["thread_ts"] = route.thread_id.rpartition(":")[2]
        done = await self.bot.call("files.completeUploadExternal", form=form)
        return f"file:{done['files'][0]['id']}"

    async def edit(self, route: ev.Route, target: str, text: str, buttons: list[list[ButtonRef]]) -> None:
        channel, ts = split_id(target)
        # blocks=[] takes a decided card's buttons away, so no one can press them again.
        body = {
            "channel": channel,
            "ts": ts,
            "text": escape(text),
            "blocks": card_blocks(text, buttons) if buttons else [],
        }
        await self.bot.call("chat.update", json=body, channel=channel)

    async def delete(self, route: ev.Route, target: str) -> None:
        channel, ts = split_id(target)
        try:
            await self.bot.call("chat.delete", json={"channel": channel, "ts": ts}, channel=channel)
        except SlackError as exc:
            if "message_not_found" not in exc.description:
                raise

    async def react(self, route: ev.Route, target: str, emoji: str) -> None:
        channel, ts = split_id(target)
        name = EMOJI_NAMES.get(emoji, emoji.strip(":"))
        try:
            await self.bot.call("reactions.add", json={"channel": channel, "timestamp": ts, "name": name})
        except SlackError as exc:
            if "already_reacted" not in exc.description:
                raise

    async def reconnect(self) -> None:
        if self.socket is not None:
            await self.socket.close()

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self.session is not None:
            await self.session.close()


# --- the service ------------------------------------------------------------------------------------------


def api_url_of(settings: dict[str, str]) -> str:
    url = settings.get("api_url", DEFAULT_API_URL)
    if not re.match(r"^https?://[^/\s]+", url):
        raise BridgeConfigError(f"[channels.slack] api_url must be an http(s) URL, not {url!r}")
    return url


def bridge_from_settings(ctx: ServiceContext) -> tuple[SlackBridge, RetryPolicy]:
    settings = channel_settings(ctx.config, CHANNEL)
    bridge = SlackBridge(api_url_of(settings), parse_tokens(read_secret(ctx.config, CHANNEL)))
    try:
        deadline = float(settings.get("send_deadline", 600.0))
    except ValueError:
        raise BridgeConfigError("[channels.slack] send_deadline must be a number of seconds") from None
    return bridge, RetryPolicy(deadline=deadline)


async def check_token(cfg: Config, environ: dict[str, str] | None = None) -> str:
    """For `clawden doctor`: auth.test with the bot token, and apps.connections.open with the app token."""
    settings = channel_settings(cfg, CHANNEL, environ)
    tokens = parse_tokens(read_secret(cfg, CHANNEL, environ))
    async with aiohttp.ClientSession() as session:
        who = await WebApi(api_url_of(settings), tokens.bot, session).call("auth.test")
        await WebApi(api_url_of(settings), tokens.app, session).call("apps.connections.open")
    return f"{who.get('user')} ({who.get('user_id')}) in {who.get('team')}; Socket Mode open"


async def main(ctx: ServiceContext) -> None:
    logging.getLogger("slack_sdk").setLevel(logging.WARNING)
    bridge, policy = bridge_from_settings(ctx)
    await serve(ctx, bridge, policy=policy, key_check=parse_tokens)
