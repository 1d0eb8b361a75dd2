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
from collections.abc import AsyncIterable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec
from nats.js import JetStreamContext

from clawden import control
from clawden.backoff import backoff
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from clawden.bus.ctl import router as router_api
from clawden.runtime import sleep_unless_stopping
from services.channels.reach import Reach, Trouble, why_unreachable
from services.channels.retry import Kind, PlatformError
from services.channels.state import BridgeState, Queued

log = logging.getLogger("clawden.channels")

# How long a message waits for a file the platform cannot hand over yet (a 5xx, a connection cut) before it is
# published without it, saying why; meanwhile its chat's later messages wait behind it, and other chats go on.
# A person who sent a file with a question expects the answer to be about the file, but not a chat silent for an
# hour: after a few minutes an answer saying the file did not come through (the agent can ask for it again) is
# the better one. The platforms keep a file far longer (Telegram's link an hour at least, Discord's signed CDN
# links a day), so patience, not the file's expiry, ends the wait.
FILE_PATIENCE = 300.0
FILE_RETRY_CAP = 30.0  # the longest pause between two tries of a file that waits (doubling from 1 s)
CHUNK = 64 * 1024  # bytes a download hands over at a time
# A download may take as long as it needs while bytes keep coming; a minute without any is a dead connection.
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)


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
    # What a person calls the far side, in lines such as "cannot reach Telegram since 21:14"; unset: the name.
    platform: str = ""

    async def start(self) -> PlatformError | None:
        """Check credentials and reach the platform once; raise BridgeConfigError with a clear message. Where the
        platform cannot be reached now, the bridge starts anyway (outbound work waits, the listener keeps trying)
        and returns the failure, so the service says at once that it cannot reach it (`Reach`)."""
        return None

    def start_trouble(self, away: PlatformError) -> Trouble:
        """How the service says what `start` returned: by default, that the platform cannot be reached."""
        return Trouble(why_unreachable(away))

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

    async def fetch_file(self, attachment: ev.Attachment, dest: Path) -> None:
        """Download the file `attachment.url` names on the platform into `dest` as it arrives (`save_stream`), in
        its chat's own task, never the listener's. Raise TooLarge past `capabilities.max_download_bytes`,
        PlatformError "permanent" where trying again cannot help (gone, refused: say which) and "transient" where it
        may (a 5xx, a connection cut)."""
        raise PlatformError(f"{self.name} cannot fetch files", "permanent")

    def too_large(self) -> str:
        """Why a file over `capabilities.max_download_bytes` is not fetched, for the agent."""
        return f"the {self.name} bridge fetches files of at most {self.capabilities.max_download_bytes // 2**20} MB"

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


class TooLarge(PlatformError):
    """A file the bridge does not fetch for its size: the message goes on, its text saying so."""

    def __init__(self, description: str) -> None:
        super().__init__(description, "permanent")


