"""A fake Telegram Bot API on loopback, speaking the real wire format, with faults to inject, for tests.

It keeps a small world (the bot, users, chats with per-chat message numbers, pending updates) and
answers the Bot API methods a bridge uses: getMe, getUpdates (long polling, offsets, 409 when a
second poll arrives or a webhook is set), sendMessage, sendPhoto, sendDocument, editMessageText,
editMessageCaption, deleteMessage, setMessageReaction, sendChatAction, answerCallbackQuery, getFile
(+ /file/bot<token>/...), getWebhookInfo, setWebhook, deleteWebhook. Errors carry `error_code`,
`description` and `parameters` (`retry_after`, `migrate_to_chat_id`) as Telegram sends them.

It is as strict as Telegram where a bridge can go wrong, each rule citing the Bot API section it
comes from: privacy mode in groups (on by default, as for a new bot; `set_privacy`, `readd`), a group's
upgrade to a supergroup (`migrate`), photos it refuses (dimensions, ratio, unreadable bytes), captions
instead of text on media, stand-in senders for anonymous admins and channels (`send(as_chat=...)`),
albums (`send_album`), updates dropped unfetched after 24 h (`clock=Clock()`, then `advance`), topics in
forums and private chats (`topic`), no first message to a user who never wrote, callback answers that
expire, flood limits (`flood_limits=True`).

    fake = FakeTelegram(); fake.start_in_thread()
    ada = fake.user("Ada"); chat = fake.private_chat(ada)
    fake.send(chat, ada, "hello"); fake.inject("sendMessage", Error(429, retry_after=1), Drop())
    python -m tests.fakes.telegram --port 8081      # prints its URL and token, runs until killed
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import itertools
import json
import re
import struct
import threading
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11

from tests.fakes.threaded import ThreadedServer, serve_from_command_line

TOKEN = "7012345678:AAFakeTokenForTestsOnly-abcdefghijklmn"
# The stand-in senders of messages sent on behalf of a chat (Bot API: Message.from and sender_chat,
# core.telegram.org/bots/api#message): an anonymous group admin, someone posting as a channel, and
# Telegram's service account that forwards a linked channel's posts to its discussion group.
ANONYMOUS_ADMIN = {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}
CHANNEL_BOT = {"id": 136817688, "is_bot": True, "first_name": "Channel", "username": "Channel_Bot"}
TELEGRAM_SERVICE = {"id": 777000, "is_bot": False, "first_name": "Telegram"}
MAX_TEXT = 4096
MAX_CAPTION = 1024
DELETE_WINDOW = 48 * 3600.0
MEDIA_KINDS = ("photo", "document", "audio", "video", "animation", "voice")
DOWNLOAD_LIMIT = 20 * 1024 * 1024
UPLOAD_LIMIT = 50 * 1024 * 1024
PHOTO_LIMIT = 10 * 1024 * 1024
# Every emoji a bot may react with, and nothing else (Bot API: ReactionTypeEmoji,
# core.telegram.org/bots/api#reactiontypeemoji): another one is REACTION_INVALID. Written out here, not
# imported from the bridge, so the bridge cannot loosen what the fake accepts.
REACTIONS = frozenset(
    [
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
    ]
)
_OBJECT_PARAMS = {"reply_markup", "reply_parameters", "allowed_updates", "reaction", "entities", "link_preview_options"}
# Bot API: getUpdates (core.telegram.org/bots/api#getupdates): "incoming updates are stored on the server
# until the bot receives them either way, but they will not be kept longer than 24 hours". The update ids
# they held are not reused: the next update a bot gets after such a gap has a higher id than its offset.
UPDATE_LIFETIME = 24 * 3600.0
CALLBACK_ANSWER_WINDOW = 15.0  # seconds a callback query may still be answered (see _answer_query)
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)


# --- faults -----------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What one matching request gets instead of its normal answer."""


@dataclass
class Error(Fault):
    """A Bot API error body; the request is not carried out."""

    status: int
    description: str = ""
    retry_after: int | None = None

    def body(self) -> dict[str, Any]:
        text = self.description or {
            429: f"Too Many Requests: retry after {self.retry_after or 1}",
            500: "Internal Server Error",
            502: "Bad Gateway",
        }.get(self.status, "Error")
        out: dict[str, Any] = {"ok": False, "error_code": self.status, "description": text}
        if self.status == 429:
            out["parameters"] = {"retry_after": self.retry_after or 1}
        return out


@dataclass
class BadGateway(Fault):
    """What Telegram's front proxy sends when the Bot API is down: an HTML 502."""


@dataclass
class Drop(Fault):
    """The connection closes without an answer; with `after_processing` the request took effect first."""

    after_processing: bool = False


@dataclass
class Hang(Fault):
    """The request is held and never answered (the client has to time out); nothing happens."""


@dataclass
class Held(Fault):
    """The request takes effect (the chat shows the message), then its answer is held until the server stops:
    the client never learns that the platform took it. `taken` is set once it has."""

    taken: threading.Event = field(default_factory=threading.Event)


@dataclass
class Delay(Fault):
    """The request takes effect after `seconds`, then is answered (if the client still listens)."""

    seconds: float


class _Refused(Exception):
    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


@dataclass(frozen=True)
class Call:
    method: str
    params: dict[str, Any]
    at: float
    outcome: str  # "ok", "error <code>", or the fault's name


