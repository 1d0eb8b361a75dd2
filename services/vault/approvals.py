"""Asking a human about a held request: the card (pure) and the bus round trip.

The vault publishes an ``ApprovalRequest`` on ``clawden.approval.request`` and waits for the
``ApprovalDecision`` on ``clawden.approval.decision.<id>`` (subscribed before publishing, so a fast
decision cannot be missed) or for the expiry. An ask that ends without a decision is withdrawn
(``ApprovalWithdrawn``), so its card never shows "Approved" with nobody waiting; each open ask is recorded in
``vault.db`` until it ends, and a vault that stopped without withdrawing one withdraws it at its next start.
Who is asked and how is the approvals service's job.
The card shows method, host, path and the first bytes of the body with every stored value and
anything that looks like a credential blanked out; never a header.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from clawden.bus import events as ev
from clawden.bus import publish, subjects

log = logging.getLogger("clawden.vault")

PREVIEW_BYTES = 4096  # read from the body before asking; the rest stays on the wire
CARD_PREVIEW_CHARS = 600
# Once its own wait has ended and it has withdrawn the ask, how long the vault waits for the approvals service's
# final word on it: the withdrawal, or a press applied just before it. A bound on waiting for an absent service,
# not a judgement: with the service up, its decision (published either way) ends the wait.
FINAL_WORD = 3.0
Outcome = Literal["approved", "denied", "expired", "unavailable"]
_CREDENTIAL_FIELD = re.compile(
    r"""(?ix)
    (["']?(?:api[_-]?key|access[_-]?token|refresh[_-]?token|token|secret|password|passwd|authorization|
          client[_-]?secret|private[_-]?key)["']?\s*[:=]\s*)
    ("[^"]*"|'[^']*'|[^\s&,}]+)"""
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


@dataclass(frozen=True, slots=True)
class ApprovalAsk:
    id: str
    agent_group: str
    method: str
    host: str
    path: str  # with the query string: the human sees the whole target
    rule: str
    preview: str  # already redacted
    expires_at: float
    body_bytes: int | None = 0  # the whole body's size; None when not known yet (a stream)
    body_whole: bool = True  # the preview holds all of it (before the card's own cut)


@dataclass(frozen=True, slots=True)
class LimitTrip:
    """A rate limit that just stopped a request: told to the owner once per rule, group and window."""

    rule: str
    agent_group: str
    limit: int
    window: str  # minute, hour or day
    window_index: int
    window_seconds: int
    method: str
    host: str
    path: str

    @property
    def id(self) -> str:
        """The same for every trip of one window, so a repeat (a vault restart) is one card, not two."""
        key = f"{self.rule}\0{self.agent_group}\0{self.window_seconds}\0{self.window_index}"
        return "limit-" + hashlib.sha256(key.encode()).hexdigest()[:24]

    @property
    def resets_at(self) -> float:
        return float((self.window_index + 1) * self.window_seconds)


class Approver(Protocol):
    async def ask(self, ask: ApprovalAsk) -> Outcome:
        """The outcome of `ask`, which ends of itself: its expiry (`ask.expires_at`) and every step after it bounded by
        its own deadline. The gateway sets no timer over it (only the agent hanging up cancels it), so a decision
        returned late is still the answer."""
        ...

    async def tell_limit(self, trip: LimitTrip) -> None: ...


class NoApprover:
    """Where no bus is wired (tools, benchmarks): nobody can say yes, and nobody is told."""

    async def ask(self, ask: ApprovalAsk) -> Outcome:
        return "unavailable"

    async def tell_limit(self, trip: LimitTrip) -> None:
        return None


def limit_event(trip: LimitTrip) -> ev.ApprovalRequest:
    """The card for a tripped limit, sent the way approval cards go (the approvals service finds the
    group's admin or the owner). It asks nothing, so it has no buttons; it lapses when the window ends."""
    resets = time.strftime("%H:%M", time.localtime(trip.resets_at))
    card = ev.Card(
        title=f"Agent {trip.agent_group} hit the rate limit {trip.rule}",
        body="\n".join(
            [
                f"{trip.limit} requests per {trip.window}; the last one refused: {trip.method} "
                f"https://{trip.host}{trip.path}",
                f"Its requests under this rule get 429 until the {trip.window} ends ({resets}).",
                f"Raise it with `clawden rules update {trip.rule} --limit N`, or lift it with "
                f"`clawden rules disable {trip.rule}`. This is said once per {trip.window}.",
            ]
        ),
        buttons=(),
    )
    return ev.ApprovalRequest(
        id=trip.id,
        kind="credential",
        requester="vault",
        agent_group=trip.agent_group,
        card=card,
        expires_at=trip.resets_at,
        context={"rule": trip.rule, "notice": "rate_limited"},  # no host: the card is shown as it is
    )


def redact_preview(raw: bytes, values: Iterable[str], limit: int = CARD_PREVIEW_CHARS) -> str:
    text = raw.decode("utf-8", "replace")
    for value in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, "[secret]")
    text = _CREDENTIAL_FIELD.sub(lambda m: m.group(1) + '"[redacted]"', text)
    text = _BEARER.sub(lambda m: m.group(1) + " [redacted]", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


MODEL_CALL = re.compile(r"^/v1/messages(?:\?|$)")
_MODEL_FIELD = re.compile(r'"model"\s*:\s*"([^"]{1,100})"')


def card_for(ask: ApprovalAsk) -> ev.Card:
    lines = [f"{ask.method} https://{ask.host}{ask.path}", f"Agent group: {ask.agent_group}", f"Rule: {ask.rule}"]
    if ask.method == "POST" and MODEL_CALL.match(ask.path) and ask.host.endswith("anthropic.com"):
        # Its body is the agent's whole conversation, whose start is Claude Code's system prompt: no
        # preview a person could judge by. Say what it is instead.
        model = _MODEL_FIELD.search(ask.preview)
        size = "" if ask.body_bytes is None else f", {ask.body_bytes:,} bytes"
        lines += [
            "",
            f"A model call: the agent asks {model.group(1) if model else 'the model'} to think"
            f" (its conversation so far{size}; not shown).",
        ]
    elif ask.preview:
        whole = ask.body_whole and not ask.preview.endswith("…")
        size = "of an unknown size" if ask.body_bytes is None else f"of {ask.body_bytes:,} bytes"
        lines += [
            "",
            "Body (credentials removed):"
            if whole
            else f"Body: only its start is shown, {size} in all (credentials removed):",
            ask.preview,
        ]
    return ev.Card(
        title=f"Let agent {ask.agent_group} {ask.method} {ask.host}{ask.path}?",
        body="\n".join(lines),
        buttons=(
            ev.Button(id="approve", label="Approve", style="primary"),
            ev.Button(id="deny", label="Deny", style="danger"),
        ),
    )


def request_event(ask: ApprovalAsk) -> ev.ApprovalRequest:
    return ev.ApprovalRequest(
        id=ask.id,
        kind="credential",
        requester="vault",
        agent_group=ask.agent_group,
        card=card_for(ask),
        # The vault gives up first and withdraws it, so the card says why it ended; the approvals service's own
        # expiry is for a vault that never says (it is then withdrawn at the vault's next start).
        expires_at=ask.expires_at + FINAL_WORD,
        context={
            "method": ask.method,
            "host": ask.host,
            "path": ask.path,
            "rule": ask.rule,
            "body_preview": ask.preview,
        },
    )


_decisions = msgspec.json.Decoder(ev.ApprovalDecision)
STOPPED = "the vault stopped waiting for it"


class OpenAsks(Protocol):
    """Where the asks being waited on are recorded (`vault.db`), so a vault that stops without withdrawing one
    withdraws it at its next start."""

    async def opened(self, approval_id: str) -> None: ...

    async def closed(self, approval_id: str) -> None: ...


class BusApprover:
    def __init__(self, nc: Client, js: JetStreamContext, open_asks: OpenAsks | None = None) -> None:
        self._nc = nc
        self._js = js
        self._open = open_asks

    async def tell_limit(self, trip: LimitTrip) -> None:
        try:
            await publish(self._js, subjects.APPROVAL_REQUEST, limit_event(trip), msg_id=f"vault:{trip.id}")
        except Exception as exc:
            log.error("cannot tell the owner that %s tripped for %s: %s", trip.rule, trip.agent_group, exc)
            return
        log.info("told the owner that rate limit %s tripped for %s", trip.rule, trip.agent_group)

    async def ask(self, ask: ApprovalAsk) -> Outcome:
        """Ask and wait for the decision. An ask that ends without one is withdrawn: cancelled (the agent hung up,
        the vault stops; the cancel's message says which), or its own wait over, when the approvals service's final
        word on it, asked for by the withdrawal, is the answer (a press that came first lets the request through).

        A decision counts once it is returned. A cancel that lands after it came, while the ask is closed (a synced
        commit), ends the ask with nothing let through, so it is withdrawn like any other: an approval's card then
        says that nothing was.

        It ends of itself, as `Approver.ask` promises: each publish has its timeout (`bus.publish`), each record in
        `vault.db` SQLite's busy timeout, and the waits end at the expiry and FINAL_WORD after the last call."""
        answered = False  # the caller gets the decision: nothing to withdraw
        asked = False  # the request may be on the bus
        why = STOPPED
        sub: Subscription | None = None
        try:
            if self._open is not None:
                await self._open.opened(ask.id)  # before it is asked: a vault stopped from now on withdraws it at start
            sub = await self._nc.subscribe(subjects.approval_decision(ask.id))
            try:
                asked = True
                await publish(self._js, subjects.APPROVAL_REQUEST, request_event(ask), msg_id=f"vault:{ask.id}")
            except Exception as exc:
                log.error("cannot publish approval request %s: %s", ask.id, exc)
                why = "the vault could not ask for it"  # it may have been stored all the same
                return "unavailable"
            log.info("approval %s asked: %s %s%s for %s", ask.id, ask.method, ask.host, ask.path, ask.agent_group)
            decided = await self._decision(sub, ask.id, ask.expires_at)
            if decided is None:
                why = "nobody answered before the vault stopped waiting; the agent was told it timed out"
                # A last call: the approvals service's final word, published either way, is still taken (a press
                # applied first lets the request through). Without one in time, the withdrawal below is final.
                called = await self.withdraw(ask.id, why, last_call=True)
                decided = await self._decision(sub, ask.id, time.time() + FINAL_WORD) if called else None
            if decided is None:
                return "expired"
            await self._close(ask.id, sub)  # in the try: a cancel in it is caught below, as one before the decision
            answered = True
            return decided
        except asyncio.CancelledError as exc:
            why = str(exc.args[0]) if exc.args and exc.args[0] else STOPPED
            raise
        finally:
            if not answered:
                if not asked or await self.withdraw(ask.id, why):
                    await self._close(ask.id, sub)
                elif sub is not None:
                    await self._unsubscribe(ask.id, sub)

    async def _close(self, approval_id: str, sub: Subscription | None) -> None:
        """The ask is over: a restart has nothing left to withdraw, and its decisions are no longer heard."""
        if self._open is not None:
            await self._open.closed(approval_id)
        if sub is not None:
            await self._unsubscribe(approval_id, sub)

    @staticmethod
    async def _unsubscribe(approval_id: str, sub: Subscription) -> None:
        try:
            await sub.unsubscribe()
        except Exception as exc:  # the connection is gone; the subscription went with it
            log.debug("unsubscribing approval %s: %s", approval_id, exc)

    async def _decision(self, sub: Subscription, approval_id: str, until: float) -> Outcome | None:
        """The decision on `approval_id` that comes before `until`; None when none does."""
        while (remaining := until - time.time()) > 0:
            try:
                msg = await sub.next_msg(timeout=remaining)
            except TimeoutError:
                return None
            try:
                decision = _decisions.decode(msg.data)
            except msgspec.DecodeError as exc:
                log.warning("ignoring a malformed decision for %s: %s", approval_id, exc)
                continue
            if decision.id != approval_id:
                continue
            outcome: Outcome = (
                "approved"
                if decision.decision == "approved"
                else ("expired" if decision.decision == "expired" else "denied")
            )
            log.info("approval %s %s by %s", approval_id, outcome, decision.decided_by or decision.reason or "?")
            return outcome
        return None

    async def withdraw(self, approval_id: str, reason: str, *, last_call: bool = False) -> bool:
        """Tell the approvals service nobody waits on this ask any more (with `last_call`, nobody but for its final
        word, for FINAL_WORD); False when that could not be said."""
        withdrawn = ev.ApprovalWithdrawn(id=approval_id, requester="vault", reason=reason, last_call=last_call)
        key = f"vault:{'last-call' if last_call else 'withdrawn'}:{approval_id}"
        try:
            await publish(self._js, subjects.APPROVAL_REQUEST, withdrawn, msg_id=key)
        except Exception as exc:
            log.error("cannot withdraw approval %s (%s): %s; the next start does", approval_id, reason, exc)
            return False
        log.info("approval %s withdrawn: %s", approval_id, reason)
        return True

    async def withdraw_left(self, left: Iterable[str]) -> int:
        """At start: withdraw the asks a vault that stopped left open (its waiters went with it)."""
        done = 0
        for approval_id in left:
            if await self.withdraw(approval_id, "the vault restarted while it waited; the agent's request was dropped"):
                done += 1
                if self._open is not None:
                    await self._open.closed(approval_id)
        return done


class HeldAsks:
    """The asks the gateway is waiting on, for the HTTP API's long-poll (`GET /v1/approvals/pending`).

    Wraps the approver: an ask is held from before it is published until its outcome, and every change
    wakes the waiters, so a long-poll answers the moment something is held, not on a timer. A change never
    waits (no lock): once the outcome is in hand, nothing may stand between it and the gateway, where a cancel
    (the agent hanging up) would drop a decision the approver counts as given."""

    def __init__(self, inner: Approver) -> None:
        self.inner = inner
        self.asks: dict[str, ApprovalAsk] = {}
        self.created: dict[str, float] = {}
        self.version = 0  # counts changes: a waiter names the one it saw, so none is missed between looks
        self._changed = asyncio.Event()  # set, and replaced, at each change

    async def ask(self, ask: ApprovalAsk) -> Outcome:
        self._change(ask.id, ask)
        try:
            return await self.inner.ask(ask)
        finally:
            self._change(ask.id, None)

    async def tell_limit(self, trip: LimitTrip) -> None:
        await self.inner.tell_limit(trip)

    def _change(self, id: str, ask: ApprovalAsk | None) -> None:
        if ask is None:
            self.asks.pop(id, None)
            self.created.pop(id, None)
        else:
            self.asks[id] = ask
            self.created[id] = time.time()
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, version: int, timeout: float) -> bool:
        """True once the held asks change after ``version``; False when ``timeout`` (the long-poll's bound)
        ends first."""
        if self.version != version:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True