async def save_stream(chunks: AsyncIterable[bytes], dest: Path, limit: int) -> int:
    """Write a download into `dest` as it arrives (as `<dest>.part`, renamed once whole); past `limit` bytes it is
    TooLarge and nothing is kept. Returns the size."""
    size = 0
    partial = dest.with_name(dest.name + ".part")
    await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
    out = await asyncio.to_thread(partial.open, "wb")
    try:
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"over {limit} bytes")
                await asyncio.to_thread(out.write, chunk)  # the disk may be slow; the loop serves other chats
        finally:
            await asyncio.to_thread(out.close)
        await asyncio.to_thread(partial.rename, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size


def download_refused(platform: str, status: int) -> PlatformError:
    """A file server's answer other than 200: a 5xx, 408 or 429 may pass (transient); anything else will not (the
    file is gone, or not the bot's to read)."""
    kind: Kind = "transient" if status >= 500 or status in (408, 429) else "permanent"
    return PlatformError(f"{platform} answered HTTP {status}", kind, code=status)


async def http_download(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    limit: int,
    *,
    platform: str,
    headers: dict[str, str] | None = None,
    refuse: Callable[[aiohttp.ClientResponse], None] | None = None,
) -> None:
    """GET `url` into `dest` as it arrives (`save_stream`) for a bridge's `fetch_file`: an answer other than 200 is
    `download_refused` (`refuse` may raise first, for a page that is not the file); a connection that fails, drops
    or stays silent for DOWNLOAD_TIMEOUT's minute is transient."""
    try:
        async with session.get(url, headers=headers, timeout=DOWNLOAD_TIMEOUT) as resp:
            if refuse is not None:
                refuse(resp)
            if resp.status != 200:
                raise download_refused(platform, resp.status)
            await save_stream(resp.content.iter_chunked(CHUNK), dest, limit)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PlatformError(f"the download from {platform} failed ({type(exc).__name__})", "transient") from None


def _chat_of(event: ev.Inbound) -> str | None:
    """The chat whose order the event keeps: a message, or a person's edit or delete of one."""
    if isinstance(event, ev.InboundMessage | ev.InboundEdit | ev.InboundDelete):
        return event.route.chat_id
    return None


def _pending(attachment: ev.Attachment) -> bool:
    """Still to fetch: it names a file on the platform (fetched ones name a local file, refused ones nothing)."""
    return bool(attachment.url) and not attachment.url.startswith("file://")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} seconds"
    return f"{seconds / 60:.0f} minutes"


def _with_notes(message: ev.InboundMessage, notes: list[str]) -> ev.InboundMessage:
    """The notes an earlier version queued with a message (why a file was not fetched), added to its text; a file's
    reason is now its attachment's `error`."""
    if not notes:
        return message
    return msgspec.structs.replace(message, text=message.text + ("\n\n" if message.text else "") + "\n".join(notes))


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
    waiting_on_files: int = 0  # chats whose messages wait for a file the platform has not handed over yet


