"""Outbound delivery for every bridge: split, send each part once, retry politely, answer with a receipt.

Each part of a message is written to the sent-log as 'sending' before the platform call and as
'sent' after it, so a redelivered outbound event (a crash before the ack) skips what already went
out, and a part whose outcome a crash hid is reported as unconfirmed instead of posted twice. Two
logs hold it: the instance's own (state.py, read first) and the one every instance of the bridge
shares on the bus (clawden/bus/sentlog.py), where a part is claimed before it is sent, so a message
redelivered to another instance (one killed before its ack) is not posted twice either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from clawden.backoff import backoff
from clawden.bus import Retry, publish, sentlog, subjects
from clawden.bus import events as ev
from clawden.cardtext import render_text
from clawden.runtime import sleep_unless_stopping
from services.channels.bridge import Bridge, BridgeStats, ButtonRef, card_token
from services.channels.retry import PlatformError, RetryPolicy
from services.channels.split import split_text
from services.channels.state import BridgeState, PartKind, Send, SendState

log = logging.getLogger("clawden.channels")
T = TypeVar("T")
OutboundEvent = ev.Outbound
# Deliveries of one event that crash the handler before it is reported as failed and dropped.
POISON_AFTER = 5
KEEPALIVE = 5.0  # seconds between in_progress signals: well inside the consumer's ack_wait


class _Taken(Exception):
    """A part's claim found another instance's record in the shared sent-log: this instance sends nothing."""

    def __init__(self, found: sentlog.Found) -> None:
        super().__init__(f"taken: {found.record!r}")
        self.found = found


@dataclass(frozen=True)
class Part:
    text: str = ""
    file: str = ""
    reply_to: str | None = None
    buttons: bool = False  # the part that carries the card's buttons


def plan(event: ev.OutboundMessage, max_text: int, measure: Callable[[str], int], *, cards: bool) -> list[Part]:
    """The parts a message goes out as: its text split to fit, then its files; the reply marker
    on the first part, the card's buttons on the last text part."""
    has_buttons = event.card is not None and bool(event.card.buttons) and cards
    text = render_text(event.text, event.card, numbered=not cards)
    chunks = split_text(text, max_text, measure)
    if has_buttons and not chunks:
        chunks = ["Choose one:"]
    parts = [Part(text=c, reply_to=event.reply_to if i == 0 else None) for i, c in enumerate(chunks)]
    if has_buttons:
        parts[-1] = replace(parts[-1], buttons=True)
    return parts + [Part(file=f, reply_to=None) for f in event.files]


def truncate(text: str, max_text: int, measure: Callable[[str], int]) -> str:
    """For edits, which cannot be split: the first part, marked as cut."""
    chunks = split_text(text, max_text, measure)
    if len(chunks) <= 1:
        return chunks[0] if chunks else ""
    head = chunks[0]
    while head and measure(head + " …") > max_text:
        head = head[:-1]
    return head + " …"


@dataclass(frozen=True)
class PartEdit:
    target: str  # the part's platform id
    text: str = ""
    buttons: bool = False  # the part that carries the card's buttons
    remove: bool = False  # the new text no longer needs this part
    part: int = field(default=-1, compare=False)  # its number in its message, where the sent-log knows it


def plan_edit(
    target: str, parts: Mapping[int, Send], text: str, max_text: int, measure: Callable[[str], int]
) -> list[PartEdit]:
    """What an edit changes. A message the sent-log knows has its text parts refilled in order (the card's
    buttons on the last one used), the text parts the new text no longer needs removed, and its files left
    as they are; more text than its parts hold is cut at the last. A message the log does not know (or
    one of files only) is edited where the target points."""
    texts = [
        (n, p.platform_id) for n, p in sorted(parts.items()) if p.kind == "text" and p.platform_id and not p.removed
    ]
    if len(texts) <= 1:
        n, pid = texts[0] if texts else (-1, target)
        return [PartEdit(pid, truncate(text, max_text, measure), buttons=True, part=n)]
    chunks = split_text(text, max_text, measure) or [""]
    if len(chunks) > len(texts):
        chunks = [*chunks[: len(texts) - 1], truncate("\n\n".join(chunks[len(texts) - 1 :]), max_text, measure)]
    edits = [
        PartEdit(pid, chunk, buttons=i == len(chunks) - 1, part=n)
        for i, ((n, pid), chunk) in enumerate(zip(texts, chunks, strict=False))
    ]
    return [*edits, *(PartEdit(pid, remove=True, part=n) for n, pid in texts[len(chunks) :])]


