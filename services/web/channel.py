"""The `web` channel, a bridge like the others: what a signed-in person says goes to JetStream as inbound
(stored there once, before web.db keeps it and the browser hears "sent"), and the channel's outbound lanes are
kept in web.db before they are acknowledged, then streamed to every open page of that chat."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from clawden.bus import Retry, publish, publish_stored, subjects
from clawden.bus import events as ev
from services.web.files import MAX_FILES
from services.web.store import Shown, WebStore

log = logging.getLogger("clawden.web")
CHANNEL = "web"
MAX_TEXT = 16_000


class Refused(Exception):
    """What the person sent cannot be taken (too long, an unknown card or button); said to them as is."""


class NotStored(Exception):
    """The bus did not take the person's message for a minute (NATS away): nothing was kept, and sending it again
    under the same id is safe."""


@dataclass
class Hub:
    """Who is watching which chat: each open page has a queue of what to show next."""

    watchers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = field(default_factory=lambda: defaultdict(set))

    def watch(self, chat_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self.watchers[chat_id].add(queue)
        return queue

    def leave(self, chat_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.watchers[chat_id].discard(queue)
        if not self.watchers[chat_id]:
            del self.watchers[chat_id]

    def close(self) -> None:
        """Every open stream ends (the service stops); pages reconnect and replay the history."""
        for chat_id in list(self.watchers):
            for queue in list(self.watchers.get(chat_id, ())):
                queue.put_nowait({"kind": "end"}) if not queue.full() else self.leave(chat_id, queue)

    def tell(self, chat_id: str, item: dict[str, Any]) -> None:
        for queue in list(self.watchers.get(chat_id, ())):
            if queue.full():  # a page that stopped reading: it reloads history when it comes back
                self.leave(chat_id, queue)
                continue
            queue.put_nowait(item)


@dataclass
class Counts:
    inbound: int = 0
    clicks: int = 0
    shown: int = 0
    redelivered: int = 0
    uploads: int = 0
    downloads: int = 0


class WebChannel:
    def __init__(self, js: JetStreamContext, store: WebStore, hub: Hub) -> None:
        self.js = js
        self.store = store
        self.hub = hub
        self.counts = Counts()

    # --- in: the person -------------------------------------------------------------------------------

    async def say(
        self, chat_id: str, user_id: str, name: str, text: str, message_id: str, upload_ids: list[str] | None = None
    ) -> Shown | None:
        """Publish, then keep; returns what to show. The id is the page's own, and it is the message's id on the
        bus: publish_stored asks again under it while NATS is away or an answer is lost, and the page sends a line
        it was not told was sent again under it, so the line is stored once however often it is sent, and web.db
        shows only what the bus holds. The files uploaded for it go as its attachments, where the runner copies a
        bridge's into the inbox."""
        if not text.strip() and not upload_ids:
            raise Refused("an empty message was not sent")
        if len(text) > MAX_TEXT:
            raise Refused(f"a message may be at most {MAX_TEXT} characters; this one has {len(text)}")
        if len(upload_ids or ()) > MAX_FILES:
            raise Refused(f"a message may carry at most {MAX_FILES} files")
        uploads = await self.store.run(self.store.take_uploads, upload_ids or [], chat_id, user_id, message_id)
        if isinstance(uploads, str):
            raise Refused(f"no upload {uploads[:40]!r} of yours waits in this chat; attach the file again")
        event = ev.InboundMessage(
            route=ev.Route(channel=CHANNEL, chat_id=chat_id),
            message_id=message_id,
            sender=ev.Sender(id=user_id, name=name),
            text=text,
            sent_at=time.time(),
            chat_name=f"web {chat_id}",
            attachments=tuple(u.attachment() for u in uploads),
        )
        try:
            await publish_stored(self.js, subjects.inbound(CHANNEL), event, msg_id=event.key)
        except (NatsError, TimeoutError) as exc:
            log.warning("a message in web chat %s was not stored on the bus: %r", chat_id, exc)
            raise NotStored("not sent: the message bus did not answer; send it again") from exc
        shown = await self.store.run(self.store.said, chat_id, message_id, user_id, text, time.time(), uploads)
        self.counts.inbound += 1
        if shown is not None:
            self.hub.tell(chat_id, {"kind": "message", **shown.as_json()})
        return shown

    async def press(self, chat_id: str, user_id: str, name: str, card_message: str, button: str) -> None:
        """A card's button: published as an InboundAction; the router and approvals check who may press it."""
        shown = await self.store.run(self.store.message, card_message)
        if shown is None or shown.chat_id != chat_id or shown.card is None:
            raise Refused("that card is no longer here")
        if button not in {b.id for b in shown.card.buttons}:
            raise Refused("that card has no such button (it may have been decided already)")
        action = ev.InboundAction(
            route=ev.Route(channel=CHANNEL, chat_id=chat_id),
            action_id=uuid.uuid4().hex,
            sender=ev.Sender(id=user_id, name=name),
            card_id=shown.card_id,
            button_id=button,
            message_id=card_message,
            sent_at=time.time(),
        )
        await publish(self.js, subjects.inbound(CHANNEL), action, msg_id=action.key)
        self.counts.clicks += 1

    # --- out: the agent -------------------------------------------------------------------------------

    async def handle(self, event: ev.Outbound, msg: Msg) -> None:
        """One outbound event: kept in web.db, then receipted, then shown; only then acknowledged (by consume).
        A redelivered message is shown again as kept: its first delivery may have been kept and then failed on
        the receipt, told to no page; a page keys messages by id and version, so it never shows one twice."""
        chat = event.route.chat_id
        if isinstance(event, ev.Typing):
            self.hub.tell(chat, {"kind": "typing", "active": event.active})
            return
        if isinstance(event, ev.OutboundReaction):
            self.hub.tell(chat, {"kind": "reaction", "target": event.target_message_id, "emoji": event.emoji})
            return
        if isinstance(event, ev.OutboundEdit):
            shown, target = await self.store.run(self.store.edited, event), event.target_message_id
        else:
            shown, target = await self._kept(event), event.id
            await self._receipt(event)  # again on a redelivery: the first one may not have reached JetStream
        if shown is None:  # an edit of the person's message or of another chat's; an id one of theirs has
            log.warning(
                "%s %s in web chat %s changed nothing: no message of ours there has that id",
                type(event).__name__,
                target,
                chat,
            )
            return
        self.counts.shown += 1
        self.hub.tell(chat, {"kind": "message", **shown.as_json()})

    async def _kept(self, event: ev.OutboundMessage) -> Shown | None:
        shown = await self.store.run(self.store.answered, event, time.time())
        if shown is not None:
            return shown
        self.counts.redelivered += 1
        return await self.store.run(self.store.reply, event.route.chat_id, event.id)

    async def _receipt(self, event: ev.OutboundMessage) -> None:
        receipt = ev.receipt_for(event, platform_message_id=event.id)  # an edit or a reaction names it back
        try:
            await publish(self.js, subjects.receipt(CHANNEL), receipt, msg_id=f"receipt:{event.id}")
        except (NatsError, TimeoutError) as exc:
            # NATS away, not the event's fault: waited out and handled again, and shown then (see handle).
            raise Retry(f"the receipt of {event.id} was not stored: {exc!r}", delay=1.0) from exc