class Inbound:
    """Handed to `Bridge.listen`: publishes platform events durably and tracks the listener's liveness.

    A message whose file the platform cannot hand over yet is queued in the bridge's state (`deliver`), with its
    chat's later events behind it, and published by a task of its own once the file comes, is refused for good,
    or `patience` runs out: the listener goes on with other chats, and may move the platform's cursor."""

    def __init__(
        self,
        js: JetStreamContext,
        channel: str,
        state: BridgeState,
        files_dir: Path,
        stats: BridgeStats,
        *,
        bridge: Bridge | None = None,
        stopping: asyncio.Event | None = None,
        patience: float = FILE_PATIENCE,
        reach: Reach | None = None,
    ) -> None:
        self.js = js
        self.channel = channel
        self.state = state
        self.files_dir = files_dir
        self.stats = stats
        self.liveness = Liveness()
        # Whether the listener reaches the platform (the service's ping says so): `alive` ends a trouble, and
        # `pause` starts one where the listener heard nothing since it started or last paused.
        self.reach = reach or Reach(channel)
        self._heard = False
        self.bridge = bridge  # whose `fetch_file` fetches what `deliver` is handed
        self.stopping = stopping or asyncio.Event()
        self.patience = patience
        self._queued: set[str] | None = None  # chats with events queued behind a file; None until read
        self._releasing: dict[str, asyncio.Task[None]] = {}

    def alive(self) -> None:
        """The listener heard from its platform: a sign of life, and the end of any trouble reaching it."""
        self._stir()
        self._heard = True
        self.reach.reached()

    def listening(self) -> None:
        """A listener (re)starts: alive to the deafness watch, but it has not heard from its platform yet."""
        self._stir()
        self._heard = False

    async def wait(self, seconds: float) -> None:
        """A wait that says nothing of the platform's reach: a side task's (Discord's history catch-up told to slow
        down) while the listener itself hears the platform."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._stir()
            await asyncio.sleep(min(left, 5.0))
        self._stir()

    async def pause(self, seconds: float) -> None:
        """A listener's wait between tries: long waits still count as signs of life. Every bridge's listener
        pauses after a call to its platform failed, and also to wait after one that worked (an album's other
        parts, a poll interval), but always having heard from the platform first: a pause with nothing heard
        since the listener started or last paused follows a failure, so the bridge cannot reach its platform."""
        if not self._heard:
            self.reach.failed()
        self._heard = False
        await self.wait(seconds)

    def _stir(self) -> None:
        self.liveness.alive()
        self.stats.last_alive = round(time.time(), 1)

    async def publish(self, event: ev.Inbound) -> None:
        """Returns once the event is stored: in JetStream, or queued behind a message of its chat that waits for a
        file (`deliver`), so the chat's order holds. Only then may the platform cursor move.

        NATS being away is waited out, never dropped: the key dedupes a publish that did land.
        """
        chat = _chat_of(event)
        if chat is not None and chat in await self._queued_chats():
            await self._queue(chat, Queued(ev.encode(event), [], time.time()))
            return
        await self._store(event)

    async def deliver(self, message: ev.InboundMessage) -> None:
        """Publish a message with its files fetched into the bridge's folder: each attachment's url is then the
        local file, or "" with the text saying why it is not there (too large, refused, not handed over in time).

        A message with files to fetch is queued in the bridge's state, with its chat's later events behind it, and
        its chat's own task fetches them and publishes it: a slow download holds up neither the listener (its
        platform's heartbeats, other chats) nor another chat. Returns once the message is stored either way."""
        chat = message.route.chat_id
        if chat in await self._queued_chats() or any(_pending(a) for a in message.attachments):
            await self._queue(chat, Queued(ev.encode(message), [], time.time()))
            return
        await self._store(message)

    async def resume(self) -> None:
        """Start publishing what an earlier run left queued (`serve` calls it before the listener starts)."""
        await self._queued_chats()

    async def close(self) -> None:
        """Stop the queues' tasks; what they hold stays in the state for the next start."""
        tasks = list(self._releasing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the queue behind a file ---------------------------------------------------------------------

    async def _queued_chats(self) -> set[str]:
        if self._queued is None:
            self._queued = set(await self.state.queued_chats())
            self.stats.waiting_on_files = len(self._queued)
            for chat in self._queued:
                self._release_soon(chat)
        return self._queued

    async def _queue(self, chat: str, queued: Queued) -> None:
        await self.state.queue(chat, queued)
        chats = await self._queued_chats()
        chats.add(chat)
        self.stats.waiting_on_files = len(chats)
        self._release_soon(chat)

    def _release_soon(self, chat: str) -> None:
        task = self._releasing.get(chat)
        if task is None or task.done():
            self._releasing[chat] = asyncio.create_task(self._keep_releasing(chat), name=f"{self.channel}-queue-{chat}")

    async def _keep_releasing(self, chat: str) -> None:
        failures = 0
        while True:
            try:
                await self._release(chat)
                return
            except Exception:  # the state or a bug: what waits stays queued, and is tried again
                failures += 1
                log.exception("%s: publishing what waits in chat %s failed; trying again", self.channel, chat)
                if not await sleep_unless_stopping(self.stopping, backoff(failures, cap=60.0)):
                    return

    async def _release(self, chat: str) -> None:
        """Publish the chat's queued events in order, each once what it waits for came or was given up on."""
        tries = 0
        while (queued := await self.state.first_queued(chat)) is not None:
            try:
                event = ev.INBOUND_DECODER.decode(queued.event)
            except msgspec.DecodeError as exc:  # written by this bridge: only a change of the contract does this
                log.error(
                    "%s: dropping a queued event that no longer decodes (%s): %r", self.channel, exc, queued.event
                )
                await self.state.dequeue(queued.seq)
                continue
            if isinstance(event, ev.InboundMessage):
                ready = await self._retry_files(event, queued)
                if ready is None:
                    left = queued.since + self.patience - time.time()  # the last try comes as the patience ends
                    delay = max(0.0, min(backoff(tries, cap=FILE_RETRY_CAP), left))
                    tries += 1
                    if not await sleep_unless_stopping(self.stopping, delay):
                        return
                    continue
                event = ready
            await self._store(event, waiting=lambda: None)
            await self.state.dequeue(queued.seq)
            tries = 0
        self._queued_discard(chat)

    def _queued_discard(self, chat: str) -> None:
        if self._queued is not None:
            self._queued.discard(chat)
            self.stats.waiting_on_files = len(self._queued)

    async def _retry_files(self, message: ev.InboundMessage, queued: Queued) -> ev.InboundMessage | None:
        """The message to publish once its files are fetched, refused, or waited for `patience`; None while a file
        may still come (what this try fetched is kept in the state)."""
        fetched, why = await self._fetch(message)
        if not why:
            if queued.why:
                log.info("%s: %s has its files now", self.channel, message.key)
            return _with_notes(fetched, queued.notes)
        waited = time.time() - queued.since
        if waited < self.patience:
            if not queued.why:
                log.warning(
                    "%s: %s waits for a file the platform cannot hand over yet (%s); its chat's next messages wait "
                    "behind it, for %.0f minutes at most",
                    self.channel,
                    message.key,
                    why,
                    self.patience / 60,
                )
            await self.state.requeue(Queued(ev.encode(fetched), queued.notes, queued.since, why, queued.seq))
            return None
        failing = f"still failing after {_duration(waited)} ({why})"
        log.warning("%s: %s goes without the files it waited for: %s", self.channel, message.key, failing)
        attachments = tuple(
            msgspec.structs.replace(a, url="", error=f"it could not be fetched: {failing}") if _pending(a) else a
            for a in fetched.attachments
        )
        return _with_notes(msgspec.structs.replace(fetched, attachments=attachments), queued.notes)

    async def _fetch(self, message: ev.InboundMessage) -> tuple[ev.InboundMessage, str]:
        """One pass over the files still to fetch, in order: the message with each fetched (its local file) or
        refused (no url, and its `error` saying why), up to the first that may come later, and why that one did not
        ("" when none is left)."""
        attachments = list(message.attachments)
        why = ""
        for i, attachment in enumerate(attachments):
            if not _pending(attachment):
                continue
            try:
                path = await self._fetch_one(attachment, message, i)
                attachments[i] = msgspec.structs.replace(attachment, url=path.as_uri())
            except TooLarge:
                error = f"it was too large to fetch: {self._bridge.too_large()}"
                attachments[i] = msgspec.structs.replace(attachment, url="", error=error)
            except PlatformError as exc:
                if exc.kind != "permanent":
                    why = exc.description
                    break
                log.warning("%s: cannot fetch %s of %s: %s", self.channel, attachment.name, message.key, exc)
                error = f"it could not be fetched: {exc.description}"
                attachments[i] = msgspec.structs.replace(attachment, url="", error=error)
            except OSError as exc:  # the bridge's own disk (full, unwritable): may pass; the patience ends it
                why = f"it could not be saved: {exc.strerror or exc}"
                break
        return msgspec.structs.replace(message, attachments=tuple(attachments)), why

    async def _fetch_one(self, attachment: ev.Attachment, message: ev.InboundMessage, index: int) -> Path:
        if attachment.size > self._bridge.capabilities.max_download_bytes:
            raise TooLarge(f"{attachment.size} bytes")
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", attachment.name)[-100:] or "file"
        dest = self.files_dir / re.sub(r"[^A-Za-z0-9]", "_", message.message_id)[-120:] / f"{index + 1}-{safe}"
        await self._bridge.fetch_file(attachment, dest)
        return dest

    @property
    def _bridge(self) -> Bridge:
        if self.bridge is None:
            raise PlatformError(f"the {self.channel} bridge fetches no files", "permanent")
        return self.bridge

    async def _store(self, event: ev.Inbound, waiting: Callable[[], None] | None = None) -> None:
        """Returns once JetStream has stored the event; NATS being away is waited out, calling `waiting` (by
        default `alive`: waiting on NATS is not the platform going deaf)."""
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
                (waiting or self.alive)()
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
