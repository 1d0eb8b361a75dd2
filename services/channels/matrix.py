"""The Matrix bridge: /sync in (resumed from the stored `next_batch`); messages, replies, threads, edits,
reactions, files through the media repository and numbered cards out (matrix-nio, its retries off so the
shared retry policy is the only one).

Settings (`[channels.matrix]` in config.toml, or `CLAWDEN_MATRIX_<KEY>`): `homeserver` (required),
`sync_timeout`, `send_deadline`, `typing_max`. The credential (`clawden channels login matrix` writes it) is
`keys/matrix` (mode 0600): `{"access_token": …, "device_id": …}`, or `CLAWDEN_MATRIX_TOKEN` (a bare token).

Room ids are opaque: room version 12 ids have no `:server` part, so nothing here splits one. A chat id that
starts with `@` is a user: the bridge sends to the direct room it made with them (approvals reach an approver
that way). End-to-end encryption is not supported: an encrypted room gets one clear message saying so.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import mimetypes
import os
import re
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
from nio import AsyncClient, AsyncClientConfig, ErrorResponse, RoomPreset, SyncResponse

from clawden.bridgeconfig import BridgeConfigError, channel_settings, number, read_secret, redact
from clawden.bus import events as ev
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.channels.bridge import Bridge, ButtonRef, Capabilities, Inbound, card_token, http_download
from services.channels.reach import call_trouble
from services.channels.retry import PlatformError, RetryPolicy
from services.channels.service import serve
from services.channels.state import BridgeState

log = logging.getLogger("clawden.channels.matrix")

CHANNEL = "matrix"
CURSOR = "sync.next_batch"
TIMELINE_LIMIT = 100  # events per room per /sync; more than that is fetched with /messages (see _backfill)
E2EE_NOTICE = (
    "End-to-end encryption is not supported by this assistant yet, so it cannot read this room. "
    "Talk to it in a room without encryption."
)
# Keycap digits as reactions (without the presentation selector, which clients add or leave out).
DIGITS = {f"{n}\u20e3": n for n in range(1, 10)} | {"\U0001f51f": 10}
FILE_TYPES = {"m.file", "m.image", "m.audio", "m.video"}
OWN_KEPT = 2000  # the bot's own recent event ids kept in memory

CAPABILITIES = Capabilities(
    # Synapse refuses events over 65536 bytes of JSON; 32 000 characters of body (and its HTML) stay inside.
    max_text=16000,
    threads=True,
    edits=True,
    reactions=True,
    files=True,
    cards=True,
    typing=True,
    typing_interval=20.0,
    max_file_bytes=50 * 1024 * 1024,
    max_download_bytes=50 * 1024 * 1024,
    # A send carries a transaction id derived from the outbound part: the homeserver answers a repeat with
    # the first event's id instead of posting again, so a send whose answer was lost is simply sent again.
    # Synapse keeps a transaction's answer for at least 30 minutes (its HttpTransactionCache); 25 to be sure.
    idempotent_sends=True,
    dedupe_window=25 * 60.0,
)


# --- the pure part: Matrix events -> Clawden events ------------------------------------------------------


@dataclass(frozen=True)
class Me:
    user_id: str
    device_id: str
    display_name: str


@dataclass(frozen=True)
class RoomView:
    """What the bridge knows of a room when an event arrives in it."""

    room_id: str
    name: str
    members: int  # joined and invited
    encrypted: bool


def txn_id(key: str) -> str:
    """A transaction id for an outbound part: the same on every try (the homeserver dedupes by it)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def relation(content: dict[str, Any]) -> dict[str, Any]:
    rel = content.get("m.relates_to")
    return rel if isinstance(rel, dict) else {}


def thread_of(content: dict[str, Any]) -> str | None:
    rel = relation(content)
    return str(rel["event_id"]) if rel.get("rel_type") == "m.thread" and rel.get("event_id") else None


def reply_target(content: dict[str, Any]) -> str | None:
    """The event this one answers: `m.in_reply_to`, unless it is only a thread's fallback."""
    rel = relation(content)
    if rel.get("rel_type") == "m.thread" and rel.get("is_falling_back"):
        return None
    target = (rel.get("m.in_reply_to") or {}).get("event_id")
    return str(target) if target else None