def button_rows(buttons: list[ButtonRef]) -> list[list[ButtonRef]]:
    """A few short choices side by side; anything longer one per row, so labels stay readable."""
    if len(buttons) <= 3 and all(len(b.label) <= 20 for b in buttons):
        return [buttons]
    return [[b] for b in buttons]


class TypingIndicators:
    """One "typing…" loop per chat, renewed as the platform needs, until its deadline or a reply.

    With twins (two instances of the bridge sharing its lanes), the hint may have gone to one and the reply to
    the other: the one that ends it tells the others (`announce`, a `TypingOff` at `subjects.typing_off`), and
    each stops a loop that a hint before the ending event started (`off`)."""

    def __init__(self, bridge: Bridge, announce: Callable[[ev.TypingOff], Awaitable[None]] | None = None) -> None:
        self.bridge = bridge
        self.announce = announce
        self.tasks: dict[tuple[str, str | None], asyncio.Task[None]] = {}
        self.started: dict[tuple[str, str | None], int] = {}  # the stream seq of the hint each loop runs for

    def start(self, route: ev.Route, until: float, seq: int = 0) -> None:
        self.stop(route)
        key = (route.chat_id, route.thread_id)
        self.tasks[key] = asyncio.create_task(self._run(route, until))
        self.started[key] = seq

    def stop(self, route: ev.Route) -> None:
        key = (route.chat_id, route.thread_id)
        self.started.pop(key, None)
        task = self.tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def end(self, route: ev.Route, seq: int) -> None:
        """The event at `seq` ends "typing…" in the chat: here, and on every twin (a lost notice is only a hint)."""
        self.stop(route)
        if self.announce is not None:
            try:
                await self.announce(ev.TypingOff(route=route, seq=seq))
            except Exception as exc:
                log.debug("could not tell the bridge's twins typing in %s is over: %s", route.chat_id, exc)

    def off(self, notice: ev.TypingOff) -> None:
        """A twin's `end`: stop the loop here unless a later hint started it."""
        key = (notice.route.chat_id, notice.route.thread_id)
        if key in self.tasks and self.started.get(key, 0) < notice.seq:
            self.stop(notice.route)

    async def _run(self, route: ev.Route, until: float) -> None:
        key = (route.chat_id, route.thread_id)
        try:
            while time.time() < until:
                try:
                    await self.bridge.typing(route)
                except PlatformError as exc:
                    log.debug("typing in %s failed: %s", route.chat_id, exc)
                    if not exc.retryable:
                        return
                await asyncio.sleep(min(self.bridge.capabilities.typing_interval, max(0.0, until - time.time())))
        finally:
            if self.tasks.get(key) is asyncio.current_task():
                del self.tasks[key]
                self.started.pop(key, None)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def _keepalive(msg: Msg) -> AsyncIterator[None]:
    """Tell JetStream we are still at it, so a long retry is not redelivered elsewhere meanwhile."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Delivery:
    def __init__(
        self,
        bridge: Bridge,
        state: BridgeState,
        js: JetStreamContext,
        stats: BridgeStats,
        typing: TypingIndicators,
        *,
        stopping: asyncio.Event,
        policy: RetryPolicy,
        typing_horizon: float,
        file_roots: tuple[Path, ...],
        shared: sentlog.SentLog | None = None,
    ) -> None:
        """`shared`: the bridge's shared sent-log; by default the channel's, as this instance (`state`) writes it."""
        self.bridge = bridge
        self.caps = bridge.capabilities
        self.channel = bridge.name
        self.state = state
        self.js = js
        self._shared = shared
        self.stats = stats
        self.typing = typing
        self.stopping = stopping
        self.policy = policy
        self.typing_horizon = typing_horizon
        self.file_roots = tuple(root.resolve() for root in file_roots)

    async def handle(self, event: OutboundEvent, msg: Msg) -> None:
        """The consume handler: returns once the platform took the event or its failure is reported."""
        async with _keepalive(msg):
            try:
                await self._dispatch(event, msg.metadata.sequence.stream)
            except Retry:
                raise
            except sentlog.Unavailable as exc:
                # Not the bridge's fault, and nothing went out unclaimed: waited out like NATS being away.
                delay = backoff(msg.metadata.num_delivered, base=0.5, cap=30.0)
                raise Retry(f"the shared sent-log: {exc}", delay=delay) from exc
            except Exception as exc:
                if msg.metadata.num_delivered < POISON_AFTER:
                    raise
                log.exception(
                    "%s: giving up on outbound %s after %d deliveries",
                    self.channel,
                    event.id,
                    msg.metadata.num_delivered,
                )
                if not isinstance(event, ev.Typing):
                    self.stats.failed += 1
                    await self._receipt(
                        event,
                        ok=False,
                        error=f"the {self.channel} bridge could not handle "
                        f"this ({type(exc).__name__}); its log has the details",
                    )

    async def _dispatch(self, event: OutboundEvent, seq: int) -> None:
        if isinstance(event, ev.Typing):
            await self._typing(event, seq)
        elif isinstance(event, ev.OutboundMessage):
            await self._message(event, seq)
        elif isinstance(event, ev.OutboundEdit):
            await self._edit(event)
        else:
            await self._react(event)

    # --- typing ----------------------------------------------------------------------------------

    async def _typing(self, event: ev.Typing, seq: int) -> None:
        if not self.caps.typing:
            return
        if not event.active:
            await self.typing.end(event.route, seq)
            return
        until = event.at + self.typing_horizon
        if until > time.time():  # an old hint replayed after downtime shows nothing
            self.typing.start(event.route, until, seq)

    # --- messages --------------------------------------------------------------------------------

    async def _message(self, event: ev.OutboundMessage, seq: int) -> None:
        # The platform clears "typing…" when the bot posts; renewing it afterwards, here or on a twin, would bring
        # it back.
        if self.caps.typing:
            await self.typing.end(event.route, seq)
        self.bridge.about_to_send(event)
        parts = plan(event, self.caps.max_text, self.caps.measure, cards=self.caps.cards)
        if not parts:
            await self._fail(event, "nothing to send: the message has no text and no files")
            return
        buttons = await self._buttons(event.id, event.card) if any(p.buttons for p in parts) else []
        done = await self.state.sends(event.id)
        ids: list[str] = []
        unconfirmed: list[int] = []
        for i, part in enumerate(parts):
            label = f"part {i + 1} of {len(parts)}: " if len(parts) > 1 else ""
            prior = done.get(i)
            elsewhere = False  # what another instance of the bridge left, found in the shared sent-log
            if prior is None or (prior.state in ("sending", "unconfirmed") and self._repeatable(prior.tried_at)):
                try:
                    tried_at = prior.tried_at if prior else 0.0
                    ids.append(await self._send_part(event, i, part, buttons if part.buttons else [], tried_at))
                    continue
                except PlatformError as exc:
                    if exc.kind != "unknown":
                        await self._fail(event, label + exc.description, ids)
                        return
                    log.warning(
                        "%s: outbound %s %slost its answer (%s); not sending it again",
                        self.channel,
                        event.id,
                        label,
                        exc.description,
                    )
                    ids.append("")
                    unconfirmed.append(i)
                    continue
                except _Taken as taken:
                    prior, elsewhere = await self._adopt(event.id, i, taken.found), True
            if prior.state == "sent":
                ids.append(prior.platform_id)
                continue
            if prior.state == "failed":
                await self._fail(event, label + prior.error, ids)
                return
            # 'sending' left by a process that died mid-call (this one's, or another instance's), or
            # 'unconfirmed': the platform may well have it, and nothing can ask; a second copy is the worse outcome.
            if prior.state == "sending":
                who = "another instance of the bridge" if elsewhere else "the bridge"
                log.warning(
                    "%s: outbound %s %swas in flight when %s stopped; not sending it again",
                    self.channel,
                    event.id,
                    label,
                    who,
                )
                await self.state.mark(event.id, i, "unconfirmed", error=f"{who} stopped mid-send")
            ids.append("")
            unconfirmed.append(i)
        if unconfirmed:
            self.stats.unconfirmed += 1
            which = ", ".join(str(i + 1) for i in unconfirmed)
            what = f"part {which} of {len(parts)}" if len(parts) > 1 else "the message"
            await self._receipt(
                event,
                ok=False,
                unconfirmed=True,
                part_ids=ids,
                platform_id=ids[-1] or None,
                error=f"unconfirmed: {self.channel} did not confirm {what} (the connection or "
                "the bridge dropped mid-send); it was not sent again to avoid a duplicate",
            )
            return
        self.stats.sent += 1
        await self._receipt(event, ok=True, part_ids=ids, platform_id=ids[-1])

    async def _send_part(
        self, event: ev.OutboundMessage, i: int, part: Part, buttons: list[list[ButtonRef]], tried_at: float
    ) -> str:
        """Claim the part in the shared sent-log, log it 'sending' in this instance's own, send it, log what
        came of it in both; `tried_at`, when an earlier delivery first tried it (0: never). Raises `_Taken` where
        another instance's record stands in the shared log."""
        kind: PartKind = "file" if part.file else "text"

        async def once() -> str:
            await self._paced(event.route)  # before 'sending': a stop while waiting leaves it unsent
            # The claim is stored before anything else: a part is never sent unrecorded where the other
            # instances look, and a claim that finds another's record sends nothing.
            shared = await self._shared_log()
            found = await shared.claim(event.id, i, kind, dedupe_window=self._dedupe_window)
            if found is not None:
                raise _Taken(found)
            await self.state.mark(event.id, i, "sending", kind=kind)
            try:
                key = f"{event.id}#{i}"
                if part.file:
                    return await self.bridge.send_file(event.route, self._allowed_file(part.file), key=key)
                return await self.bridge.send_text(
                    event.route, part.text, reply_to=part.reply_to, buttons=buttons, key=key
                )
            except PlatformError as exc:
                if exc.retryable:  # the platform did not act: the part may go again, from any instance
                    await self.state.unmark(event.id, i)
                    await self._share(event.id, i, "unsent", error=exc.description)
                raise

        try:
            platform_id = await self._attempt(
                event,
                once,
                idempotent=self.caps.idempotent_sends,
                resends=self.caps.ambiguous_resends,
                repeat_until=(tried_at or time.time()) + self._dedupe_window,
            )
        except PlatformError as exc:
            state: SendState = "unconfirmed" if exc.kind == "unknown" else "failed"
            await self.state.mark(event.id, i, state, error=exc.description)
            await self._share(event.id, i, state, error=exc.description)
            raise
        await self.state.mark(event.id, i, "sent", platform_id)
        await self._share(event.id, i, "sent", platform_id=platform_id, kind=kind)
        self.stats.parts += 1
        return platform_id

    async def _share(
        self,
        outbound_id: str,
        i: int,
        state: SendState | Literal["unsent"],
        *,
        platform_id: str = "",
        error: str = "",
        kind: PartKind = "",
        removed: bool = False,
    ) -> None:
        """Tell the other instances what came of a part this one claimed, or that an edit took a sent part away.
        Where the bus does not take it, the claim's 'sending' stays there, which they read as unconfirmed: never a
        second copy, so it is logged, not raised (this instance's own log has the outcome)."""
        try:
            shared = await self._shared_log()
            await shared.record(outbound_id, i, state, platform_id=platform_id, error=error, kind=kind, removed=removed)
        except sentlog.Unavailable as exc:
            log.warning(
                "%s: outbound %s part %d is %s, but the shared sent-log did not take it: %s",
                self.channel,
                outbound_id,
                i + 1,
                state,
                exc,
            )

    async def _adopt(self, outbound_id: str, i: int, found: sentlog.Found) -> Send:
        """What another instance left for a part, copied into this instance's own log: 'sent' with its platform
        id (so edits here find it), 'failed' with its reason; a send whose outcome is unknown stays 'sending'
        for the caller to report. A record that cannot be read is one whose outcome nobody knows."""
        record = found.record
        if record is None:
            await self.state.mark(
                outbound_id, i, "unconfirmed", error="its record in the shared sent-log is unreadable"
            )
            return Send(i, "unconfirmed", "", "")
        if record.state == "sent":
            await self.state.mark(outbound_id, i, "sent", record.platform_id, kind=record.kind)
        elif record.state in ("failed", "unconfirmed"):
            await self.state.mark(outbound_id, i, record.state, error=record.error, kind=record.kind)
        state: SendState = "sending" if record.state == "unsent" else record.state  # (a claim takes 'unsent' over)
        return Send(i, state, record.platform_id, record.error, record.kind)

    @property
    def _dedupe_window(self) -> float:
        """For how long after a send the platform drops a repeat of its key; 0 where it never does."""
        return self.caps.dedupe_window if self.caps.idempotent_sends else 0.0

    def _repeatable(self, tried_at: float) -> bool:
        """Whether a part first tried at `tried_at` (0: unknown), whose outcome is unknown, may go again."""
        return tried_at > 0 and time.time() - tried_at < self._dedupe_window

    async def _shared_log(self) -> sentlog.SentLog:
        if self._shared is None:
            self._shared = sentlog.SentLog(self.js, self.channel, await self.state.instance_id())
        return self._shared

    def _allowed_file(self, name: str) -> Path:
        # The runner vets what agents send; this keeps a bad outbound event from uploading any file
        # the bridge's user can read.
        path = Path(name.removeprefix("file://")).resolve()
        if not any(path.is_relative_to(root) for root in self.file_roots):
            raise PlatformError(f"refused to send {name}: it is outside the session folders", "permanent")
        if not self.caps.files:
            raise PlatformError(f"{self.channel} cannot send files", "permanent")
        if not path.is_file():
            raise PlatformError(f"no such file: {path.name}", "permanent")
        size = path.stat().st_size
        if self.caps.max_file_bytes and size > self.caps.max_file_bytes:
            raise PlatformError(
                f"{path.name} is {size} bytes; {self.channel} takes at most {self.caps.max_file_bytes}", "permanent"
            )
        return path

    async def _buttons(self, card_id: str, card: ev.Card | None) -> list[list[ButtonRef]]:
        if card is None or not card.buttons:
            return []
        token = card_token(card_id)
        await self.state.remember_card(token, card_id, [b.id for b in card.buttons])
        return button_rows([ButtonRef(b.label, f"{token}:{i}", b.style) for i, b in enumerate(card.buttons)])

    # --- edits and reactions (repeating them is harmless, so any failure may be retried) -----------

    async def _edit(self, event: ev.OutboundEdit) -> None:
        if not self.caps.edits:
            await self._fail(event, f"{self.channel} cannot edit messages")
            return
        buttons = await self._buttons(event.id, event.card) if self.caps.cards else []
        outbound_id, parts = await self._parts_of(event)
        edits = plan_edit(
            event.target_message_id,
            parts,
            render_text(event.text, event.card),
            self.caps.max_text,
            self.caps.measure,
        )
        for n, change in enumerate(edits):
            label = f"part {n + 1} of {len(edits)}: " if len(edits) > 1 else ""
            try:
                await self._apply_edit(event, change, buttons if change.buttons else [], outbound_id)
            except PlatformError as exc:
                await self._fail(event, label + exc.description)
                return
        await self._receipt(event, ok=True, platform_id=event.target_message_id)

    async def _parts_of(self, event: ev.OutboundEdit) -> tuple[str, dict[int, Send]]:
        """The message the edit's target is a part of, with every part: where the event names it, as the shared
        sent-log has it (a twin may have sent it, or taken parts away since), once that holds the target; else as
        this instance's own log has it ("", {} where neither knows it: the target alone is edited)."""
        found = await self.state.message_of(event.target_message_id)
        local = found[1] if found else {}
        if event.target_outbound_id:
            shared = await (await self._shared_log()).parts(event.target_outbound_id)
            if any(r.platform_id == event.target_message_id for r in shared.values()):
                # Merged part by part: a 'sent' the bus did not take from this instance is still in its own log.
                parts = {n: p for n, p in local.items() if p.state == "sent"}
                for n, r in shared.items():
                    if r.state == "sent":  # what an edit can reach
                        mine = parts.get(n)
                        parts[n] = Send(
                            n, "sent", r.platform_id, "", r.kind, removed=r.removed or bool(mine and mine.removed)
                        )
                return event.target_outbound_id, parts
        return (found[0], local) if found else ("", {})

    async def _apply_edit(
        self, event: ev.OutboundEdit, change: PartEdit, buttons: list[list[ButtonRef]], outbound_id: str
    ) -> None:
        async def once() -> None:
            await self._paced(event.route)
            if change.remove:
                try:
                    await self.bridge.delete(event.route, change.target)
                    return
                except PlatformError as exc:
                    if exc.retryable or exc.kind == "unknown":
                        raise
                    log.info(
                        "%s: cannot delete part %s (%s); emptying it", self.channel, change.target, exc.description
                    )
            await self.bridge.edit(event.route, change.target, change.text, buttons)

        await self._attempt(event, once, idempotent=True)
        if change.remove:
            await self.state.removed(change.target)
            if outbound_id and change.part >= 0:  # for the twins' later edits of the message
                await self._share(
                    outbound_id, change.part, "sent", platform_id=change.target, kind="text", removed=True
                )

    async def _react(self, event: ev.OutboundReaction) -> None:
        try:
            if not self.caps.reactions:
                raise PlatformError(f"{self.channel} cannot add reactions", "permanent")
            await self._attempt(
                event, lambda: self.bridge.react(event.route, event.target_message_id, event.emoji), idempotent=True
            )
        except PlatformError as exc:
            await self._fail(event, exc.description)
            return
        await self._receipt(event, ok=True, platform_id=event.target_message_id)

    # --- retries and receipts ----------------------------------------------------------------------

    async def _attempt(
        self,
        event: ev.OutboundMessage | ev.OutboundEdit | ev.OutboundReaction,
        call: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        resends: int = 0,
        repeat_until: float = math.inf,
    ) -> T:
        """`resends`: how many sends whose outcome is unknown may go again though the platform does not
        dedupe them (each may post a second copy; the bridge's capabilities say why it accepts that).
        `repeat_until`: the wall-clock time after which the platform no longer drops a repeat of the call.
        An outage (`PlatformError.outage`: the request never left, a 5xx, a rate limit) is waited out for as long as
        it lasts, the event held in its lane; only a refusal, or answers lost past the deadline, end it."""
        started = time.monotonic()
        attempt = 0
        noticed = False
        maybe_done = False  # a try whose outcome is unknown: the platform may have acted on it
        while True:
            try:
                return await call()
            except PlatformError as exc:
                maybe_done = maybe_done or exc.kind == "unknown"
                if exc.connection:
                    if exc.kind == "unknown":
                        self.stats.ambiguous += 1
                    else:
                        self.stats.unsent += 1
                resend = exc.kind == "unknown" and not idempotent and resends > 0
                if not (exc.retryable or (exc.kind == "unknown" and idempotent) or resend):
                    raise
                delay = self.policy.delay(attempt, exc.retry_after)
                elapsed = time.monotonic() - started
                if maybe_done and idempotent and time.time() + delay >= repeat_until:
                    # The platform may have an earlier try, and would no longer drop a repeat of it.
                    raise PlatformError(
                        f"not tried again after {attempt + 1} tries in {elapsed:.0f}s: the platform drops a repeat "
                        f"only for a while after the first; last error: {exc.description}",
                        "unknown",
                        code=exc.code,
                    ) from exc
                if resend:
                    resends -= 1
                    log.warning(
                        "%s: outbound %s lost its answer (%s); sending it once more, which may post it twice",
                        self.channel,
                        event.id,
                        exc.description,
                    )
                if self.policy.gives_up(elapsed, delay, outage=exc.outage):
                    # After a try that may have gone through, giving up is not a refusal: the outcome is unknown.
                    raise PlatformError(
                        f"gave up after {attempt + 1} tries in {elapsed:.0f}s; last error: {exc.description}",
                        "unknown" if maybe_done else "permanent",
                        code=exc.code,
                    ) from exc
                self.stats.retries += 1
                # An outage may last hours, each try a line: the first few, then one in twenty.
                if attempt < 5 or attempt % 20 == 0:
                    log.warning(
                        "%s: outbound %s failed (%s); try %d, next in %.1fs",
                        self.channel,
                        event.id,
                        exc.description,
                        attempt + 1,
                        delay,
                    )
                if not noticed and delay >= self.policy.notice_after:
                    noticed = True
                    await self._receipt(
                        event, ok=False, final=False, error=f"delayed: {exc.description}; trying again in {delay:.0f}s"
                    )
                await self._pause(delay)
                attempt += 1

    async def _paced(self, route: ev.Route) -> None:
        """Wait the platform's pace for one more message into this chat; a stop meanwhile hands the event back
        to JetStream (this part was neither sent nor logged yet, and what went before is in the sent-log)."""
        wait = self.bridge.pace(route)
        if wait > 0 and not await sleep_unless_stopping(self.stopping, wait):
            raise Retry("the bridge is stopping", delay=0.0)

    async def _pause(self, delay: float) -> None:
        """Wait before a retry; on shutdown, hand the event back to JetStream with the wait left."""
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)
        if self.stopping.is_set():
            raise Retry("the bridge is stopping", delay=max(0.0, delay - (time.monotonic() - started)))

    async def _fail(
        self,
        event: ev.OutboundMessage | ev.OutboundEdit | ev.OutboundReaction,
        error: str,
        part_ids: list[str] | None = None,
    ) -> None:
        self.stats.failed += 1
        log.error(
            "%s: outbound %s to chat %s failed for good: %s",
            self.channel,
            event.id,
            event.route.chat_id,
            error,
            extra={"session_id": event.session_id} if event.session_id else None,
        )
        await self._receipt(event, ok=False, error=error, part_ids=part_ids or [])

    async def _receipt(
        self,
        event: ev.OutboundMessage | ev.OutboundEdit | ev.OutboundReaction,
        *,
        ok: bool,
        error: str | None = None,
        final: bool = True,
        unconfirmed: bool = False,
        part_ids: list[str] | None = None,
        platform_id: str | None = None,
    ) -> None:
        receipt = ev.receipt_for(
            event,
            ok=ok,
            platform_message_id=platform_id,
            error=error,
            final=final,
            unconfirmed=unconfirmed,
            part_ids=tuple(part_ids or ()),
        )
        # A delay notice and the final word are two receipts; each is published once per outbound id.
        msg_id = f"receipt:{event.id}" if final else f"receipt:{event.id}:delayed"
        try:
            await publish(self.js, subjects.receipt(self.channel), receipt, msg_id=msg_id)
        except (NatsError, TimeoutError) as exc:
            # NATS away, not the event's fault: waited out, and the event handled again (what went out is in the
            # sent-log), never counted as a crash, which could end in a "could not handle" word on a sent message.
            raise Retry(f"the receipt of {event.id} was not stored: {exc!r}", delay=1.0) from exc
