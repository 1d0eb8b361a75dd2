"""The Telegram bridge: Bot API long polling in; messages, edits, reactions, files and buttons out (httpx).

Settings (`[channels.telegram]` in config.toml, or `CLAWDEN_TELEGRAM_<KEY>`): `api_url`,
`poll_timeout`, `send_deadline`, `typing_max`, `delete_webhook`. The bot token comes from
`CLAWDEN_TELEGRAM_TOKEN` or `keys/telegram` (mode 0600), never from config.toml.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from clawden.bridgeconfig import BridgeConfigError, channel_settings, number, read_secret
from clawden.bus import events as ev
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.channels.bridge import (
    CHUNK,
    Bridge,
    ButtonRef,
    Capabilities,
    GroupReach,
    Inbound,
    TooLarge,
    download_refused,
    save_stream,
)
from services.channels.pacing import Limit, Pacer
from services.channels.reach import Trouble, why_unreachable
from services.channels.retry import PlatformError, RetryPolicy
from services.channels.service import serve
from services.channels.split import utf16_len

log = logging.getLogger("clawden.channels.telegram")

CHANNEL = "telegram"
FILE_REF = "telegram-file:"  # an attachment's url until it is fetched: this and its file id
API_URL = "https://api.telegram.org"
CURSOR = "getUpdates.offset"
# Telegram numbers updates afresh (at random) after a week without any: an older cursor could
# skip every new update, so it is dropped; JetStream's dedupe covers what that replays.
CURSOR_STALE = 6 * 24 * 3600.0
# `edited_message`: people's edits reach the agent. Telegram sends bots no update for a deleted message
# (core.telegram.org/bots/api#update lists none), so a delete there never reaches it.
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
PHOTO_LIMIT = 10 * 1024 * 1024  # sendPhoto's cap; bigger images go as documents
# sendPhoto also refuses images whose width + height exceeds 10000 or whose sides differ more than 20
# times (core.telegram.org/bots/api#sendphoto), and bytes it cannot read as an image: those go as documents.
PHOTO_REFUSALS = ("PHOTO_INVALID_DIMENSIONS", "IMAGE_PROCESS_FAILED", "PHOTO_EXT_INVALID", "PHOTO_INVALID")
EXPIRED_BUTTON = "This button is no longer active."
ALBUM_WAIT = 1.0  # seconds an album last in a poll waits for its other parts (they come within moments)
MAX_CAPTION = 1024  # a photo's or file's caption, in UTF-16 units like the text


# Bot API FAQ, "My bot is hitting limits, how do I avoid this?" (core.telegram.org/bots/faq#my-bot-is-hitting-
# limits-how-do-i-avoid-this): in one chat avoid more than one message per second, in a group no more than
# 20 a minute, and overall about 30 a second (or a 429 with retry_after). Sends and edits are paced to them.
CHAT_LIMIT = Limit(1, 1.0)
GROUP_LIMIT = Limit(20, 60.0)
OVERALL_LIMIT = Limit(30, 1.0)
PACING_SLACK = 0.2  # seconds added to each window: a request is timed here, counted on Telegram's arrival


CAPABILITIES = Capabilities(
    max_text=4096,
    measure=utf16_len,
    threads=True,
    edits=True,
    reactions=True,
    files=True,
    cards=True,
    typing=True,
    typing_interval=4.0,  # "typing" shows for 5 s or until the bot posts
    max_file_bytes=50 * 1024 * 1024,
    max_download_bytes=20 * 1024 * 1024,  # Bot API upload/getFile caps
    # A send whose connection dropped after the request went out is sent once more. Telegram has no
    # idempotency key and no way for a bot to list what it posted, so the bridge cannot tell "posted,
    # answer lost" from "never arrived" (the common case: a keep-alive connection the server had already
    # closed). Once more turns a lost answer into a delivered one at the risk of one duplicate; a second
    # failure in a row is reported unconfirmed and not repeated, so a flapping link cannot post it many times.
    ambiguous_resends=1,
)


# --- the pure part: Telegram objects -> Clawden events --------------------------------------------------


@dataclass(frozen=True)
class BotIdentity:
    id: int
    username: str
    # getMe's can_read_all_group_messages: privacy mode is off (or was, when it joined a group).
    reads_all_groups: bool = False


# In privacy mode a group bot never sees a plain message, not even one that @mentions it, but it does
# see `/command@bot`: `/ask@bot <question>` is how a group talks to the agent then (and replying to
# one of the bot's messages). Bot API: Privacy mode (core.telegram.org/bots/features#privacy-mode).
ASK = "ask"


def group_reach(bot: BotIdentity) -> GroupReach:
    """What reaches the bot in a group under its privacy mode, and how to change it, in a person's words."""
    name = f"@{bot.username}"
    if bot.reads_all_groups:
        return GroupReach(
            "all",
            f"privacy mode off: in groups {name} gets every message (a wiring in mention "
            f"mode still answers only @mentions, /{ASK}@{bot.username} and replies to it); "
            f"a group it joined while privacy mode was on keeps that mode until the bot is "
            f"removed from it and added again",
        )
    return GroupReach(
        "addressed",
        f"privacy mode on: in groups {name} gets only /{ASK}@{bot.username} <text> "
        f"(or another /command@{bot.username}) and replies to its own messages, never "
        f"an @mention; to let it read every message: @BotFather, /setprivacy, Disable, "
        f"then remove the bot from each group and add it again (a group keeps the mode "
        f"the bot joined it with)",
    )