def strip_fallback(body: str) -> str:
    """Older clients quote the message they answer (`> <@someone> …` lines, then a blank line)."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith("> "):
        return body
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    return "\n".join(lines[i:]).lstrip("\n")


def mentions_me(content: dict[str, Any], body: str, me: Me) -> bool:
    """`m.mentions` names the bot, or (for clients without it) its MXID or display name is in the text."""
    mentions = content.get("m.mentions")
    if isinstance(mentions, dict) and me.user_id in (mentions.get("user_ids") or []):
        return True
    lowered = body.lower()
    if me.user_id.lower() in lowered:
        return True
    name = me.display_name.strip().lower()
    return bool(name) and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", lowered) is not None


def inbound_message(event: dict[str, Any], room: RoomView, me: Me, own: Container[str]) -> ev.InboundMessage | None:
    """A person's `m.room.message` as an inbound event; None for edits, notices (bots) and what has no text."""
    content = event.get("content") or {}
    if not isinstance(content, dict) or relation(content).get("rel_type") == "m.replace":
        return None  # an edit of an earlier message: the agent already has it
    msgtype = content.get("msgtype")
    if msgtype == "m.notice":
        return None  # bots speak in notices; answering them loops
    body = str(content.get("body") or "")
    reply_to = reply_target(content)
    if reply_to:
        body = strip_fallback(body)
    attachments: tuple[ev.Attachment, ...] = ()
    if msgtype in FILE_TYPES:
        info: dict[str, Any] = content["info"] if isinstance(content.get("info"), dict) else {}
        name = str(content.get("filename") or body or "file")
        attachments = (
            ev.Attachment(
                name=name,
                mime=str(info.get("mimetype") or "application/octet-stream"),
                size=int(info.get("size") or 0),
                url=str(content.get("url") or ""),
            ),
        )
        body = "" if body == name else body  # the body of a file message is its name unless a caption is set
    if not body and not attachments:
        return None
    is_group = room.members > 2
    sender = str(event["sender"])
    thread = thread_of(content)
    return ev.InboundMessage(
        route=ev.Route(channel=CHANNEL, chat_id=room.room_id, thread_id=thread),
        message_id=str(event["event_id"]),
        sender=ev.Sender(id=f"{CHANNEL}:{sender}", name=sender),
        text=("* " + body if msgtype == "m.emote" else body),
        sent_at=float(event.get("origin_server_ts", 0)) / 1000,
        is_group=is_group,
        chat_name=room.name,
        mentioned=not is_group or mentions_me(content, body, me) or (reply_to is not None and reply_to in own),
        reply_to=reply_to,
        attachments=attachments,
        supports_threads=True,
    )


def inbound_edit(event: dict[str, Any], room: RoomView, me: Me, own: Container[str]) -> ev.InboundEdit | None:
    """An `m.replace` (Matrix spec, client-server API, "Event replacements"): `m.new_content` is the whole
    message as it now reads, and the relation names the original. None for anything else. The spec leaves it
    to the receiver to check that the replacement has the original's sender; the router does, knowing who
    sent what it passed on. The route has no thread: `m.new_content` carries no relation (the spec forbids
    it), and the router finds the message's session by its id."""
    content = event.get("content") or {}
    rel = relation(content) if isinstance(content, dict) else {}
    new = content.get("m.new_content") if isinstance(content, dict) else None
    if rel.get("rel_type") != "m.replace" or not rel.get("event_id") or not isinstance(new, dict):
        return None
    message = inbound_message(dict(event, content=new), room, me, own)
    if message is None:
        return None
    return ev.InboundEdit(
        route=ev.Route(channel=CHANNEL, chat_id=room.room_id),
        message_id=str(rel["event_id"]),
        edit_id=str(event["event_id"]),
        sender=message.sender,
        text=message.text,
        edited_at=message.sent_at,
    )


def inbound_delete(event: dict[str, Any], room: RoomView) -> ev.InboundDelete | None:
    """An `m.room.redaction` (Matrix spec, client-server API, "Redactions"): the event it redacts is named in
    `content.redacts` from room version 11 on, at the top level before. Its sender is whoever redacted: the
    author, or a moderator."""
    content = event.get("content") or {}
    redacts = (content.get("redacts") if isinstance(content, dict) else None) or event.get("redacts")
    if not redacts:
        return None
    sender = str(event["sender"])
    return ev.InboundDelete(
        route=ev.Route(channel=CHANNEL, chat_id=room.room_id),
        message_id=str(redacts),
        sender=ev.Sender(id=f"{CHANNEL}:{sender}", name=sender),
        deleted_at=float(event.get("origin_server_ts", 0)) / 1000,
    )


