"""The bridge contract: what one chat platform's bridge implements, and what its listener publishes through.

A bridge module provides a `Bridge` subclass and `async def main(ctx)` that calls `service.serve(ctx,
bridge)`; it is registered under the `clawden.channels` entry point group and runs as
`clawden run channel@<name>`. Its settings and token come through `clawden.bridgeconfig`.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
from nats.js import JetStreamContext

from clawden import control
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from clawden.bus.ctl import router as router_api
from services.channels.retry import PlatformError
from services.channels.state import BridgeState

log = logging.getLogger("clawden.channels")


# --- what a bridge declares -------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    max_text: int  # the longest message text, in the platform's own units (see `measure`)
    measure: Callable[[str], int] = field(default=len, compare=False)
    threads: bool = False
    edits: bool = False
    reactions: bool = False
    files: bool = False
    cards: bool = False
    typing: bool = False
    typing_interval: float = 4.0  # how often the platform needs the typing signal renewed
    max_file_bytes: int = 0  # largest upload
    max_download_bytes: int = 0  # largest inbound attachment the bridge fetches
    # The platform drops a repeated send carrying the same key (Matrix transaction ids, Discord
    # nonces): a send whose answer was lost may then be repeated safely, for `dedupe_window` seconds after
    # its first try (past that, the platform may take a repeat for a new message: it is reported unconfirmed).
    idempotent_sends: bool = False
    dedupe_window: float = 0.0
    # How many times a send whose answer was lost (kind unknown) is sent again where the platform does
    # not dedupe: each may post a second copy, so a bridge sets it only when a lost message is the worse harm.
    ambiguous_resends: int = 0

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("measure")
        return out


@dataclass(frozen=True)
class GroupReach:
    """Which group-chat messages the platform hands the bridge (Telegram's privacy mode), learnt from the
    platform at start and announced with the capabilities, for `clawden chats list` and `clawden doctor`."""

    messages: Literal["all", "addressed"]
    note: str  # for a person: what reaches the bot in a group, and how to change it


@dataclass(frozen=True)
class ButtonRef:
    """A card button as the platform gets it: `data` comes back on a click and fits any platform."""

    label: str
    data: str
    style: str = "default"


class Bridge(abc.ABC):
    """One chat platform. Methods raise `PlatformError` so the shared retry policy can classify failures."""

    name: str
    capabilities: Capabilities
    # The listener must call `Inbound.alive()` at least this often; if it does not, it is taken for
    # connected-but-deaf, cancelled, `reconnect()`ed and started again.
    deaf_after: float = 120.0
    # None until the bridge knows (or where the platform hands a bridge every group message).
    group_reach: GroupReach | None = None

    async def start(self) -> None:  # noqa: B027 - an optional hook; the default does nothing
        """Check credentials and reach the platform once; raise BridgeConfigError with a clear message."""

    @abc.abstractmethod
    async def listen(self, inbound: Inbound) -> None:
        """Receive platform events until cancelled, publishing each through `inbound` before the
        platform's cursor moves past it; catch up on what arrived while the bridge was down."""

    @abc.abstractmethod
    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        """Post one message (within max_text); returns its platform id. `key` names this part of this
        outbound message and stays the same on every try: platforms that dedupe sends take it."""

    async def send_file(self, route: ev.Route, path: Path, *, key: str) -> str:
        raise PlatformError(f"{self.name} cannot send files", "permanent")

    async def edit(self, route: ev.Route, target: str, text: str, buttons: list[list[ButtonRef]]) -> None:
        raise PlatformError(f"{self.name} cannot edit messages", "permanent")

    async def react(self, route: ev.Route, target: str, emoji: str) -> None:
        raise PlatformError(f"{self.name} cannot add reactions", "permanent")

    async def delete(self, route: ev.Route, target: str) -> None:
        """Remove one of the bot's messages (a part an edit of a split message no longer needs); one already
        gone counts as removed. Where the platform cannot, the part is edited to a bare mark instead."""
        raise PlatformError(f"{self.name} cannot delete messages", "permanent")

    def about_to_send(self, event: ev.OutboundMessage) -> None:  # noqa: B027 - an optional hook
        """Called with each outbound message before its parts go: a bridge whose platform reports delivery
        later (WhatsApp's status webhooks) keeps what such a late receipt must name (session and seq)."""

    def pace(self, route: ev.Route) -> float:
        """Seconds until the platform's rate limits let one more message (or edit) into this chat, that moment
        booked for it. Delivery waits them out before a part is logged as being sent, so a stop meanwhile
        leaves it plainly unsent. A rate, never what delivery rests on: a rate-limit answer is still waited
        out and retried."""
        return 0.0

    async def typing(self, route: ev.Route) -> None:  # noqa: B027 - an optional hook
        """Show "typing…" in the chat for about `capabilities.typing_interval` seconds."""

    async def reconnect(self) -> None:  # noqa: B027 - an optional hook
        """Drop connections that may be half-open; the listener is started again afterwards."""

    async def close(self) -> None:  # noqa: B027 - an optional hook
        """Release connections at shutdown."""


# --- inbound: what a listener publishes ---------------------------------------------------------------


def card_token(card_id: str) -> str:
    """Short, stable button data prefix for a card: 16 URL-safe characters (96 bits)."""
    return base64.urlsafe_b64encode(hashlib.sha256(card_id.encode()).digest())[:16].decode()


class Liveness:
    """When the listener last showed it was making progress."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self._beat = asyncio.Event()

    def alive(self) -> None:
        self.last = time.monotonic()
        self._beat.set()

    @property
    def age(self) -> float:
        return time.monotonic() - self.last

    async def wait_deaf(self, after: float) -> None:
        """Returns once `after` seconds pass without a sign of life."""
        while True:
            self._beat.clear()
            remaining = after - self.age
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat.wait(), remaining)


@dataclass
class BridgeStats:
    inbound: int = 0
    clicks: int = 0
    expired_clicks: int = 0
    sent: int = 0
    parts: int = 0
    failed: int = 0
    unconfirmed: int = 0
    retries: int = 0
    unsent: int = 0  # calls whose connection failed before the request left (retried like a 5xx)
    ambiguous: int = 0  # calls whose connection dropped after the request left (see ambiguous_resends)
    expired: int = 0  # inbound messages the platform dropped before the listener fetched them
    reconnects: int = 0
    listener_errors: int = 0
    last_alive: float = 0.0  # wall clock of the listener's last sign of life (shown by `clawden status`)


class Inbound:
    """Handed to `Bridge.listen`: publishes platform events durably and tracks the listener's liveness."""

    def __init__(
        self, js: JetStreamContext, channel: str, state: BridgeState, files_dir: Path, stats: BridgeStats
    ) -> None:
        self.js = js
        self.channel = channel
        self.state = state
        self.files_dir = files_dir
        self.stats = stats
        self.liveness = Liveness()

    def alive(self) -> None:
        self.liveness.alive()
        self.stats.last_alive = round(time.time(), 1)

    async def pause(self, seconds: float) -> None:
        """A listener's wait between tries: long waits still count as signs of life."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.alive()
            await asyncio.sleep(min(left, 5.0))
        self.alive()

    async def fetch_attachments(
        self, message: ev.InboundMessage, limit: int, get: Callable[[ev.Attachment], Awaitable[bytes]]
    ) -> ev.InboundMessage:
        """`message` with each attachment fetched by `get` into the bridge's folder (its url then the local
        file), three tries while `get` raises a transient PlatformError; one over `limit` bytes is not
        fetched, one that cannot be keeps an empty url, and the text says what was too large."""
        attachments, notes = [], []
        for attachment in message.attachments:
            path: Path | None = None
            if attachment.size > limit:
                notes.append(f"[{attachment.name} was too large to fetch]")
            elif attachment.url:
                path = await self._fetch(attachment, message, get)
            attachments.append(msgspec.structs.replace(attachment, url=path.as_uri() if path else ""))
        text = message.text + ("\n\n" if message.text and notes else "") + "\n".join(notes)
        return msgspec.structs.replace(message, attachments=tuple(attachments), text=text)

    async def _fetch(
        self, attachment: ev.Attachment, message: ev.InboundMessage, get: Callable[[ev.Attachment], Awaitable[bytes]]
    ) -> Path | None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", attachment.name)[-100:] or "file"
        dest = self.files_dir / re.sub(r"[^A-Za-z0-9]", "_", message.message_id) / safe
        for attempt in range(3):
            try:
                body = await get(attachment)
            except PlatformError as exc:
                if exc.kind == "permanent" or attempt == 2:
                    log.warning(
                        "%s: could not fetch %s of %s: %s", self.channel, attachment.name, message.key, exc.description
                    )
                    return None
                await self.pause(1.0 + attempt)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(dest.write_bytes, body)
            return dest
        return None

    async def publish(self, event: ev.Inbound) -> None:
        """Returns once JetStream has stored the event; only then may the platform cursor move.

        NATS being away is waited out, never dropped: the key dedupes a publish that did land.
        """
        failures = 0
        while True:
            try:
                await publish(self.js, subjects.inbound(self.channel), event, msg_id=event.key)
                break
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("cannot store inbound %s in JetStream yet (%d tries): %r", event.key, failures, exc)
                self.alive()  # waiting on NATS is not the platform going deaf
                await asyncio.sleep(min(5.0, 0.2 * 2**failures))
        if failures:
            log.info("stored inbound %s after %d failed tries", event.key, failures)
        if isinstance(event, ev.InboundMessage):
            self.stats.inbound += 1

    async def click(
        self, route: ev.Route, data: str, *, action_id: str, sender: ev.Sender, message_id: str | None
    ) -> bool:
        """A button press: published as an InboundAction; False when the data names no known card."""
        token, _, index = data.partition(":")
        card = await self.state.card(token)
        if card is None or not index.isdigit() or int(index) >= len(card[1]):
            self.stats.expired_clicks += 1
            return False
        card_id, button_ids = card
        await self.publish(
            ev.InboundAction(
                route=route,
                action_id=action_id,
                sender=sender,
                card_id=card_id,
                button_id=button_ids[int(index)],
                message_id=message_id,
                sent_at=time.time(),
            )
        )
        self.stats.clicks += 1
        return True

    async def admit(self, chat_id: str, user_id: str) -> tuple[bool, str]:
        """An invite into `chat_id` by `user_id` (`<channel>:<handle>`): may the bot join? The router answers by the
        chat's unknown-sender policy and records a refusal as a dropped message. While it cannot answer this raises
        a transient PlatformError, so the listener tries again without moving its cursor past the invite."""
        invite = router_api.AdmitInvite(channel=self.channel, chat_id=chat_id, user_id=user_id)
        try:
            answer = await control.ask_on(self.js._nc, router_api.ADMIT, invite, timeout=10.0)
        except control.Refused as exc:
            raise PlatformError(f"the router could not decide about an invite: {exc}", "transient") from None
        except control.ControlError as exc:  # no responders, a timeout, NATS away: nothing decided
            raise PlatformError(f"the router did not answer about an invite ({exc})", "transient") from None
        return answer.allowed, answer.reason