def asked(text: str, bot: BotIdentity) -> str | None:
    """The question in `/ask@bot <question>` (or a bare `/ask <question>`); None if it is not one."""
    match = re.match(rf"/{ASK}(?:@([A-Za-z0-9_]+))?(?:\s+|$)", text, re.IGNORECASE)
    if match is None or (match.group(1) is not None and match.group(1).lower() != bot.username.lower()):
        return None
    return text[match.end() :]


@dataclass(frozen=True)
class FileRef:
    file_id: str
    name: str
    mime: str
    size: int


def _ids(group: list[dict[str, Any]]) -> list[int]:
    return [int(u["update_id"]) for u in group]


def message_key(chat_id: int | str, message_id: int | str) -> str:
    """Telegram numbers messages per chat, so Clawden's id for one is `<chat_id>:<message_id>`."""
    return f"{chat_id}:{message_id}"


# The only emoji a bot may react with (Bot API: ReactionTypeEmoji, core.telegram.org/bots/api#reactiontypeemoji).
REACTIONS = (
    "👍",
    "👎",
    "❤",
    "🔥",
    "🥰",
    "👏",
    "😁",
    "🤔",
    "🤯",
    "😱",
    "🤬",
    "😢",
    "🎉",
    "🤩",
    "🤮",
    "💩",
    "🙏",
    "👌",
    "🕊",
    "🤡",
    "🥱",
    "🥴",
    "😍",
    "🐳",
    "❤\u200d🔥",
    "🌚",
    "🌭",
    "💯",
    "🤣",
    "⚡",
    "🍌",
    "🏆",
    "💔",
    "🤨",
    "😐",
    "🍓",
    "🍾",
    "💋",
    "🖕",
    "😈",
    "😴",
    "😭",
    "🤓",
    "👻",
    "👨\u200d💻",
    "👀",
    "🎃",
    "🙈",
    "😇",
    "😨",
    "🤝",
    "✍",
    "🤗",
    "🫡",
    "🎅",
    "🎄",
    "☃",
    "💅",
    "🤪",
    "🗿",
    "🆒",
    "💘",
    "🙉",
    "🦄",
    "😘",
    "💊",
    "🙊",
    "😎",
    "👾",
    "🤷\u200d♂",
    "🤷",
    "🤷\u200d♀",
    "😡",
)
_ALLOWED = frozenset(REACTIONS)
# Common choices Telegram refuses (REACTION_INVALID), and the allowed emoji nearest in meaning.
NEAREST = {
    "✅": "👌",
    "✔": "👌",
    "☑": "👌",
    "🆗": "👌",
    "👋": "🤗",
    "🚀": "🔥",
    "💪": "🔥",
    "🙌": "👏",
    "🎊": "🎉",
    "🥳": "🎉",
    "⭐": "🤩",
    "🌟": "🤩",
    "✨": "🤩",
    "😀": "😁",
    "😃": "😁",
    "😄": "😁",
    "😊": "😁",
    "🙂": "😁",
    "😅": "😁",
    "😂": "🤣",
    "♥": "❤",
    "💖": "❤",
    "💕": "❤",
    "😮": "🤯",
    "😲": "🤯",
    "😯": "😱",
    "❌": "👎",
    "🙁": "😢",
    "☹": "😢",
    "😔": "😢",
    "🤞": "🙏",
    "📝": "✍",
    "💡": "🤓",
    "🧐": "🤔",
    "😠": "😡",
}
_MODIFIERS = re.compile("[\ufe0f\U0001f3fb-\U0001f3ff]")  # the emoji presentation selector, skin tones


def allowed_reaction(emoji: str) -> str:
    """`emoji` as a reaction Telegram accepts: itself, without the selectors and skin tones Telegram's list
    lacks, or the nearest allowed one; refused with the list when there is none."""
    bare = _MODIFIERS.sub("", emoji)
    for candidate in (emoji, bare, NEAREST.get(bare, "")):
        if candidate in _ALLOWED:
            return candidate
    raise PlatformError(f"Telegram takes no {emoji} reaction; it accepts only {' '.join(REACTIONS)}", "permanent")


def platform_message_id(value: str) -> int | None:
    """The Telegram message number in `<chat_id>:<message_id>` (or a bare number)."""
    tail = value.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def entity_text(text: str, entity: dict[str, Any]) -> str:
    """Entity offsets count UTF-16 code units: slicing the str directly goes wrong after an emoji."""
    raw = text.encode("utf-16-le")
    start = int(entity.get("offset", 0)) * 2
    return raw[start : start + int(entity.get("length", 0)) * 2].decode("utf-16-le", errors="replace")


def addresses_bot(message: dict[str, Any], bot: BotIdentity) -> bool:
    """The bot is @mentioned, text-mentioned, commanded (`/cmd@bot`), or replied to."""
    text = message.get("text") or message.get("caption") or ""
    name = "@" + bot.username.lower()
    for entity in message.get("entities") or message.get("caption_entities") or []:
        kind = entity.get("type")
        if kind == "mention" and entity_text(text, entity).lower() == name:
            return True
        if kind == "text_mention" and (entity.get("user") or {}).get("id") == bot.id:
            return True
        if kind == "bot_command" and entity_text(text, entity).lower().endswith(name):
            return True
    replied = real_reply(message) or {}
    return bool((replied.get("from") or {}).get("id") == bot.id)


