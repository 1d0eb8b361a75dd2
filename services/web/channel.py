"""The `web` channel, a bridge like the others: what a signed-in person says goes to JetStream as inbound
(stored there before the browser hears "sent"), and the channel's outbound lanes are kept in web.db
before they are acknowledged, then streamed to every open page of that chat."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from clawden.bus import events as ev
from clawden.bus import publish, subjects
from services.web.files import MAX_FILES
from services.web.store import Shown, WebStore

log = logging.getLogger("clawden.web")
CHANNEL = "web"
MAX_TEXT = 16_000


class Refused(Exception):
    """What the person sent cannot be taken (too long, an unknown card or button); said to them as is."""


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
        """Keep, then publish (the id is the page's own, so a resent form is one message); returns what to show.
        The files uploaded for it go as its attachments, where the runner copies a bridge's into the inbox."""
        if not text.strip() and not upload_ids:
            raise Refused("an empty message was not sent")
        if len(text) > MAX_TEXT:
            raise Refused(f"a message may be at most {MAX_TEXT} characters; this one has {len(text)}")
        if len(upload_ids or ()) > MAX_FILES:
            raise Refused(f"a message may carry at most {MAX_FILES} files")
        uploads = await self.store.run(self.store.take_uploads, upload_ids or [], chat_id, user_id, message_id)
        if isinstance(uploads, str):
            raise Refused(f"no upload {uploads[:40]!r} of yours waits in this chat; attach the file again")
        shown = await self.store.run(self.store.said, chat_id, message_id, user_id, text, time.time(), uploads)
        event = ev.InboundMessage(
            route=ev.Route(channel=CHANNEL, chat_id=chat_id),
            message_id=message_id,
            sender=ev.Sender(id=user_id, name=name),
            text=text,
            sent_at=time.time(),
            chat_name=f"web {chat_id}",
            attachments=tuple(u.attachment() for u in uploads),
        )
        await publish(self.js, subjects.inbound(CHANNEL), event, msg_id=event.key)
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
        """One outbound event: kept in web.db, then receipted, then shown; only then acknowledged (by consume)."""
        chat = event.route.chat_id
        if isinstance(event, ev.Typing):
            self.hub.tell(chat, {"kind": "typing", "active": event.active})
            return
        if isinstance(event, ev.OutboundReaction):
            self.hub.tell(chat, {"kind": "reaction", "target": event.target_message_id, "emoji": event.emoji})
            return
        if isinstance(event, ev.OutboundEdit):
            shown = await self.store.run(self.store.edited, event)
        else:
            shown = await self.store.run(self.store.answered, event, time.time())
            if shown is None:
                self.counts.redelivered += 1
            await self._receipt(event)  # again on a redelivery: the first one may not have reached JetStream
        if shown is not None:
            self.counts.shown += 1
            self.hub.tell(chat, {"kind": "message", **shown.as_json()})

    async def _receipt(self, event: ev.OutboundMessage) -> None:
        receipt = ev.receipt_for(event, platform_message_id=event.id)  # an edit or a reaction names it back
        await publish(self.js, subjects.receipt(CHANNEL), receipt, msg_id=f"receipt:{event.id}")