def since_invited(events: list[dict[str, Any]], me: str) -> list[dict[str, Any]]:
    """A room the bot just joined shows it the room's recent past: only what came after its invite (or its join,
    where it had none) is for it. A later profile change (a join after a join) is no boundary."""
    cut = -1
    for i, event in enumerate(events):
        if event.get("type") != "m.room.member" or event.get("state_key") != me:
            continue
        membership = (event.get("content") or {}).get("membership")
        before = ((event.get("unsigned") or {}).get("prev_content") or {}).get("membership")
        if membership == "invite" or (membership == "join" and before not in ("join", "invite")):
            cut = i
    return events[cut + 1 :]


def chosen_number(body: str, count: int) -> int | None:
    """A reply to a card that is just one of its numbers (`2`, `2)`, `#2`): that choice, from 0."""
    match = re.fullmatch(r"\s*#?(\d{1,2})[.)]?\s*", body)
    if match is None or not 1 <= int(match.group(1)) <= count:
        return None
    return int(match.group(1)) - 1


def card_content(text: str, buttons: list[list[ButtonRef]]) -> tuple[str, str]:
    """A card as text with numbered choices, and as HTML: (body, formatted_body)."""
    labels = [b.label for row in buttons for b in row]
    lines = [f"{i}) {label}" for i, label in enumerate(labels, 1)]
    hint = "Reply to this message with the number of your choice."
    body = "\n\n".join(p for p in (text, "\n".join(lines), hint) if p)
    items = "".join(f"<li>{html.escape(label)}</li>" for label in labels)
    formatted = f"{html.escape(text).replace(chr(10), '<br>')}<ol>{items}</ol><p><em>{hint}</em></p>"
    return body, formatted


# --- the client-server API through matrix-nio ---------------------------------------------------------------


class MatrixError(PlatformError):
    pass


# A token the homeserver refuses (`clawden status`): the login writes a new keys/matrix, which the bridge notices.
MATRIX_FIX = "run `clawden channels login matrix` again; the bridge notices the new keys/matrix and restarts with it"


def classify(resp: ErrorResponse, what: str) -> MatrixError:
    """A homeserver's refusal as a PlatformError: 429 honours `retry_after_ms`; 5xx and a bad token (which an
    operator can fix) are retried until the deadline; anything else is final."""
    status = getattr(getattr(resp, "transport_response", None), "status", 0) or 0
    errcode = str(resp.status_code or "")
    text = f"{what}: {errcode + ' ' if errcode else ''}{resp.message}".strip()
    if status == 429 or errcode == "M_LIMIT_EXCEEDED":
        retry = resp.retry_after_ms / 1000 if resp.retry_after_ms is not None else None
        return MatrixError(text, "rate_limited", code=429, retry_after=retry)
    if status >= 500 or status == 0 or errcode == "M_UNKNOWN_TOKEN":
        return MatrixError(text, "transient", code=status)
    return MatrixError(text, "permanent", code=status)


async def call(what: str, coro: Any) -> Any:
    """Await a nio call; raise a classified MatrixError for an error response or a dropped connection."""
    try:
        resp = await coro
    except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError, ConnectionRefusedError) as exc:
        raise MatrixError(
            f"{what}: cannot reach the homeserver ({type(exc).__name__})", "transient", connection=True
        ) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The request may have reached the homeserver; transaction ids make a repeat of a send harmless.
        raise MatrixError(
            f"{what}: the homeserver's answer was lost ({type(exc).__name__})", "unknown", connection=True
        ) from None
    if isinstance(resp, tuple):  # upload answers (response, decryption keys)
        resp = resp[0]
    if isinstance(resp, ErrorResponse):
        raise classify(resp, what)
    return resp


def new_client(homeserver: str, me: Me | None, token: str, device_id: str) -> AsyncClient:
    # The shared retry policy decides about 429s and timeouts, so nio's own retries are off.
    config = AsyncClientConfig(max_limit_exceeded=0, max_timeouts=0, store_sync_tokens=False, encryption_enabled=False)
    client = AsyncClient(homeserver, user=me.user_id if me else "", device_id=device_id, config=config)
    client.access_token = token
    if me is not None:
        client.user_id = me.user_id
    return client


@dataclass(frozen=True)
class Credential:
    access_token: str
    device_id: str