def real_reply(message: dict[str, Any]) -> dict[str, Any] | None:
    """The message this one answers, if someone chose to answer one: in a topic every message that replies to
    nothing carries the topic's `forum_topic_created` message as reply_to_message (core.telegram.org/bots/api#message),
    which is where it was posted, not what it answers."""
    replied = message.get("reply_to_message")
    if not replied or "forum_topic_created" in replied:
        return None
    return dict(replied)


def route_of(message: dict[str, Any]) -> ev.Route:
    chat = message["chat"]
    # Only topics are threads (in forum supergroups, and since Bot API 9.3 in private chats with the bot
    # when it has topics enabled); other replies in a supergroup also carry a thread id.
    thread = str(message["message_thread_id"]) if message.get("is_topic_message") else None
    return ev.Route(channel=CHANNEL, chat_id=str(chat["id"]), thread_id=thread)


def sender_of(message: dict[str, Any]) -> ev.Sender:
    # Bot API: Message.sender_chat (core.telegram.org/bots/api#message): a message sent on behalf of a chat
    # (an anonymous admin: the group itself; someone posting as a channel; a linked channel's post
    # forwarded to its discussion group) names that chat, and `from` holds a stand-in bot user
    # (GroupAnonymousBot, Channel_Bot) or Telegram's service account: the chat speaks, not a bot.
    chat = message.get("sender_chat")
    if chat is not None or message.get("from") is None:
        chat = chat or message["chat"]
        return ev.Sender(id=f"{CHANNEL}:chat:{chat['id']}", name=chat_name(chat))
    user = message["from"]
    name = " ".join(str(user[k]) for k in ("first_name", "last_name") if user.get(k)) or str(user.get("username", ""))
    return ev.Sender(id=f"{CHANNEL}:{user['id']}", name=name, is_bot=bool(user.get("is_bot")))


def chat_name(chat: dict[str, Any]) -> str:
    if chat.get("title"):
        return str(chat["title"])
    return " ".join(str(chat[k]) for k in ("first_name", "last_name") if chat.get(k)) or str(chat.get("username", ""))


def files_of(message: dict[str, Any]) -> list[FileRef]:
    """What a message carries that can be fetched: the largest photo size, or the one media file."""
    found: list[FileRef] = []
    if message.get("photo"):
        best = max(message["photo"], key=lambda p: (p.get("file_size", 0), p.get("width", 0)))
        found.append(
            FileRef(
                best["file_id"],
                f"photo-{best.get('file_unique_id', 'x')}.jpg",
                "image/jpeg",
                int(best.get("file_size", 0)),
            )
        )
    for kind in ("document", "audio", "voice", "video", "video_note", "animation"):
        item = message.get(kind)
        if kind == "document" and message.get("animation"):
            continue  # an animation also comes as a document, the same file (core.telegram.org/bots/api#message)
        if item:
            mime = str(item.get("mime_type") or "application/octet-stream")
            ext = mimetypes.guess_extension(mime) or ""
            name = str(item.get("file_name") or f"{kind}-{item.get('file_unique_id', 'x')}{ext}")
            found.append(FileRef(item["file_id"], name, mime, int(item.get("file_size", 0))))
    return found


def inbound_message(message: dict[str, Any], bot: BotIdentity) -> ev.InboundMessage | None:
    """A Telegram message as a Clawden inbound event; None for service messages (joins, pins…)."""
    text = str(message.get("text") or message.get("caption") or "")
    question = asked(text, bot)
    if question is not None:
        text = question  # the agent gets the question, not the command that carried it
    files = files_of(message)
    if not text and not files:
        return None
    chat = message["chat"]
    is_group = chat.get("type") in ("group", "supergroup")
    replied = real_reply(message)
    return ev.InboundMessage(
        route=route_of(message),
        message_id=message_key(chat["id"], message["message_id"]),
        sender=sender_of(message),
        text=text,
        sent_at=float(message.get("date", 0)),
        is_group=is_group,
        chat_name=chat_name(chat),
        mentioned=not is_group or question is not None or addresses_bot(message, bot),
        reply_to=message_key(chat["id"], replied["message_id"]) if replied else None,
        attachments=tuple(ev.Attachment(name=f.name, mime=f.mime, size=f.size) for f in files),
        supports_threads=bool(chat.get("is_forum") or message.get("is_topic_message")),
        # A topic is a conversation of its own, in a forum and in a private chat alike (Bot API 9.3:
        # core.telegram.org/bots/api#message, is_topic_message): each gets its own session.
        topic=bool(message.get("is_topic_message")),
    )


def inbound_edit(update: dict[str, Any], bot: BotIdentity) -> ev.InboundEdit | None:
    """An `edited_message` update (the whole message as it now reads, with `edit_date`:
    core.telegram.org/bots/api#update) as an edit of the message it was; None when nothing readable is
    left (a live location moving, a caption removed). The update id tells two edits of one message apart."""
    event = inbound_message(update["edited_message"], bot)
    if event is None:
        return None
    return ev.InboundEdit(
        route=event.route,
        message_id=event.message_id,
        edit_id=str(update["update_id"]),
        sender=event.sender,
        text=event.text,
        edited_at=float(update["edited_message"].get("edit_date") or event.sent_at),
    )