@dataclass
class _Chat:
    info: dict[str, Any]
    next_id: int = 1
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    bot_sent: list[int] = field(default_factory=list)  # message ids in the order the bot sent them
    blocked: tuple[int, str] | None = None
    migrated_to: int | None = None
    typing: list[float] = field(default_factory=list)
    # Bot API: Privacy mode (core.telegram.org/bots/features#privacy-mode). A group keeps the mode the
    # bot had when it joined: a change in @BotFather applies once the bot is removed and re-added.
    bot_reads_all: bool = True
    bot_admin: bool = False
    topics: dict[int, dict[str, Any]] = field(default_factory=dict)  # thread id -> its forum_topic_created message
    sends: list[float] = field(default_factory=list)  # when the bot posted here, for the flood limits


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG, GIF, WebP (VP8X) or JPEG header, as Telegram reads an upload; None if
    the bytes are none of these."""
    try:
        return _image_size(data)
    except struct.error:  # cut short
        return None


def _image_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if data[:2] == b"\xff\xd8":
        at = 2
        while at + 9 <= len(data) and data[at] == 0xFF:
            marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
                height, width = struct.unpack(">HH", data[at + 5 : at + 9])
                return width, height
            at += 2 + length
    return None


def png(width: int, height: int) -> bytes:
    """A real (black, greyscale) PNG of this size, for tests that send images."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"".join(b"\x00" + bytes(width) for _ in range(height)), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def auto_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram's servers find in plain text a user sends: @mentions and /commands."""
    found: list[dict[str, Any]] = []
    for match in re.finditer(r"(?<![\w@])@[A-Za-z0-9_]{5,32}|(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{5,32})?", text):
        kind = "mention" if match.group().startswith("@") else "bot_command"
        found.append({"type": kind, "offset": utf16_len(text[: match.start()]), "length": utf16_len(match.group())})
    return found