def parse_credential(secret: str) -> Credential:
    """`keys/matrix` holds JSON (access_token, device_id); CLAWDEN_MATRIX_TOKEN may be the bare token."""
    if secret.startswith("{"):
        try:
            data = json.loads(secret)
            cred = Credential(str(data["access_token"]), str(data.get("device_id") or ""))
        except (ValueError, KeyError, TypeError):
            raise BridgeConfigError(
                "keys/matrix is not the JSON `clawden channels login matrix` writes; run it again"
            ) from None
    else:
        cred = Credential(secret, "")
    redact(cred.access_token)
    return cred


# --- the bridge -----------------------------------------------------------------------------------------


class MatrixBridge(Bridge):
    name = CHANNEL
    platform = "the Matrix homeserver"
    capabilities = CAPABILITIES

    def __init__(self, homeserver: str, credential: Credential, *, sync_timeout: float = 30.0) -> None:
        self.homeserver = homeserver.rstrip("/")
        self.credential = credential
        self.sync_timeout = sync_timeout
        self.me: Me | None = None
        self.api = new_client(self.homeserver, None, credential.access_token, credential.device_id)
        self.poller = new_client(self.homeserver, None, credential.access_token, credential.device_id)
        # Event ids the bot posted lately (replies to them address it); older ones are found in the sent-log.
        self.own: OrderedDict[str, None] = OrderedDict()
        self.deaf_after = sync_timeout + 60.0
        self._state: Inbound | None = None
        self._media: aiohttp.ClientSession | None = None  # for downloads, streamed (nio reads a file whole)

    async def start(self) -> None:
        try:
            await self._identify()
        except MatrixError as exc:
            if exc.kind == "permanent":
                raise BridgeConfigError(f"the homeserver refused the Matrix login: {exc.description}") from None
            log.warning("cannot reach the homeserver yet (%s); will keep trying", exc.description)

    async def _identify(self) -> Me:
        try:
            who = await call("whoami", self.api.whoami())
        except MatrixError as exc:
            if "M_UNKNOWN_TOKEN" in exc.description or exc.code == 401:
                raise BridgeConfigError(
                    f"the homeserver no longer accepts the access token ({exc.description}); "
                    "run `clawden channels login matrix` again"
                ) from None
            raise
        try:
            name = str(getattr(await call("profile", self.api.get_displayname(who.user_id)), "displayname", "") or "")
        except MatrixError as exc:  # no display name set (404), or the profile is private: the MXID still works
            log.info("matrix: no display name for %s (%s); mentions by MXID only", who.user_id, exc.description)
            name = ""
        self.me = Me(who.user_id, who.device_id or self.credential.device_id, name)
        await self._learn_upload_limit()
        for client in (self.api, self.poller):
            client.user_id = client.user = self.me.user_id
            client.device_id = self.me.device_id
        log.info("matrix: signed in as %s (device %s, display name %r)", self.me.user_id, self.me.device_id, name)
        return self.me

    async def _learn_upload_limit(self) -> None:
        """Files go up to the homeserver's own limit (its media config's `m.upload.size`), where it says one."""
        try:
            config = await call("media config", self.api.content_repository_config())
        except MatrixError as exc:
            log.info(
                "matrix: the homeserver did not say its upload limit (%s); keeping %d bytes",
                exc.description,
                self.capabilities.max_file_bytes,
            )
            return
        size = getattr(config, "upload_size", None)
        if isinstance(size, int) and size > 0:
            self.capabilities = replace(self.capabilities, max_file_bytes=size, max_download_bytes=size)
            log.info("matrix: the homeserver takes files of up to %d bytes", size)

    # --- in -------------------------------------------------------------------------------------

    async def listen(self, inbound: Inbound) -> None:
        self._state = inbound
        me = self.me or await self._identify()
        saved = await inbound.state.cursor(CURSOR)
        since = saved[0] if saved else None
        first = True
        sync_filter = {
            "room": {"timeline": {"limit": TIMELINE_LIMIT}, "state": {"lazy_load_members": False}},
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
        }
        failures = 0
        while True:
            try:
                # full_state on the first sync of a run: the room list and members nio keeps start empty.
                resp = await call(
                    "sync",
                    self.poller.sync(
                        timeout=0 if first else int(self.sync_timeout * 1000),
                        sync_filter=sync_filter,
                        since=since,
                        full_state=first or None,
                    ),
                )
            except MatrixError as exc:
                failures += 1
                delay = exc.retry_after if exc.retry_after is not None else min(30.0, 0.5 * 2 ** min(failures, 6))
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning(
                        "matrix sync failed (%s), %d in a row; retrying in %.1fs", exc.description, failures, delay
                    )
                inbound.reach.failed(call_trouble(inbound.reach.platform, exc, MATRIX_FIX))  # its terms, at once
                await inbound.pause(delay)
                continue
            inbound.alive()
            assert isinstance(resp, SyncResponse)
            try:
                await self._handle_sync(resp, me, inbound, catch_up=since is not None)
            except PlatformError as exc:
                # Part of the batch could not be handled (the router did not answer about an invite, a backfill
                # failed): the same sync again from the saved cursor; what was published already is deduped.
                failures += 1
                log.warning("matrix: could not handle a sync (%s); trying it again", exc.description)
                await inbound.pause(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            failures = 0
            since = resp.next_batch
            # Only now: everything in this batch is in JetStream (or was not for us).
            await inbound.state.set_cursor(CURSOR, since)
            first = False

    async def _handle_sync(self, resp: SyncResponse, me: Me, inbound: Inbound, *, catch_up: bool) -> None:
        for room_id, invite in resp.rooms.invite.items():
            await self._invited(room_id, invite.invite_state, me, inbound)
        for room_id, info in resp.rooms.join.items():
            events = [e.source for e in info.timeline.events]
            if catch_up and info.timeline.limited and info.timeline.prev_batch:
                events = await self._backfill(room_id, info.timeline.prev_batch, inbound) + events
            if not catch_up:
                continue  # the bridge's first run: what was said before it existed is not for it
            view = self._view(room_id)
            if view.encrypted:
                await self._encrypted(room_id, inbound)  # said once per room, even if nobody writes there
            events = since_invited(events, me.user_id)
            for source in events:
                await self._event(source, view, me, inbound)
            taken = [e for e in events if e.get("type") == "m.room.message" and e.get("sender") != me.user_id]
            if taken and not view.encrypted:
                await self._read_up_to(room_id, str(taken[-1].get("event_id", "")))

    async def _read_up_to(self, room_id: str, event_id: str) -> None:
        """A read receipt once the room's messages are stored: people see the assistant has them. Best effort."""
        try:
            await call("read receipt", self.poller.room_read_markers(room_id, event_id, event_id))
        except MatrixError as exc:
            log.debug("matrix: no read receipt in %s: %s", room_id, exc.description)

    async def _backfill(self, room_id: str, prev_batch: str, inbound: Inbound) -> list[dict[str, Any]]:
        """A room with more new events than one sync carries (`limited`): the rest, oldest first, from /messages
        back to where the last sync ended."""
        saved = await inbound.state.cursor(CURSOR)
        end = saved[0] if saved else None
        older: list[dict[str, Any]] = []
        token: str | None = prev_batch
        while token:
            page = await call("messages", self.poller.room_messages(room_id, start=token, end=end, limit=100))
            older = [e.source for e in reversed(page.chunk)] + older
            token = page.end if page.chunk and page.end and page.end != token else None
            inbound.alive()
        log.info(
            "matrix: room %s had more new events than one sync carries; read %d back from /messages",
            room_id,
            len(older),
        )
        return older

    def _view(self, room_id: str) -> RoomView:
        room = self.poller.rooms.get(room_id)
        if room is None:
            return RoomView(room_id, "", 2, False)
        members = int(room.joined_count or 0) + int(room.invited_count or 0)
        return RoomView(room_id, str(room.display_name or ""), members or len(room.users), bool(room.encrypted))

    def _posted(self, event_id: str) -> None:
        self.own[event_id] = None
        self.own.move_to_end(event_id)
        while len(self.own) > OWN_KEPT:
            self.own.popitem(last=False)

    async def _event(self, source: dict[str, Any], room: RoomView, me: Me, inbound: Inbound) -> None:
        kind = source.get("type")
        if source.get("sender") == me.user_id:
            if source.get("event_id"):
                self._posted(str(source["event_id"]))
            return
        try:
            if kind == "m.room.encrypted" or (kind == "m.room.encryption" and source.get("state_key") == ""):
                await self._encrypted(room.room_id, inbound)
            elif kind == "m.room.message":
                await self._message(source, room, me, inbound)
            elif kind == "m.reaction":
                await self._reaction(source, room, inbound)
            elif kind == "m.room.redaction" and (delete := inbound_delete(source, room)) is not None:
                await inbound.publish(delete)
        except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
            log.error("skipping matrix event %s that does not parse: %r", source.get("event_id"), exc)

    async def _message(self, source: dict[str, Any], room: RoomView, me: Me, inbound: Inbound) -> None:
        if relation(source.get("content") or {}).get("rel_type") == "m.replace":
            if (edit := inbound_edit(source, room, me, self.own)) is not None:
                await inbound.publish(edit)
            return
        target = reply_target(source.get("content") or {})
        if target and target not in self.own and await inbound.state.message_of(target) is not None:
            self._posted(target)  # a reply to what the bot said before this run
        event = inbound_message(source, room, me, self.own)
        if event is None:
            return
        if event.reply_to and await self._pressed(event.reply_to, event.text, event, inbound):
            return
        await inbound.deliver(event)

    async def _pressed(self, target: str, text: str, event: ev.InboundMessage, inbound: Inbound) -> bool:
        """A reply to a card that is one of its numbers presses that button."""
        token = await self._card_token(target, inbound)
        card = await inbound.state.card(token) if token else None
        if card is None:
            return False
        index = chosen_number(text, len(card[1]))
        if index is None:
            return False
        await inbound.click(
            event.route, f"{token}:{index}", action_id=event.message_id, sender=event.sender, message_id=target
        )
        return True

    async def _reaction(self, source: dict[str, Any], room: RoomView, inbound: Inbound) -> None:
        rel = relation(source.get("content") or {})
        if rel.get("rel_type") != "m.annotation":
            return
        target = str(rel.get("event_id") or "")
        token = await self._card_token(target, inbound)
        key = str(rel.get("key") or "").replace("\ufe0f", "")
        number = DIGITS.get(key) or (int(key) if key.isdigit() else None)
        if token is None or number is None:
            return
        sender = str(source["sender"])
        await inbound.click(
            ev.Route(channel=CHANNEL, chat_id=room.room_id),
            f"{token}:{number - 1}",
            action_id=str(source["event_id"]),
            sender=ev.Sender(id=f"{CHANNEL}:{sender}", name=sender),
            message_id=target,
        )

    async def _card_token(self, event_id: str, inbound: Inbound) -> str | None:
        """The button token of the card the bot posted as `event_id` (its sent-log knows the outbound message)."""
        found = await inbound.state.message_of(event_id)
        return card_token(found[0]) if found else None

    async def _encrypted(self, room_id: str, inbound: Inbound) -> None:
        """One clear message per encrypted room, not silence."""
        if await inbound.state.cursor(f"e2ee:{room_id}") is not None:
            return
        log.warning(
            "matrix room %s is end-to-end encrypted, which the bridge does not support; saying so there", room_id
        )
        try:
            await call(
                "send",
                self.api.room_send(
                    room_id,
                    "m.room.message",
                    {"msgtype": "m.notice", "body": E2EE_NOTICE},
                    tx_id=txn_id(f"e2ee:{room_id}"),
                ),
            )
        except MatrixError as exc:
            log.warning("could not tell room %s that encryption is unsupported: %s", room_id, exc.description)
            return
        await inbound.state.set_cursor(f"e2ee:{room_id}", "told")

    async def _invited(self, room_id: str, state: list[Any], me: Me, inbound: Inbound) -> None:
        inviter = ""
        for item in state:
            source = getattr(item, "source", None) or {}
            if source.get("type") == "m.room.member" and source.get("state_key") == me.user_id:
                inviter = str(source.get("sender") or "")
        if not await self._may_join(inviter, room_id, inbound):
            log.warning("matrix: declined the invite of %s to room %s", inviter or "someone", room_id)
            try:
                await call("leave", self.poller.room_leave(room_id))
            except MatrixError as exc:
                log.warning("could not decline the invite to %s: %s", room_id, exc.description)
            return
        try:
            await call("join", self.poller.join(room_id))
            log.info("matrix: joined room %s on the invite of %s", room_id, inviter)
        except MatrixError as exc:
            if exc.retryable:
                raise  # the sync is repeated from the saved cursor, and the invite with it
            log.warning("could not join room %s: %s", room_id, exc.description)

    async def _may_join(self, inviter: str, room_id: str, inbound: Inbound) -> bool:
        """The router decides by the room's unknown-sender policy (and records a refusal as dropped); while it
        cannot answer, the sync is repeated from the saved cursor, and the invite with it."""
        if not inviter:
            return False
        allowed, reason = await inbound.admit(room_id, f"{CHANNEL}:{inviter}")
        if not allowed:
            log.info("matrix: the router refused the invite of %s to %s: %s", inviter, room_id, reason)
        return allowed

    async def fetch_file(self, attachment: ev.Attachment, dest: Path) -> None:
        """From the media repository, streamed: the authenticated endpoint (Matrix 1.11), else the older one on a
        homeserver that does not know it yet."""
        server, _, media = attachment.url.removeprefix("mxc://").partition("/")
        if not attachment.url.startswith("mxc://") or not server or not media or "/" in media:
            raise MatrixError(f"not a media repository address: {attachment.url[:100]}", "permanent")
        if self._media is None or self._media.closed:
            self._media = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.credential.access_token}"}
        limit = self.capabilities.max_download_bytes
        where = f"{quote(server, safe='')}/{quote(media, safe='')}"
        try:
            await http_download(
                self._media,
                f"{self.homeserver}/_matrix/client/v1/media/download/{where}",
                dest,
                limit,
                platform="the homeserver",
                headers=headers,
            )
        except PlatformError as exc:
            if exc.code not in (404, 405):  # an older homeserver knows only the unauthenticated path
                raise
            await http_download(
                self._media,
                f"{self.homeserver}/_matrix/media/v3/download/{where}",
                dest,
                limit,
                platform="the homeserver",
                headers=headers,
            )

    # --- out ------------------------------------------------------------------------------------

    async def _room(self, route: ev.Route) -> str:
        """The room to post in: the route's, or for a user (`@…`) the direct room made with them."""
        if not route.chat_id.startswith("@"):
            return route.chat_id
        state = self._require_state()
        saved = await state.cursor(f"dm:{route.chat_id}")
        if saved is not None:
            return saved[0]
        resp = await call(
            "create a direct room",
            self.api.room_create(
                is_direct=True, invite=[route.chat_id], preset=RoomPreset.trusted_private_chat, federate=True
            ),
        )
        room_id = str(resp.room_id)
        await state.set_cursor(f"dm:{route.chat_id}", room_id)
        log.info("matrix: made direct room %s with %s", room_id, route.chat_id)
        return room_id

    def _require_state(self) -> BridgeState:
        if self._state is None:
            raise MatrixError("the bridge is not listening yet", "transient")
        return self._state.state

    def _relates(self, route: ev.Route, reply_to: str | None) -> dict[str, Any]:
        if route.thread_id:
            return {
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": route.thread_id,
                    "is_falling_back": reply_to is None,
                    "m.in_reply_to": {"event_id": reply_to or route.thread_id},
                }
            }
        if reply_to:
            return {"m.relates_to": {"m.in_reply_to": {"event_id": reply_to}}}
        return {}

    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        content: dict[str, Any] = {"msgtype": "m.text", "body": text, "m.mentions": {}}
        if buttons:
            body, formatted = card_content(text, buttons)
            content |= {"body": body, "format": "org.matrix.custom.html", "formatted_body": formatted}
        content |= self._relates(route, reply_to)
        return await self._send(route, "m.room.message", content, key)

    async def _send(self, route: ev.Route, kind: str, content: dict[str, Any], key: str) -> str:
        room_id = await self._room(route)
        resp = await call("send", self.api.room_send(room_id, kind, content, tx_id=txn_id(key)))
        event_id = str(resp.event_id)
        self._posted(event_id)
        return event_id

    async def send_file(self, route: ev.Route, path: Path, *, key: str) -> str:
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = await asyncio.to_thread(path.read_bytes)
        uploaded = await call(
            "upload",
            self.api.upload(lambda _got429, _timeouts: data, content_type=mime, filename=path.name, filesize=len(data)),
        )
        msgtype = next((t for t in ("image", "audio", "video") if mime.startswith(t + "/")), "file")
        content = {
            "msgtype": f"m.{msgtype}",
            "body": path.name,
            "filename": path.name,
            "url": uploaded.content_uri,
            "info": {"mimetype": mime, "size": len(data)},
        }
        content |= self._relates(route, None)
        return await self._send(route, "m.room.message", content, key)

    async def edit(self, route: ev.Route, target: str, text: str, buttons: list[list[ButtonRef]]) -> None:
        new: dict[str, Any] = {"msgtype": "m.text", "body": text}
        if buttons:
            body, formatted = card_content(text, buttons)
            new = {"msgtype": "m.text", "body": body, "format": "org.matrix.custom.html", "formatted_body": formatted}
        content = {
            **new,
            "body": "* " + new["body"],
            "m.new_content": new,
            "m.mentions": {},
            "m.relates_to": {"rel_type": "m.replace", "event_id": target},
        }
        content.pop("formatted_body", None)
        content.pop("format", None)
        await self._send(route, "m.room.message", content, f"edit:{target}:{hashlib.sha256(text.encode()).hexdigest()}")

    async def react(self, route: ev.Route, target: str, emoji: str) -> None:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": emoji}}
        await self._send(route, "m.reaction", content, f"react:{target}:{emoji}")

    async def typing(self, route: ev.Route) -> None:
        room_id = await self._room(route)
        await call("typing", self.api.room_typing(room_id, True, timeout=int(self.capabilities.typing_interval * 1500)))

    async def reconnect(self) -> None:
        old = self.poller
        self.poller = new_client(
            self.homeserver,
            self.me,
            self.credential.access_token,
            self.me.device_id if self.me else self.credential.device_id,
        )
        await old.close()

    async def close(self) -> None:
        await self.api.close()
        await self.poller.close()
        if self._media is not None:
            await self._media.close()