def migration_of(message: dict[str, Any]) -> tuple[int, int] | None:
    """(old id, new id) from either service message of a group's upgrade to a supergroup: the old group
    gets `migrate_to_chat_id`, the new supergroup `migrate_from_chat_id` (core.telegram.org/bots/api#message)."""
    chat = int(message["chat"]["id"])
    if message.get("migrate_to_chat_id"):
        return chat, int(message["migrate_to_chat_id"])
    if message.get("migrate_from_chat_id"):
        return int(message["migrate_from_chat_id"]), chat
    return None


def albums(updates: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Updates as people see them: the parts of an album (consecutive messages of one chat sharing a
    `media_group_id`, core.telegram.org/bots/api#message) together, every other update alone."""
    groups: list[list[dict[str, Any]]] = []
    for update in updates:
        key = _album_key(update)
        if key is not None and groups and _album_key(groups[-1][-1]) == key:
            groups[-1].append(update)
        else:
            groups.append([update])
    return groups


def _album_key(update: dict[str, Any]) -> tuple[Any, str] | None:
    message = update.get("message") or {}
    album = message.get("media_group_id")
    return (message.get("chat", {}).get("id"), str(album)) if album else None


def with_files(event: ev.InboundMessage, refs: list[FileRef]) -> ev.InboundMessage:
    """The message with each attachment naming its file (`FILE_REF` and the file id), for `fetch_file`."""
    attachments = tuple(
        msgspec.structs.replace(a, url=FILE_REF + ref.file_id) for a, ref in zip(event.attachments, refs, strict=True)
    )
    return msgspec.structs.replace(event, attachments=attachments)


def album_message(parts: list[dict[str, Any]], bot: BotIdentity) -> tuple[ev.InboundMessage | None, list[FileRef]]:
    """One event for an album: the first part's id, the caption one of its parts carries (Telegram shows
    it under the album), and every part's file."""
    captioned = next((p for p in parts if p.get("caption")), parts[0])
    event = inbound_message(captioned | {"message_id": parts[0]["message_id"]}, bot)
    refs = [ref for part in parts for ref in files_of(part)]
    if event is None:
        return None, []
    attachments = tuple(ev.Attachment(name=f.name, mime=f.mime, size=f.size) for f in refs)
    return msgspec.structs.replace(event, attachments=attachments), refs


def inline_keyboard(rows: list[list[ButtonRef]]) -> dict[str, Any]:
    return {"inline_keyboard": [[{"text": b.label, "callback_data": b.data} for b in row] for row in rows]}


def chat_param(chat_id: str) -> int | str:
    try:
        return int(chat_id)
    except ValueError:
        if chat_id.startswith("@"):
            return chat_id  # a public channel's username
        raise PlatformError(f"not a Telegram chat id: {chat_id!r}", "permanent") from None


# --- the Bot API over HTTP ------------------------------------------------------------------------------


class TelegramError(PlatformError):
    def __init__(
        self,
        description: str,
        kind: Any,
        *,
        code: int = 0,
        retry_after: float | None = None,
        migrate_to: int | None = None,
        connection: bool = False,
    ) -> None:
        super().__init__(description, kind, code=code, retry_after=retry_after, connection=connection)
        self.migrate_to = migrate_to


class BotAPI:
    """Calls `<api_url>/bot<token>/<method>`: JSON in, `result` out, every failure a classified TelegramError."""

    def __init__(self, api_url: str, token: str, timeout: float = 30.0) -> None:
        base = api_url.rstrip("/")
        self.methods = f"{base}/bot{token}/"
        self.files = f"{base}/file/bot{token}/"
        self.timeout = timeout
        self.client = self._client()

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout, connect=10.0),
            limits=httpx.Limits(max_connections=4, keepalive_expiry=30.0),
        )

    async def reset(self) -> None:
        old, self.client = self.client, self._client()
        await old.aclose()

    async def close(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> Any:
        url = self.methods + method
        try:
            if files:
                form = {k: str(v) for k, v in (params or {}).items()}
                response = await self.client.post(url, data=form, files=files, timeout=timeout or self.timeout)
            else:
                response = await self.client.post(url, json=params or {}, timeout=timeout or self.timeout)
        except (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.PoolTimeout,
            httpx.WriteError,
            httpx.WriteTimeout,
        ) as exc:
            # Certainly unsent: no connection (refused, DNS, TLS), no free one, or the request was cut off
            # while being written, so Telegram never had all of it. Tried again like a 5xx.
            raise TelegramError(f"cannot reach Telegram ({type(exc).__name__})", "transient", connection=True) from None
        except httpx.TransportError as exc:
            # Ambiguous: the request went out and the connection dropped before the answer (ReadError,
            # RemoteProtocolError, ReadTimeout). Telegram may have posted it; see CAPABILITIES.ambiguous_resends.
            raise TelegramError(
                f"Telegram's answer was lost ({type(exc).__name__})", "unknown", connection=True
            ) from None
        return _result(response)

    async def download(self, file_path: str, dest: Path, limit: int) -> int:
        """Streams a file to `dest` (at most `limit` bytes); returns its size."""
        try:
            async with self.client.stream("GET", self.files + file_path) as response:
                if response.status_code != 200:
                    raise download_refused("Telegram", response.status_code)
                return await save_stream(response.aiter_bytes(CHUNK), dest, limit)
        except httpx.TransportError as exc:
            raise TelegramError(f"the download from Telegram failed ({type(exc).__name__})", "transient") from None


def _result(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("ok") is True:
        return body.get("result")
    if not isinstance(body, dict):
        body = {}
    code = int(body.get("error_code") or response.status_code)
    description = str(body.get("description") or f"HTTP {response.status_code}")
    parameters = body.get("parameters") or {}
    retry_after: float | None = None
    if "retry_after" in parameters:
        retry_after = float(parameters["retry_after"])
    elif response.headers.get("retry-after", "").isdigit():
        retry_after = float(response.headers["retry-after"])
    # 401/404 mean the token (or api_url) is wrong, not the message: an operator can fix that, so they
    # are retried until the send deadline like an outage, instead of failing every message at once.
    kind = "rate_limited" if code == 429 else "transient" if code >= 500 or code in (401, 404, 409) else "permanent"
    raise TelegramError(
        description, kind, code=code, retry_after=retry_after, migrate_to=parameters.get("migrate_to_chat_id")
    )


def poll_trouble(exc: TelegramError) -> Trouble:
    """What a failed getUpdates means to a person, for the service's `trouble` (`clawden status`)."""
    if exc.code == 409 and "webhook" in exc.description.lower():
        return Trouble(
            "a webhook is set for this bot",
            problem="Telegram refuses polling",
            outcome="no messages come in until it is removed: deleteWebhook, or delete_webhook = true "
            "under [channels.telegram]",
        )
    if exc.code == 409:
        return Trouble(
            "another process polls this bot",
            problem="Telegram refuses polling",
            outcome="messages may go to that process instead: run one telegram bridge per bot token",
        )
    if exc.code in (401, 404):
        return Trouble(
            f"{exc.code} {exc.description}",
            problem="Telegram refuses the bot token",
            outcome="nothing comes in or goes out until keys/telegram holds the token @BotFather gave you; the bridge "
            "notices the new file and restarts with it",
        )
    if exc.code == 429:
        wait = f" {exc.retry_after:.0f}s" if exc.retry_after is not None else ""
        return Trouble(f"it asks the bot to wait{wait}", problem="Telegram is holding the bot back")
    if exc.connection:
        return Trouble(why_unreachable(exc))
    answer = exc.description if exc.description.startswith("HTTP ") else f"{exc.code} {exc.description}"
    return Trouble(f"it answers {answer}")


# --- the bridge -----------------------------------------------------------------------------------------


class TelegramBridge(Bridge):
    name = CHANNEL
    platform = "Telegram"
    capabilities = CAPABILITIES

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        poll_timeout: float = 25.0,
        poll_grace: float = 10.0,
        delete_webhook: bool = False,
    ) -> None:
        self.api = BotAPI(api_url, token)
        # Long polls get their own connection pool, so a wedged poll can be dropped without
        # touching sends in flight.
        self.poller = BotAPI(api_url, token)
        self.poll_timeout = poll_timeout
        self.poll_grace = poll_grace
        self.delete_webhook = delete_webhook
        self.me: BotIdentity | None = None
        # Groups Telegram upgraded to supergroups (old id -> new id), learnt from a service message or a
        # refused send; the router is told through `inbound` (the listener's), which moves the wiring.
        self.moved: dict[int, int] = {}
        self._inbound: Inbound | None = None
        self.pacer = Pacer(CHAT_LIMIT, GROUP_LIMIT, OVERALL_LIMIT, slack=PACING_SLACK)
        # Every HTTP call ends after at most poll_timeout + poll_grace: a listener silent for longer
        # is stuck somewhere no timeout reaches.
        self.deaf_after = poll_timeout + poll_grace + 30.0

    async def start(self) -> TelegramError | None:
        try:
            await self._identify()
        except TelegramError as exc:
            if exc.kind == "permanent":
                raise
            # Telegram unreachable right now: outbound work queues up, the listener keeps trying, and the service
            # says it cannot reach Telegram until a poll gets through.
            log.warning("cannot reach Telegram yet (%s); will keep trying", exc.description)
            return exc
        return None

    async def _identify(self) -> BotIdentity:
        try:
            me = await self.api.call("getMe", timeout=15.0)
        except TelegramError as exc:
            if exc.code in (401, 404):
                raise BridgeConfigError(
                    f"Telegram rejected the bot token ({exc.code} {exc.description}); put the token @BotFather "
                    "gave you in keys/telegram (mode 0600) or CLAWDEN_TELEGRAM_TOKEN"
                ) from None
            raise
        self.me = BotIdentity(int(me["id"]), str(me.get("username", "")), bool(me.get("can_read_all_group_messages")))
        self.group_reach = group_reach(self.me)
        log.info("telegram bot @%s (id %d) connected; %s", self.me.username, self.me.id, self.group_reach.note)
        return self.me

    # --- in -------------------------------------------------------------------------------------

    async def listen(self, inbound: Inbound) -> None:
        self._inbound = inbound
        offset = await self._saved_offset(inbound)
        held: list[int] | None = None  # the update ids of an album waiting for its other parts
        failures = 0
        first_failure = 0.0
        while True:
            try:
                me = self.me or await self._identify()
                params: dict[str, Any] = {
                    "timeout": int(self.poll_timeout),
                    "limit": 100,
                    "allowed_updates": ALLOWED_UPDATES,
                }
                if offset is not None:
                    params["offset"] = offset  # also tells Telegram everything before it is stored
                updates = await self.poller.call("getUpdates", params, timeout=self.poll_timeout + self.poll_grace)
            except TelegramError as exc:
                failures += 1
                first_failure = first_failure or time.monotonic()
                inbound.reach.failed(poll_trouble(exc))  # at once: Telegram says why, unlike a bare pause
                await inbound.pause(await self._poll_failed(exc, failures))
                continue
            inbound.alive()
            if failures:
                log.info(
                    "telegram polling recovered after %d failed polls (%.0fs)",
                    failures,
                    time.monotonic() - first_failure,
                )
                failures, first_failure = 0, 0.0
            if offset is not None and updates and (first := min(_ids(updates))) > offset:
                offset = await self._expired(first - offset, first, inbound)
            groups = albums(updates)
            if groups and _album_key(groups[-1][0]) is not None and held != _ids(groups[-1]):
                # An album's parts arrive as separate updates within moments, and a poll may end between
                # them: the album last in a batch waits ALBUM_WAIT for more parts, unconfirmed (so the next
                # poll hands it back with whatever joined it), and is published once nothing more came.
                held = _ids(groups.pop())
            else:
                held = None
            for group in groups:
                await self._handle(group, me, inbound)
            handled = [u for group in groups for u in group]
            if handled:
                offset = max(int(u["update_id"]) for u in handled) + 1
                # Only now: every update before `offset` is in JetStream (or was not for us).
                await inbound.state.set_cursor(CURSOR, str(offset))
            if held is not None:
                await inbound.pause(ALBUM_WAIT)

    async def _expired(self, lost: int, first: int, inbound: Inbound) -> int:
        """Telegram keeps an update 24 h at most (core.telegram.org/bots/api#getupdates) and numbers them
        one after another: the first update after a long outage having a higher id than the saved offset
        means the ones between expired unread. Their content is gone, so who wrote cannot be told; the
        owner is told (`MessagesLost`, which the router turns into a notice), and the log and `clawden
        status` count it. Returns the new offset (the gap is skipped)."""
        log.warning(
            "Telegram dropped %d update(s) the bridge never fetched (it keeps them 24 hours at most, and "
            "the bridge was away longer): those messages were not answered, and who sent them is unknown",
            lost,
        )
        saved = await inbound.state.cursor(CURSOR)
        # Before the cursor moves: a crash in between finds the same gap again, under the same key.
        await inbound.publish(
            ev.MessagesLost(
                channel=CHANNEL,
                marker=str(first),
                count=lost,
                since=saved[1] if saved else 0.0,
                detected_at=time.time(),
                why="Telegram keeps messages for a bot 24 hours, and the bot was away longer",
            )
        )
        inbound.stats.expired += lost
        await inbound.state.set_cursor(CURSOR, str(first))  # nothing below it exists any more
        return first

    async def _saved_offset(self, inbound: Inbound) -> int | None:
        saved = await inbound.state.cursor(CURSOR)
        if saved is None:
            return None
        value, at = saved
        if time.time() - at > CURSOR_STALE:
            log.info(
                "the saved getUpdates offset is %.0f days old; starting from what Telegram holds",
                (time.time() - at) / 86400,
            )
            return None
        return int(value)

    async def _poll_failed(self, exc: TelegramError, failures: int) -> float:
        """Log a failed poll (not every one of a long outage) and say how long to wait."""
        delay = exc.retry_after if exc.retry_after is not None else min(30.0, 0.5 * 2 ** min(failures, 6))
        if exc.code == 409 and "webhook" in exc.description.lower():
            if self.delete_webhook:
                log.warning("a webhook was set for this bot; deleting it (delete_webhook = true)")
                try:
                    await self.api.call("deleteWebhook", {"drop_pending_updates": False})
                    return 0.0
                except TelegramError as again:
                    log.error("could not delete the webhook: %s", again.description)
            log.error(
                "a webhook is set for this bot, so Telegram refuses polling: remove it (deleteWebhook) "
                "or set delete_webhook = true under [channels.telegram]"
            )
            return max(delay, 30.0)
        if exc.code == 409:
            log.error(
                "another process is polling this bot (%s): run one telegram bridge per bot token", exc.description
            )
            return max(delay, 5.0)
        if exc.code in (401, 404):
            log.error("Telegram no longer accepts the bot token (%d %s)", exc.code, exc.description)
            return 60.0
        if failures in (1, 10) or failures % 100 == 0:
            log.warning("telegram poll failed (%s), %d in a row; retrying in %.1fs", exc.description, failures, delay)
        return delay

    async def _handle(self, group: list[dict[str, Any]], me: BotIdentity, inbound: Inbound) -> None:
        """One update, or an album's updates together."""
        update = group[0]
        try:
            if len(group) > 1:
                event, refs = album_message([u["message"] for u in group], me)
                if event is not None:
                    await inbound.deliver(with_files(event, refs))
            elif "message" in update and (moved := migration_of(update["message"])) is not None:
                await self._moved(*moved, inbound)
            elif "message" in update:
                event = inbound_message(update["message"], me)
                if event is not None:
                    await inbound.deliver(with_files(event, files_of(update["message"])))
            elif "edited_message" in update:
                if (edit := inbound_edit(update, me)) is not None:
                    await inbound.publish(edit)
            elif "callback_query" in update:
                await self._click(update["callback_query"], inbound)
        except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
            # One malformed update must not wedge the poller on it forever.
            log.error("skipping telegram update %s that does not parse: %r", update.get("update_id"), exc)

    async def _moved(self, old: int, new: int, inbound: Inbound | None = None) -> None:
        """A group became a supergroup: sends go to the new id from now on, and the router moves the chat's
        wiring, sessions and approvals (Bot API: Message.migrate_to_chat_id, core.telegram.org/bots/api#message)."""
        first = self.moved.get(old) != new
        self.moved[old] = new
        inbound = inbound or self._inbound
        if inbound is None:
            return  # no listener yet: the service message in the group tells the router when it runs
        await inbound.publish(
            ev.ChatMoved(channel=CHANNEL, old_chat_id=str(old), new_chat_id=str(new), sent_at=time.time())
        )
        if first:
            log.warning("telegram group %d became supergroup %d; its chat moves with it", old, new)

    async def fetch_file(self, attachment: ev.Attachment, dest: Path) -> None:
        """getFile for the path, then the file itself, streamed (a slow download is not a deaf listener)."""
        file_id = attachment.url.removeprefix(FILE_REF)
        try:
            info = await self.api.call("getFile", {"file_id": file_id})
        except TelegramError as exc:
            if "file is too big" in exc.description:
                raise TooLarge(exc.description) from None
            raise
        if not info.get("file_path"):
            # File.file_path is optional (core.telegram.org/bots/api#file): absent for a file over the 20 MB a bot
            # may download, whatever size the message claimed.
            raise TooLarge("Telegram gave no path for it")
        await self.api.download(str(info["file_path"]), dest, self.capabilities.max_download_bytes)

    def too_large(self) -> str:
        return "Telegram lets bots download files of at most 20 MB"

    async def _click(self, query: dict[str, Any], inbound: Inbound) -> None:
        message = query.get("message")
        data = query.get("data")
        known = False
        if message and message.get("chat") and data:
            known = await inbound.click(
                route_of(message),
                str(data),
                action_id=f"cb:{query['id']}",
                sender=sender_of(query),
                message_id=message_key(message["chat"]["id"], message["message_id"]),
            )
        params: dict[str, Any] = {"callback_query_id": query["id"]}
        if not known:
            params["text"] = EXPIRED_BUTTON
        try:
            # Stops the button's spinner; a click replayed after a restart is simply too old by now.
            await self.api.call("answerCallbackQuery", params, timeout=10.0)
        except TelegramError as exc:
            log.debug("answerCallbackQuery failed: %s", exc.description)

    # --- out ------------------------------------------------------------------------------------

    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        params = self._where(route)
        params["text"] = text
        target = platform_message_id(reply_to) if reply_to else None
        if target is not None:
            params["reply_parameters"] = {"message_id": target, "allow_sending_without_reply": True}
        if buttons:
            params["reply_markup"] = inline_keyboard(buttons)
        result = await self._call_in_chat("sendMessage", params)
        return message_key(result["chat"]["id"], result["message_id"])

    async def send_file(self, route: ev.Route, path: Path, *, key: str) -> str:
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = await asyncio.to_thread(path.read_bytes)
        params = self._where(route)
        upload = (path.name, data, mime)
        if mime.startswith("image/") and len(data) <= PHOTO_LIMIT:
            try:
                result = await self._call_in_chat("sendPhoto", params, files={"photo": upload})
                return message_key(result["chat"]["id"], result["message_id"])
            except TelegramError as exc:
                if not any(word in exc.description for word in PHOTO_REFUSALS):
                    raise
                # Refused for certain (nothing was posted): a tall screenshot still arrives, as a file.
                log.info("telegram refused %s as a photo (%s); sending it as a file", path.name, exc.description)
        result = await self._call_in_chat("sendDocument", params, files={"document": upload})
        return message_key(result["chat"]["id"], result["message_id"])

    async def edit(self, route: ev.Route, target: str, text: str, buttons: list[list[ButtonRef]]) -> None:
        message_id = platform_message_id(target)
        if message_id is None:
            raise PlatformError(f"not a Telegram message id: {target!r}", "permanent")
        params = {
            "chat_id": self._chat_of(route, target),
            "message_id": message_id,
            "text": text or "…",
            "reply_markup": inline_keyboard(buttons),
        }  # no buttons: the old ones go
        try:
            try:
                await self._call_on_message("editMessageText", params)
            except TelegramError as exc:
                if "no text in the message" not in exc.description:
                    raise
                # A message with a photo or a file (the last part of one sent with files) has a caption
                # instead (core.telegram.org/bots/api#editmessagecaption); nothing was changed yet.
                if utf16_len(text) > MAX_CAPTION:
                    raise TelegramError(
                        f"the message is a file, whose caption holds at most {MAX_CAPTION} "
                        f"characters; the edit has {utf16_len(text)}",
                        "permanent",
                    ) from None
                caption = {k: v for k, v in params.items() if k != "text"} | {"caption": text}
                await self._call_on_message("editMessageCaption", caption)
        except TelegramError as exc:
            if "message is not modified" not in exc.description:
                raise  # "not modified" is an edit applied twice: the outcome we wanted

    async def react(self, route: ev.Route, target: str, emoji: str) -> None:
        message_id = platform_message_id(target)
        if message_id is None:
            raise PlatformError(f"not a Telegram message id: {target!r}", "permanent")
        emoji = allowed_reaction(emoji)
        await self._call_on_message(
            "setMessageReaction",
            {
                "chat_id": self._chat_of(route, target),
                "message_id": message_id,
                "reaction": [{"type": "emoji", "emoji": emoji}],
            },
        )

    async def delete(self, route: ev.Route, target: str) -> None:
        message_id = platform_message_id(target)
        if message_id is None:
            raise PlatformError(f"not a Telegram message id: {target!r}", "permanent")
        try:
            await self._call_on_message(
                "deleteMessage", {"chat_id": self._chat_of(route, target), "message_id": message_id}
            )
        except TelegramError as exc:
            if "message to delete not found" not in exc.description:
                raise  # "can't be deleted" (over 48 h old): delivery empties the part instead
            # Gone already: a delete whose answer was lost, tried again.

    def pace(self, route: ev.Route) -> float:
        chat = self._where(route)["chat_id"]
        # Private chats have the user's (positive) id; groups, supergroups and channels negative ones, or
        # a channel's @username (core.telegram.org/bots/api#chat).
        group = not isinstance(chat, int) or chat < 0
        now = time.monotonic()
        return self.pacer.reserve(str(chat), group=group, now=now) - now

    async def typing(self, route: ev.Route) -> None:
        await self._call_in_chat("sendChatAction", self._where(route) | {"action": "typing"}, timeout=10.0)

    def _chat_of(self, route: ev.Route, target: str) -> int | str:
        """The chat a message lives in: the one its id names (`<chat>:<message>`), else the route's."""
        head, _, tail = target.rpartition(":")
        return chat_param(head) if head and tail.isdigit() else chat_param(route.chat_id)

    def _where(self, route: ev.Route) -> dict[str, Any]:
        chat = chat_param(route.chat_id)
        params: dict[str, Any] = {"chat_id": self.moved.get(chat, chat) if isinstance(chat, int) else chat}
        if route.thread_id and route.thread_id.isdigit():
            params["message_thread_id"] = int(route.thread_id)
        return params

    async def _call_in_chat(
        self,
        method: str,
        params: dict[str, Any],
        files: dict[str, tuple[str, bytes, str]] | None = None,
        timeout: float | None = None,
    ) -> Any:
        try:
            return await self.api.call(method, params, files=files, timeout=timeout)
        except TelegramError as exc:
            if exc.migrate_to is None:
                raise
            # Bot API: "group chat was upgraded to a supergroup chat" with parameters.migrate_to_chat_id
            # (core.telegram.org/bots/api#responseparameters): nothing was sent; it goes to the new id.
            await self._moved(int(params["chat_id"]), int(exc.migrate_to))
            return await self.api.call(method, params | {"chat_id": int(exc.migrate_to)}, files=files, timeout=timeout)

    async def _call_on_message(self, method: str, params: dict[str, Any]) -> Any:
        try:
            return await self.api.call(method, params)
        except TelegramError as exc:
            if exc.migrate_to is None:
                raise
            # A message of the group before its upgrade keeps its old chat, which the API no longer serves.
            await self._moved(int(params["chat_id"]), int(exc.migrate_to))
            raise TelegramError(
                f"the group became a supergroup (id {exc.migrate_to}); Telegram no longer lets the "
                f"bot change messages from before the upgrade",
                "permanent",
                code=exc.code,
            ) from None

    async def reconnect(self) -> None:
        await self.poller.reset()

    async def close(self) -> None:
        await self.api.close()
        await self.poller.close()


# --- the service ------------------------------------------------------------------------------------------


def bridge_from_settings(ctx: ServiceContext) -> tuple[TelegramBridge, RetryPolicy, float]:
    settings = channel_settings(ctx.config, CHANNEL)
    api_url = settings.get("api_url", API_URL)
    if not re.match(r"^https?://[^/\s]+", api_url):
        raise BridgeConfigError(f"[channels.telegram] api_url must be an http(s) URL, not {api_url!r}")
    token = read_secret(ctx.config, CHANNEL)
    bridge = TelegramBridge(
        api_url,
        token,
        poll_timeout=number(CHANNEL, settings, "poll_timeout", 25.0),
        poll_grace=number(CHANNEL, settings, "poll_grace", 10.0),
        delete_webhook=settings.get("delete_webhook", "").lower() in ("1", "true", "yes"),
    )
    policy = RetryPolicy(deadline=number(CHANNEL, settings, "send_deadline", 600.0))
    return bridge, policy, number(CHANNEL, settings, "typing_max", 120.0)


async def check_token(cfg: Config, environ: dict[str, str] | None = None) -> str:
    """For `clawden doctor`: getMe with the token and API URL this bridge would use; the bot's @name."""
    settings = channel_settings(cfg, CHANNEL, environ)
    api = BotAPI(settings.get("api_url", API_URL), read_secret(cfg, CHANNEL, environ), timeout=10.0)
    try:
        me = await api.call("getMe")
    finally:
        await api.close()
    bot = BotIdentity(int(me["id"]), str(me.get("username", "")), bool(me.get("can_read_all_group_messages")))
    return f"@{bot.username}; {group_reach(bot).note}"


async def main(ctx: ServiceContext) -> None:
    bridge, policy, typing_max = bridge_from_settings(ctx)
    await serve(ctx, bridge, policy=policy, typing_horizon=typing_max)