class Clock:
    """A clock a test moves by hand (`advance`), for rules that take hours: the fake never sleeps for them."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeTelegram(ThreadedServer):
    """The fake server. World-building and inspection methods are safe to call from any thread.
    `clock` (wall-clock seconds) dates messages and ages updates; pass a `Clock` to move time by hand."""

    def __init__(
        self,
        token: str = TOKEN,
        bot_username: str = "clawden_test_bot",
        *,
        privacy: bool = True,
        clock: Callable[[], float] = time.time,
        private_topics: bool = False,
        flood_limits: bool = False,
    ) -> None:
        self.token = token
        self.clock = clock
        self.flood_limits = flood_limits  # off by default: most tests send faster than Telegram allows
        self._sends: list[float] = []  # when the bot's messages were posted, every chat
        bot_id = int(token.split(":", 1)[0])
        # Bot API: getMe, User.can_read_all_group_messages (core.telegram.org/bots/api#user) is true
        # when privacy mode is off; bots are created with privacy mode on.
        self.bot: dict[str, Any] = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Clawden",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": not privacy,
            "supports_inline_queries": False,
            # Bot API 9.3: User.has_topics_enabled (core.telegram.org/bots/api#user): forum topic
            # mode is on for the bot's private chats (set in @BotFather).
            "has_topics_enabled": private_topics,
        }
        self.withheld: list[dict[str, Any]] = []  # group messages privacy mode kept from the bot
        self.calls: list[Call] = []
        self.webhook_url = ""
        self.confirmed_offset = 0  # every update below this has been confirmed by a getUpdates offset
        self._lock = threading.RLock()
        self._chats: dict[int, _Chat] = {}
        self._users: dict[int, dict[str, Any]] = {}
        self._updates: list[dict[str, Any]] = []
        self._update_at: dict[int, float] = {}  # update_id -> when it was created, by `clock`
        self.expired: list[dict[str, Any]] = []  # updates dropped unfetched after UPDATE_LIFETIME
        self._update_ids = itertools.count(512_000_001)
        self._user_ids = itertools.count(100_001)
        self._group_ids = itertools.count(1)
        self._query_ids = itertools.count(9_000_000_001)
        self._queries: dict[str, dict[str, Any] | None] = {}  # id -> the answer, once answered
        self._query_at: dict[str, float] = {}  # id -> when the button was pressed, by `clock`
        self._files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, content)
        self._file_ids = itertools.count(1)
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._allowed_updates: list[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._new_update: asyncio.Event | None = None
        self._poll: asyncio.Future[None] | None = None  # the long poll waiting now
        self._stopped: asyncio.Event | None = None
        self.url = ""

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeTelegram:
        self._loop = asyncio.get_running_loop()
        self._new_update = asyncio.Event()
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._on_connection, host, port)
        bound = self._server.sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self

    async def stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._conns.values()):
            writer.transport.abort()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> FakeTelegram:
        """Serve from a daemon thread with its own loop, so a test may block (subprocess waits) freely."""
        self._serve_in_thread(host, port, "fake-telegram")
        return self

    def _notify(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        assert self._new_update is not None
        self._new_update.set()
        self._new_update = asyncio.Event()

    # --- building the world ------------------------------------------------------------------------

    def user(self, first_name: str = "Ada", username: str | None = None, *, is_bot: bool = False) -> dict[str, Any]:
        with self._lock:
            user: dict[str, Any] = {
                "id": next(self._user_ids),
                "is_bot": is_bot,
                "first_name": first_name,
                "username": username or first_name.lower(),
                "language_code": "en",
            }
            self._users[user["id"]] = user
            return user

    def private_chat(self, user: dict[str, Any]) -> dict[str, Any]:
        """The user's private chat with the bot: they pressed Start (or wrote), so the bot may write there.
        A user without one can be sent nothing (see `_chat`)."""
        with self._lock:
            info = {"id": user["id"], "type": "private", "first_name": user["first_name"], "username": user["username"]}
            self._chats.setdefault(user["id"], _Chat(info))
            return self._chats[user["id"]].info

    def group(
        self, title: str = "Family", *, supergroup: bool = True, forum: bool = False, bot_admin: bool = False
    ) -> dict[str, Any]:
        """A group the bot is in, joined under the privacy mode it has now (see `set_privacy`)."""
        with self._lock:
            n = next(self._group_ids)
            chat_id = -(1_000_000_000_000 + n) if supergroup else -(4_000_000 + n)
            info: dict[str, Any] = {"id": chat_id, "type": "supergroup" if supergroup else "group", "title": title}
            if forum:
                info["is_forum"] = True
            self._chats[chat_id] = _Chat(
                info, bot_reads_all=bool(self.bot["can_read_all_group_messages"]), bot_admin=bot_admin
            )
            return info

    def set_privacy(self, enabled: bool) -> None:
        """@BotFather's /setprivacy: getMe says so at once, but groups the bot is already in keep the mode
        it joined them with until it is removed and re-added (`readd`).
        Bot API: Privacy mode (core.telegram.org/bots/features#privacy-mode)."""
        with self._lock:
            self.bot["can_read_all_group_messages"] = not enabled

    def readd(self, chat: dict[str, Any], by: dict[str, Any]) -> dict[str, Any]:
        """Someone removes the bot from a group and adds it again: the group now gets the bot's current
        privacy mode, and the bot gets the `new_chat_members` service message."""
        with self._lock:
            state = self._chats[chat["id"]]
            state.bot_reads_all = bool(self.bot["can_read_all_group_messages"])
            return self._service_message(state, by, {"new_chat_members": [self.bot]})

    def _service_message(self, state: _Chat, user: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """Service messages reach every bot in the group, whatever its privacy mode."""
        message: dict[str, Any] = {
            "message_id": state.next_id,
            "from": user,
            "chat": state.info,
            "date": int(self.clock()),
            **fields,
        }
        state.next_id += 1
        state.messages[message["message_id"]] = message
        self._enqueue("message", message)
        return message

    def _bot_sees(self, state: _Chat, message: dict[str, Any]) -> bool:
        """Bot API: Privacy mode (core.telegram.org/bots/features#privacy-mode). In a group, a bot in
        privacy mode gets commands (`/cmd@this_bot`, and a bare `/cmd` when it was the last bot to write
        there: the only bot here), replies to its own messages and service messages; never other
        messages, not even those that @mention it. An admin bot, or one that joined with privacy mode
        off, gets everything."""
        if state.info["type"] not in ("group", "supergroup") or state.bot_reads_all or state.bot_admin:
            return True
        replied = message.get("reply_to_message") or {}
        if (replied.get("from") or {}).get("id") == self.bot["id"]:
            return True
        text = str(message.get("text") or message.get("caption") or "")
        command = re.match(r"/[A-Za-z0-9_]{1,32}(?:@([A-Za-z0-9_]{5,32}))?(?!\S)", text)
        if command is None:
            return False
        return command.group(1) is None or command.group(1).lower() == str(self.bot["username"]).lower()

    def channel(self, title: str = "News") -> dict[str, Any]:
        """A channel: it can speak in a group (someone posting as it, or its posts forwarded to the
        group it is linked to for discussion), see `send(..., as_chat=...)`."""
        with self._lock:
            n = next(self._group_ids)
            info: dict[str, Any] = {"id": -(1_000_000_000_000 + n), "type": "channel", "title": title}
            self._chats[info["id"]] = _Chat(info)
            return info

    def topic(self, chat: dict[str, Any], by: dict[str, Any], name: str = "Trip") -> int:
        """Someone opens a topic in a forum supergroup, or in a private chat with the bot when the bot has
        topics enabled (Bot API 9.3); returns its message_thread_id, the id of its `forum_topic_created`
        service message (core.telegram.org/bots/api#forumtopiccreated)."""
        with self._lock:
            state = self._chats[chat["id"]]
            if not self._has_topics(state):
                raise ValueError("topics exist only in forum supergroups and, with topics enabled, private chats")
            created = self._service_message(state, by, {"forum_topic_created": {"name": name, "icon_color": 7322096}})
            thread = int(created["message_id"])
            created |= {"message_thread_id": thread, "is_topic_message": True}
            state.topics[thread] = created
            return thread

    def _has_topics(self, state: _Chat) -> bool:
        return bool(state.info.get("is_forum")) or (
            state.info["type"] == "private" and bool(self.bot.get("has_topics_enabled"))
        )

    def drop_file_path(self, file_id: str) -> None:
        """getFile answers for this file without `file_path`: the field is optional (Bot API: File,
        core.telegram.org/bots/api#file), and a bot cannot download such a file."""
        with self._lock:
            self._files[file_id] = ("", self._files[file_id][1])

    def add_file(self, content: bytes) -> str:
        with self._lock:
            n = next(self._file_ids)
            file_id = f"BQACAgIAAxkBAAI{n:06d}"
            self._files[file_id] = (f"documents/file_{n}.bin", content)
            return file_id

    def send(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        text: str = "",
        *,
        entities: list[dict[str, Any]] | None = None,
        reply_to: int | None = None,
        thread_id: int | None = None,
        document: tuple[str, bytes, str] | None = None,
        as_chat: dict[str, Any] | None = None,
        forwarded: bool = False,
        animation: tuple[str, bytes, str] | None = None,
    ) -> dict[str, Any]:
        """A person sends a message to the bot (or in a group the bot is in); returns the Message. With
        `as_chat` they speak on behalf of a chat: the group itself (an anonymous admin) or a channel; with
        `forwarded` too, it is the channel's post that Telegram copies into its discussion group."""
        with self._lock:
            state = self._chats[chat["id"]]
            if state.migrated_to is not None:
                raise ValueError(f"group {chat['id']} is now supergroup {state.migrated_to}: write there")
            message: dict[str, Any] = {
                "message_id": state.next_id,
                "from": user,
                "chat": state.info,
                "date": int(self.clock()),
            }
            if as_chat is not None:
                stand_in = (
                    ANONYMOUS_ADMIN if as_chat["id"] == chat["id"] else TELEGRAM_SERVICE if forwarded else CHANNEL_BOT
                )
                message |= {"from": stand_in, "sender_chat": self._chats[as_chat["id"]].info}
                if forwarded:
                    message["is_automatic_forward"] = True
            state.next_id += 1
            key = "caption" if document or animation else "text"
            if text:
                message[key] = text
                found = entities if entities is not None else auto_entities(text)
                if found:
                    message["caption_entities" if document or animation else "entities"] = found
            if reply_to is not None:
                message["reply_to_message"] = state.messages[reply_to]
            if thread_id is not None:
                message["message_thread_id"] = thread_id
                message["is_topic_message"] = self._has_topics(state)
                if reply_to is None and thread_id in state.topics:
                    # In a topic, a message that replies to nothing still carries reply_to_message: the
                    # topic's forum_topic_created message (core.telegram.org/bots/api#message, message_thread_id).
                    message["reply_to_message"] = state.topics[thread_id]
            if animation is not None:
                # Bot API: Message.animation: "For backward compatibility, when this field is set, the
                # document field will also be set" (core.telegram.org/bots/api#message): one file, twice.
                name, content, mime = animation
                file_id = self.add_file(content)
                message["animation"] = message["document"] = {
                    "file_name": name,
                    "mime_type": mime,
                    "file_id": file_id,
                    "file_unique_id": f"AgAD{file_id[-6:]}",
                    "file_size": len(content),
                    "width": 320,
                    "height": 240,
                    "duration": 2,
                }
            if document is not None:
                name, content, mime = document
                file_id = self.add_file(content)
                message["document"] = {
                    "file_name": name,
                    "mime_type": mime,
                    "file_id": file_id,
                    "file_unique_id": f"AgAD{file_id[-6:]}",
                    "file_size": len(content),
                }
            state.messages[message["message_id"]] = message
            if self._bot_sees(state, message):
                self._enqueue("message", message)
            else:
                self.withheld.append(message)
            return message

    def edit(self, chat: dict[str, Any], message_id: int, text: str) -> dict[str, Any]:
        """The sender edits their message: an `edited_message` update carrying the whole message as it now
        reads, with `edit_date` (core.telegram.org/bots/api#update, edited_message: "New version of a
        message that is known to the bot and was edited"). Only where the bot saw the original. There is no
        update for a deleted message: the Bot API has none (its Update type lists no deletion)."""
        with self._lock:
            state = self._chats[chat["id"]]
            original = state.messages[message_id]
            key = "caption" if "caption" in original else "text"
            edited = {k: v for k, v in original.items() if k not in ("entities", "caption_entities")}
            edited |= {key: text, "edit_date": int(self.clock())}
            found = auto_entities(text)
            if found:
                edited["caption_entities" if key == "caption" else "entities"] = found
            state.messages[message_id] = edited
            if original not in self.withheld and self._bot_sees(state, original):
                self._enqueue("edited_message", edited)
            return edited

    def send_album(
        self, chat: dict[str, Any], user: dict[str, Any], photos: list[bytes], caption: str = ""
    ) -> list[dict[str, Any]]:
        """A person sends several photos at once: Telegram delivers one message (and update) per photo,
        sharing a `media_group_id`, the caption on the first (core.telegram.org/bots/api#message)."""
        with self._lock:
            state = self._chats[chat["id"]]
            album = str(next(self._file_ids) * 7_919 + 13_000_000_000_000_000)
            sent = []
            for n, content in enumerate(photos):
                width, height = image_size(content) or (0, 0)
                file_id = self.add_file(content)
                message: dict[str, Any] = {
                    "message_id": state.next_id,
                    "from": user,
                    "chat": state.info,
                    "date": int(self.clock()),
                    "media_group_id": album,
                    "photo": [
                        {
                            "file_id": file_id,
                            "file_unique_id": f"AgAD{file_id[-6:]}",
                            "file_size": len(content),
                            "width": width,
                            "height": height,
                        }
                    ],
                }
                if caption and n == 0:
                    message["caption"] = caption
                state.next_id += 1
                state.messages[message["message_id"]] = message
                if self._bot_sees(state, message):
                    self._enqueue("message", message)
                else:
                    self.withheld.append(message)
                sent.append(message)
            return sent

    def click(
        self,
        chat: dict[str, Any],
        message_id: int,
        user: dict[str, Any],
        *,
        button: str | int = 0,
        data: str | None = None,
    ) -> str:
        """A person presses an inline button (by label or index) of a bot message; returns the query id."""
        with self._lock:
            message = self._chats[chat["id"]].messages[message_id]
            if data is None:
                buttons = [b for row in message.get("reply_markup", {}).get("inline_keyboard", []) for b in row]
                chosen = buttons[button] if isinstance(button, int) else next(b for b in buttons if b["text"] == button)
                data = str(chosen["callback_data"])
            query_id = str(next(self._query_ids))
            self._queries[query_id] = None
            self._query_at[query_id] = self.clock()
            self._enqueue(
                "callback_query",
                {
                    "id": query_id,
                    "from": user,
                    "message": message,
                    "chat_instance": f"-{abs(chat['id'])}77",
                    "data": data,
                },
            )
            return query_id

    def _enqueue(self, kind: str, payload: dict[str, Any]) -> None:
        if self._allowed_updates and kind not in self._allowed_updates:
            return  # Telegram does not even create updates a bot did not ask for
        update_id = next(self._update_ids)
        self._updates.append({"update_id": update_id, kind: payload})
        self._update_at[update_id] = self.clock()
        self._notify()

    def _expire(self) -> None:
        """Drops updates older than UPDATE_LIFETIME, as Telegram does whether or not anyone polled."""
        now = self.clock()
        kept = [u for u in self._updates if now - self._update_at[u["update_id"]] <= UPDATE_LIFETIME]
        if len(kept) < len(self._updates):
            self.expired += [u for u in self._updates if u not in kept]
            self._updates = kept

    def block(self, chat: dict[str, Any], description: str = "Forbidden: bot was blocked by the user") -> None:
        with self._lock:
            self._chats[chat["id"]].blocked = (403, description)

    def migrate(self, chat: dict[str, Any], by: dict[str, Any] | None = None) -> dict[str, Any]:
        """The group becomes a supergroup with a new id (an admin turned on a setting only supergroups have).
        Bot API: Message.migrate_to_chat_id / migrate_from_chat_id (core.telegram.org/bots/api#message): the
        old group gets the first service message, the new supergroup the second, and every later call
        naming the old id is refused with 400 and parameters.migrate_to_chat_id
        (core.telegram.org/bots/api#responseparameters). The bot keeps the privacy mode it had there."""
        with self._lock:
            old = self._chats[chat["id"]]
            if old.info["type"] != "group" or old.migrated_to is not None:
                raise ValueError("only a basic group, once, becomes a supergroup")
            who = by or {"id": 777_000, "is_bot": False, "first_name": "Telegram"}
            new = self.group(str(chat.get("title", "Group")), supergroup=True, bot_admin=old.bot_admin)
            state = self._chats[new["id"]]
            state.bot_reads_all = old.bot_reads_all
            self._service_message(old, who, {"migrate_to_chat_id": new["id"]})
            self._service_message(state, who, {"migrate_from_chat_id": chat["id"]})
            old.migrated_to = new["id"]
            return new

    def set_webhook(self, url: str) -> None:
        with self._lock:
            self.webhook_url = url

    def inject(self, method: str, *faults: Fault) -> None:
        """The next requests to `method` (any letter case; "*" for every method; "file" for the next file downloads,
        which take Error, BadGateway, Drop and Hang) get these faults, in turn."""
        with self._lock:
            self._faults[method.lower()].extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # --- inspecting ----------------------------------------------------------------------------------

    def bot_messages(self, chat: dict[str, Any] | int) -> list[dict[str, Any]]:
        """What the bot posted in a chat, oldest first, as the chat shows it now (edits applied)."""
        chat_id = chat if isinstance(chat, int) else chat["id"]
        with self._lock:
            state = self._chats[chat_id]
            return [json.loads(json.dumps(state.messages[m])) for m in state.bot_sent]

    def texts(self, chat: dict[str, Any] | int) -> list[str]:
        return [m.get("text") or m.get("caption") or "" for m in self.bot_messages(chat)]

    def typing(self, chat: dict[str, Any]) -> list[float]:
        with self._lock:
            return list(self._chats[chat["id"]].typing)

    def answered(self, query_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._queries.get(query_id)

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method.lower() == method.lower()]

    @property
    def polling(self) -> bool:
        """A long poll is waiting for updates now: an update sent next ends it."""
        poll = self._poll
        return poll is not None and not poll.done()

    @property
    def pending_updates(self) -> int:
        with self._lock:
            return len(self._updates)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._faults.values())

    # --- HTTP ------------------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            await self._serve(reader, writer)
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        while True:
            request: h11.Request | None = None
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > UPLOAD_LIMIT + 1024 * 1024:
                        await self._send(
                            conn,
                            writer,
                            413,
                            {"ok": False, "error_code": 413, "description": "Request Entity Too Large"},
                        )
                        return
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert request is not None
            if not await self._handle(conn, writer, request, bytes(body)):
                return  # the connection was dropped on purpose
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _handle(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> bool:
        split = urlsplit(request.target.decode())
        path = split.path
        if path.startswith(f"/file/bot{self.token}/"):
            file_path = path.removeprefix(f"/file/bot{self.token}/")
            with self._lock:  # not "*": a download is no Bot API method
                fault = self._faults["file"].popleft() if self._faults.get("file") else None
            if fault is None:
                self._record("file", {"file_path": file_path}, "ok")
                return await self._download(conn, writer, file_path)
            if not isinstance(fault, Error | BadGateway | Drop | Hang):
                raise TypeError(f"a download cannot take {fault!r}")
            self._record("file", {"file_path": file_path}, type(fault).__name__)
            return await self._apply_fault(fault, conn, writer, "file", {})
        match = re.fullmatch(r"/bot([^/]+)/([A-Za-z]+)", path)
        if match is None:
            await self._send(conn, writer, 404, {"ok": False, "error_code": 404, "description": "Not Found"})
            return True
        if match.group(1) != self.token:
            await self._send(conn, writer, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
            return True
        method = match.group(2)
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        try:
            params = _params(split.query, headers.get("content-type", ""), body)
        except ValueError as exc:
            await self._send(conn, writer, 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {exc}"})
            return True
        fault = self._next_fault(method)
        if fault is not None:
            self._record(method, params, type(fault).__name__)
            return await self._apply_fault(fault, conn, writer, method, params)
        status, payload = await self._answer(method, params)
        await self._send(conn, writer, status, payload)
        return True

    def _next_fault(self, method: str) -> Fault | None:
        with self._lock:
            for key in (method.lower(), "*"):
                if self._faults.get(key):
                    return self._faults[key].popleft()
        return None

    async def _apply_fault(
        self, fault: Fault, conn: h11.Connection, writer: asyncio.StreamWriter, method: str, params: dict[str, Any]
    ) -> bool:
        if isinstance(fault, Error):
            await self._send(conn, writer, fault.status, fault.body())
            return True
        if isinstance(fault, BadGateway):
            html = (
                b"<html><head><title>502 Bad Gateway</title></head>"
                b"<body><center><h1>502 Bad Gateway</h1></center></body></html>"
            )
            writer.write(
                conn.send(
                    h11.Response(
                        status_code=502, headers=[("content-type", "text/html"), ("content-length", str(len(html)))]
                    )
                )
                or b""
            )
            writer.write((conn.send(h11.Data(data=html)) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            await writer.drain()
            return True
        if isinstance(fault, Drop):
            if fault.after_processing:
                await self._answer(method, params)
            writer.transport.abort()
            return False
        if isinstance(fault, Hang | Held):
            if isinstance(fault, Held):
                await self._answer(method, params)
                fault.taken.set()
            assert self._stopped is not None
            await self._stopped.wait()
            return False
        assert isinstance(fault, Delay)
        await asyncio.sleep(fault.seconds)
        status, payload = await self._answer(method, params)
        with contextlib.suppress(ConnectionError, h11.LocalProtocolError):
            await self._send(conn, writer, status, payload)
        return True

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]
    ) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        head = h11.Response(
            status_code=status,
            headers=[
                ("server", "nginx/1.18.0"),
                ("content-type", "application/json"),
                ("content-length", str(len(data))),
                ("access-control-allow-origin", "*"),
            ],
        )
        writer.write(
            (conn.send(head) or b"") + (conn.send(h11.Data(data=data)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        )
        await writer.drain()

    async def _download(self, conn: h11.Connection, writer: asyncio.StreamWriter, file_path: str) -> bool:
        with self._lock:
            content = next((c for p, c in self._files.values() if p == file_path), None)
        if content is None:
            await self._send(conn, writer, 404, {"ok": False, "error_code": 404, "description": "Not Found"})
            return True
        writer.write(
            (
                conn.send(
                    h11.Response(
                        status_code=200,
                        headers=[("content-type", "application/octet-stream"), ("content-length", str(len(content)))],
                    )
                )
                or b""
            )
            + (conn.send(h11.Data(data=content)) or b"")
            + (conn.send(h11.EndOfMessage()) or b"")
        )
        await writer.drain()
        return True

    def _record(self, method: str, params: dict[str, Any], outcome: str) -> None:
        shown = {k: (f"<{len(v)} bytes>" if isinstance(v, bytes | tuple) else v) for k, v in params.items()}
        with self._lock:
            self.calls.append(Call(method, shown, self.clock(), outcome))

    # --- the methods -------------------------------------------------------------------------------------

    async def _answer(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = method.lower()
        try:
            if name == "getupdates":
                result = await self._get_updates(params)
            else:
                handler = _METHODS.get(name)
                if handler is None:
                    raise _Refused(404, "Not Found")
                with self._lock:
                    result = handler(self, params)
        except _Refused as refused:
            self._record(method, params, f"error {refused.status}")
            body: dict[str, Any] = {"ok": False, "error_code": refused.status, "description": refused.description}
            if refused.parameters:
                body["parameters"] = refused.parameters
            return refused.status, body
        self._record(method, params, "ok")
        return 200, {"ok": True, "result": result}

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook_url:
            raise _Refused(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook "
                "to delete the webhook first",
            )
        # A newer poll ends the one waiting: only one bot instance may poll.
        if self._poll is not None and not self._poll.done():
            self._poll.set_exception(
                _Refused(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                )
            )
        offset = int(params.get("offset", 0))
        limit = max(1, min(100, int(params.get("limit", 100))))
        timeout = max(0.0, float(params.get("timeout", 0)))
        with self._lock:
            if "allowed_updates" in params:
                self._allowed_updates = list(params["allowed_updates"]) or None
            self._expire()
            if offset > 0:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                self.confirmed_offset = max(self.confirmed_offset, offset)
            elif offset < 0:
                self._updates = self._updates[offset:]
            ready = self._updates[:limit]
        if ready or timeout == 0:
            return json.loads(json.dumps(ready))
        assert self._loop is not None and self._new_update is not None
        poll: asyncio.Future[None] = self._loop.create_future()
        self._poll = poll
        arrived = asyncio.ensure_future(self._new_update.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {poll, arrived}
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if poll in done:
                poll.result()  # raises the 409 this poll was ended with
        finally:
            arrived.cancel()
            if self._poll is poll:
                self._poll = None
        with self._lock:
            self._expire()
            return json.loads(json.dumps(self._updates[:limit]))

    def _chat(self, params: dict[str, Any]) -> _Chat:
        raw = params.get("chat_id")
        try:
            chat_id = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _Refused(400, "Bad Request: chat not found") from None
        state = self._chats.get(chat_id)
        if state is None and chat_id in self._users:
            # Bot API: a bot cannot write first (core.telegram.org/bots#how-are-bots-different-from-users:
            # "Bots can't initiate conversations with users. A user must either add them to a group or send
            # them a message first"): a user the fake knows with no private chat never wrote to the bot.
            raise _Refused(403, "Forbidden: bot can't initiate conversation with a user")
        if state is None:
            raise _Refused(400, "Bad Request: chat not found")
        if state.migrated_to is not None:
            raise _Refused(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": state.migrated_to},
            )
        if state.blocked is not None:
            raise _Refused(*state.blocked)
        return state

    def _flood(self, state: _Chat) -> None:
        """Bot API FAQ, "My bot is hitting limits, how do I avoid this?" (core.telegram.org/bots/faq#my-bot-is-
        hitting-limits-how-do-i-avoid-this): in one chat no more than one message per second, in a group no
        more than 20 a minute, and about 30 a second overall; beyond that a 429 with parameters.retry_after
        (whole seconds). Telegram tolerates short bursts; the fake, when asked (`flood_limits`), does not."""
        if not self.flood_limits:
            return
        now = self.clock()
        waits = [0.0]
        if state.sends and now - state.sends[-1] < 1.0:
            waits.append(1.0 - (now - state.sends[-1]))
        minute = [t for t in state.sends if now - t < 60.0]
        if state.info["type"] in ("group", "supergroup") and len(minute) >= 20:
            waits.append(60.0 - (now - minute[-20]))
        second = [t for t in self._sends if now - t < 1.0]
        if len(second) >= 30:
            waits.append(1.0 - (now - second[-30]))
        if max(waits) > 0:
            after = max(1, int(max(waits) + 0.999))
            raise _Refused(429, f"Too Many Requests: retry after {after}", {"retry_after": after})

    def _bot_message(self, state: _Chat, params: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        self._flood(state)
        message: dict[str, Any] = {
            "message_id": state.next_id,
            "from": self.bot,
            "chat": state.info,
            "date": int(self.clock()),
            **extra,
        }
        thread = params.get("message_thread_id")
        if thread is not None:
            # Bot API: sendMessage.message_thread_id, "for forum supergroups and private chats of bots with
            # forum topic mode enabled only" (core.telegram.org/bots/api#sendmessage, Bot API 9.3).
            if not self._has_topics(state):
                raise _Refused(400, "Bad Request: message thread not found")
            message["message_thread_id"] = int(thread)
            message["is_topic_message"] = True
        reply = params.get("reply_parameters") or (
            {"message_id": params["reply_to_message_id"]} if "reply_to_message_id" in params else None
        )
        if reply:
            target = state.messages.get(int(reply["message_id"]))
            if target is not None:
                message["reply_to_message"] = target
            elif not reply.get("allow_sending_without_reply"):
                raise _Refused(400, "Bad Request: message to be replied not found")
        markup = params.get("reply_markup")
        if markup:
            message["reply_markup"] = _check_markup(markup)
        state.next_id += 1
        state.messages[message["message_id"]] = message
        state.bot_sent.append(message["message_id"])
        state.sends.append(self.clock())
        self._sends.append(self.clock())
        return message

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        state = self._chat(params)
        text = str(params.get("text", ""))
        if not text.strip():
            raise _Refused(400, "Bad Request: message text is empty")
        if utf16_len(text) > MAX_TEXT:
            raise _Refused(400, "Bad Request: message is too long")
        return self._bot_message(state, params, {"text": text})

    def _send_media(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        state = self._chat(params)
        upload = params.get(kind)
        if not isinstance(upload, tuple):
            raise _Refused(400, f"Bad Request: there is no {kind} in the request")
        name, content, mime = upload
        size = (0, 0)
        if kind == "photo":
            # Bot API: sendPhoto (core.telegram.org/bots/api#sendphoto): "The photo must be at most 10 MB
            # in size. The photo's width and height must not exceed 10000 in total. Width and height ratio
            # must be at most 20." Bytes that are no image Telegram can read are refused as well.
            if len(content) > PHOTO_LIMIT:
                raise _Refused(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
            found = image_size(content)
            if found is None or 0 in found:
                raise _Refused(400, "Bad Request: IMAGE_PROCESS_FAILED")
            size = found
            if sum(size) > 10_000 or max(size) > 20 * min(size):
                raise _Refused(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        file_id = self.add_file(content)
        item = {"file_id": file_id, "file_unique_id": f"AgAD{file_id[-6:]}", "file_size": len(content)}
        media: Any = (
            [dict(item, width=size[0], height=size[1])]
            if kind == "photo"
            else dict(item, file_name=name, mime_type=mime)
        )
        extra: dict[str, Any] = {kind: media}
        if params.get("caption"):
            extra["caption"] = str(params["caption"])
        return self._bot_message(state, params, extra)

    def _editable(self, params: dict[str, Any]) -> dict[str, Any]:
        """The bot's own message an edit names; a bot may edit nothing else."""
        message = self._chat(params).messages.get(int(params.get("message_id", 0)))
        if message is None:
            raise _Refused(400, "Bad Request: message to edit not found")
        if message["from"]["id"] != self.bot["id"]:
            raise _Refused(400, "Bad Request: message can't be edited")
        return message

    def _edit_text(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._editable(params)
        if "text" not in message:
            # Bot API: editMessageText edits "text and game messages"; a message with a photo or a file
            # has a caption, edited with editMessageCaption (core.telegram.org/bots/api#editmessagecaption).
            raise _Refused(400, "Bad Request: there is no text in the message to edit")
        text = str(params.get("text", ""))
        if not text.strip():
            raise _Refused(400, "Bad Request: message text is empty")
        if utf16_len(text) > MAX_TEXT:
            raise _Refused(400, "Bad Request: MESSAGE_TOO_LONG")
        markup = _edited_markup(params)
        if message.get("text") == text and message.get("reply_markup") == markup:
            raise _Refused(400, NOT_MODIFIED)
        message["text"] = text
        message["edit_date"] = int(self.clock())
        _set_markup(message, markup)
        return message

    def _edit_caption(self, params: dict[str, Any]) -> dict[str, Any]:
        """Bot API: editMessageCaption (core.telegram.org/bots/api#editmessagecaption): the caption of a
        message with media, 0-1024 characters."""
        message = self._editable(params)
        if not any(kind in message for kind in MEDIA_KINDS):
            raise _Refused(400, "Bad Request: there is no caption in the message to edit")
        caption = str(params.get("caption", ""))
        if utf16_len(caption) > MAX_CAPTION:
            raise _Refused(400, "Bad Request: message caption is too long")
        markup = _edited_markup(params)
        if message.get("caption", "") == caption and message.get("reply_markup") == markup:
            raise _Refused(400, NOT_MODIFIED)
        if caption:
            message["caption"] = caption
        else:
            message.pop("caption", None)
        message["edit_date"] = int(self.clock())
        _set_markup(message, markup)
        return message

    def _delete(self, params: dict[str, Any]) -> bool:
        """Bot API: deleteMessage (core.telegram.org/bots/api#deletemessage): "A message can only be deleted if
        it was sent less than 48 hours ago"; a bot deletes its own messages (others' only as an admin, which
        the fake's bot never needs). A message gone already is "not found", as a repeated call finds it."""
        state = self._chat(params)
        message_id = int(params.get("message_id", 0))
        message = state.messages.get(message_id)
        if message is None:
            raise _Refused(400, "Bad Request: message to delete not found")
        if message["from"]["id"] != self.bot["id"] or self.clock() - message["date"] >= DELETE_WINDOW:
            raise _Refused(400, "Bad Request: message can't be deleted")
        del state.messages[message_id]
        state.bot_sent.remove(message_id)
        return True

    def _react(self, params: dict[str, Any]) -> bool:
        state = self._chat(params)
        message = state.messages.get(int(params.get("message_id", 0)))
        if message is None:
            raise _Refused(400, "Bad Request: MESSAGE_ID_INVALID")
        reactions = params.get("reaction") or []
        for r in reactions:
            if r.get("type") != "emoji" or r.get("emoji") not in REACTIONS:
                raise _Refused(400, "Bad Request: REACTION_INVALID")
        message["_bot_reactions"] = [r["emoji"] for r in reactions]
        return True

    def _chat_action(self, params: dict[str, Any]) -> bool:
        state = self._chat(params)
        if params.get("action") not in ("typing", "upload_photo", "upload_document", "record_voice", "find_location"):
            raise _Refused(400, "Bad Request: wrong parameter action in request")
        state.typing.append(self.clock())
        return True

    def _answer_query(self, params: dict[str, Any]) -> bool:
        query_id = str(params.get("callback_query_id", ""))
        # Bot API: answerCallbackQuery (core.telegram.org/bots/api#answercallbackquery): the client shows a
        # progress bar until the bot answers, and a query answered late, twice or never issued gets this
        # 400. The reference gives no number; Telegram's servers stop taking the answer after about 15 s.
        too_old = self.clock() - self._query_at.get(query_id, 0.0) > CALLBACK_ANSWER_WINDOW
        if query_id not in self._queries or self._queries[query_id] is not None or too_old:
            raise _Refused(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self._queries[query_id] = {k: v for k, v in params.items() if k != "callback_query_id"}
        return True

    def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = str(params.get("file_id", ""))
        if file_id not in self._files:
            raise _Refused(400, "Bad Request: invalid file_id")
        path, content = self._files[file_id]
        if len(content) > DOWNLOAD_LIMIT:
            raise _Refused(400, "Bad Request: file is too big")
        found = {"file_id": file_id, "file_unique_id": f"AgAD{file_id[-6:]}", "file_size": len(content)}
        return found | {"file_path": path} if path else found

    def _webhook_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"url": self.webhook_url, "has_custom_certificate": False, "pending_update_count": len(self._updates)}

    def _set_webhook(self, params: dict[str, Any]) -> bool:
        self.webhook_url = str(params.get("url", ""))
        return True

    def _delete_webhook(self, params: dict[str, Any]) -> bool:
        self.webhook_url = ""
        if str(params.get("drop_pending_updates", "")).lower() in ("true", "1"):
            self._updates.clear()
        return True


def _check_markup(markup: Any) -> dict[str, Any]:
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    if not isinstance(rows, list):
        raise _Refused(400, "Bad Request: can't parse reply keyboard markup JSON object")
    for row in rows:
        for button in row:
            data = button.get("callback_data")
            if not button.get("text") or data is None or not 1 <= len(str(data).encode()) <= 64:
                raise _Refused(400, "Bad Request: BUTTON_DATA_INVALID")
    return {"inline_keyboard": rows}


_METHODS: dict[str, Any] = {
    "getme": lambda fake, params: fake.bot,
    "sendmessage": FakeTelegram._send_message,
    "sendphoto": lambda fake, params: fake._send_media("photo", params),
    "senddocument": lambda fake, params: fake._send_media("document", params),
    "editmessagetext": FakeTelegram._edit_text,
    "editmessagecaption": FakeTelegram._edit_caption,
    "deletemessage": FakeTelegram._delete,
    "setmessagereaction": FakeTelegram._react,
    "sendchataction": FakeTelegram._chat_action,
    "answercallbackquery": FakeTelegram._answer_query,
    "getfile": FakeTelegram._get_file,
    "getwebhookinfo": FakeTelegram._webhook_info,
    "setwebhook": FakeTelegram._set_webhook,
    "deletewebhook": FakeTelegram._delete_webhook,
}


def _params(query: str, content_type: str, body: bytes) -> dict[str, Any]:
    """Bot API parameters come as a query string, a form, multipart (uploads) or JSON; objects in the
    first three are JSON-serialized strings."""
    params: dict[str, Any] = dict(parse_qsl(query))
    if body:
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind == "application/json":
            loaded = json.loads(body)
            if not isinstance(loaded, dict):
                raise ValueError("the JSON body must be an object")
            params.update(loaded)
            return params
        if kind == "application/x-www-form-urlencoded":
            params.update(parse_qsl(body.decode()))
        elif kind == "multipart/form-data":
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                decoded = part.get_payload(decode=True)
                payload = decoded if isinstance(decoded, bytes) else b""
                filename = part.get_filename()
                if filename is not None:
                    params[str(name)] = (filename, payload, part.get_content_type())
                else:
                    params[str(name)] = payload.decode()
    for key in _OBJECT_PARAMS & params.keys():
        if isinstance(params[key], str):
            params[key] = json.loads(params[key])
    return params


if __name__ == "__main__":
    serve_from_command_line(FakeTelegram, __doc__, lambda fake: f"{fake.url} {fake.token}")


def _edited_markup(params: dict[str, Any]) -> dict[str, Any] | None:
    """An edit's reply_markup: an empty inline keyboard (or none) removes the buttons."""
    markup = _check_markup(params["reply_markup"]) if params.get("reply_markup") else None
    return markup if markup is not None and markup.get("inline_keyboard") else None


def _set_markup(message: dict[str, Any], markup: dict[str, Any] | None) -> None:
    if markup is None:
        message.pop("reply_markup", None)
    else:
        message["reply_markup"] = markup