# --- the service ------------------------------------------------------------------------------------------


def homeserver_of(settings: dict[str, str]) -> str:
    homeserver = settings.get("homeserver", "")
    if not re.match(r"^https?://[^/\s]+", homeserver):
        raise BridgeConfigError(
            "[channels.matrix] homeserver must be the homeserver's http(s) URL "
            f"(`clawden channels login matrix` sets it), not {homeserver!r}"
        )
    return homeserver


def bridge_from_settings(ctx: ServiceContext) -> tuple[MatrixBridge, RetryPolicy, float]:
    settings = channel_settings(ctx.config, CHANNEL)
    bridge = MatrixBridge(
        homeserver_of(settings),
        parse_credential(read_secret(ctx.config, CHANNEL)),
        sync_timeout=number(CHANNEL, settings, "sync_timeout", 30.0),
    )
    policy = RetryPolicy(deadline=number(CHANNEL, settings, "send_deadline", 600.0))
    return bridge, policy, number(CHANNEL, settings, "typing_max", 120.0)


async def check_token(cfg: Config, environ: dict[str, str] | None = None) -> str:
    """For `clawden doctor`: whoami with the stored token against the configured homeserver."""
    settings = channel_settings(cfg, CHANNEL, environ)
    cred = parse_credential(read_secret(cfg, CHANNEL, environ))
    client = new_client(homeserver_of(settings), None, cred.access_token, cred.device_id)
    try:
        who = await call("whoami", client.whoami())
    finally:
        await client.close()
    return f"{who.user_id} (device {who.device_id or cred.device_id})"


async def login(homeserver: str, user: str, password: str, device_name: str = "Clawden") -> Credential:
    """Log in once with a password; only the access token and device id are kept."""
    homeserver = homeserver_of({"homeserver": homeserver})
    client = AsyncClient(
        homeserver.rstrip("/"),
        user,
        config=AsyncClientConfig(max_limit_exceeded=0, max_timeouts=0, encryption_enabled=False),
    )
    try:
        resp = await call("login", client.login(password=password, device_name=device_name))
    finally:
        await client.close()
    return Credential(str(resp.access_token), str(resp.device_id))


def store_login(cfg: Config, homeserver: str, cred: Credential) -> list[str]:
    """Write keys/matrix (mode 0600 from the start) and, if config.toml has no [channels.matrix], the homeserver;
    returns what was done, for a person."""
    cfg.keys_dir.mkdir(parents=True, exist_ok=True)
    key = cfg.keys_dir / CHANNEL
    partial = key.with_name(key.name + ".new")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"access_token": cred.access_token, "device_id": cred.device_id}, out)
        out.write("\n")
    partial.replace(key)
    done = [f"stored the access token and device id {cred.device_id} in {key} (mode 0600); no password is kept"]
    file = cfg.path("config.toml")
    current = channel_settings(cfg, CHANNEL, {}).get("homeserver")
    if current is None:
        with file.open("a") as out:
            out.write(f"\n[channels.matrix]\nhomeserver = {json.dumps(homeserver)}\n")  # a TOML basic string
        done.append(f"set [channels.matrix] homeserver = {homeserver!r} in {file}")
    elif current.rstrip("/") != homeserver.rstrip("/"):
        done.append(f"note: {file} names homeserver {current!r}; change it to {homeserver!r}")
    return done


async def main(ctx: ServiceContext) -> None:
    logging.getLogger("nio").setLevel(logging.WARNING)  # nio logs every event of every sync at INFO
    bridge, policy, typing_max = bridge_from_settings(ctx)
    await serve(ctx, bridge, policy=policy, typing_horizon=typing_max, key_check=parse_credential)
