"""The router process: inbound chat events in; wakes, approval requests and its own replies out;
approval decisions in. Deciding is `engage.decide`, state is `store`; this module moves bytes and acks."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

from clawden import outbox
from clawden.bus import bind, consume_batches, ctl, nak, subjects
from clawden.bus import events as ev
from clawden.bus.streams import router_agents, router_decisions, router_due, router_inbound
from clawden.runtime import ControlError, ServiceContext, sleep_unless_stopping
from clawden.servicedb import unwritable
from services.router import control, failover, relay, weblink
from services.router.store import Outcome, Routable, RouterError, RouterStore

log = logging.getLogger("clawden.router")

DEFAULT_GROUP = "main"
LOCAL_CHANNEL = "local"  # the machine owner's own terminal: its chats all go to `main`, its user owns
BATCH = 256  # one SQLite transaction per fetched batch; the consumer's max_ack_pending bounds it
SWEEP_EVERY = 3600.0
PUBLISH_TIMEOUT = 5.0
# The longest wait between tries of a step router.db could not take; under the inbound durables' ack wait (30 s),
# since each try also tells JetStream the deliveries it holds are in progress.
HELD_WAIT = 10.0
# How long a step that judges runners waits for the server to answer its PING; if it has not, that step judges
# nothing (the PING stays in flight, and its wait counts as deaf however long it lasts).
ANSWER_WAIT = 2.0
# nats-py's own timeout on that round trip, which must never end it: on a timeout nats-py cancels the PONG's future,
# and a PONG that comes after that stops its reader for good (InvalidStateError), the client still "connected".
NEVER = 10 * 365 * 24 * 3600

Inbound = ev.Inbound
_agent_decoder: msgspec.json.Decoder[ev.OutboundMessage | ev.OutboundEdit | ev.OutboundReaction | ev.Typing] = (
    msgspec.json.Decoder(ev.OutboundMessage | ev.OutboundEdit | ev.OutboundReaction | ev.Typing)
)
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")


class Router:
    def __init__(self, ctx: ServiceContext, store: RouterStore) -> None:
        self.ctx = ctx
        # Started: one thread owns router.db, so routing, decisions and control requests never interleave.
        self.store = store
        self.control = control.Control(store)
        # Held while a batch is decided and its outbox published, so lanes keep their order.
        self.publishing = asyncio.Lock()
        self.counts: Counter[str] = Counter()
        # What the router last heard from each runner (its ping's stats): the figures placement goes by.
        self.heard: dict[str, dict[str, float]] = {}
        self.beats: Subscription | None = None  # the heartbeat subscription (`main`)
        self._beat_handled = asyncio.Event()  # set, and replaced, as each beat is handled
        self._answering = asyncio.Lock()  # one step waits for the server's answer at a time
        # The round trip in flight, if any. One still in flight at shutdown ends with the connection (the runtime
        # drains it after `main`): cancelled before, its PONG could come late and stop the client's reader.
        self._ping: asyncio.Task[int] | None = None
        self._ping_link: int | None = None  # the link its PING went out on, once it has
        self._ping_late = False  # its lateness said once

    # --- publishing -------------------------------------------------------------------------------

    async def flush_all(self) -> bool:
        """Publish the whole outbox, a batch at a time (the caller holds `publishing`, so nothing joins it meanwhile);
        True once it is empty, False where NATS did not take a batch."""
        while batch := await self.store.run(self.store.outgoing):
            if not await self.flush(batch):
                return False
        return True

    async def flush(self, outgoing: Sequence[outbox.Outgoing]) -> bool:
        """Publish outbox rows (a session's wakes each wait for the previous one's ack); True if all went."""
        done = await outbox.publish(self.ctx.js, self.store, outgoing, timeout=PUBLISH_TIMEOUT)
        self.counts["published"] += done.sent
        if done.errors:
            self.counts["publish_failed"] += len(done.errors)
            log.warning("publishing failed in %d lane(s), kept in the outbox: %r", len(done.errors), done.errors[0])
        return not done.errors

    def link(self) -> int | None:
        """The router's link to NATS: the client's count of reconnections, or None while it is cut off. Read on the
        event loop, where the client changes that state too, so it is never found half made (connected, and not
        yet counted)."""
        nc = self.ctx.nc
        return int(nc.stats["reconnects"]) if nc.is_connected else None

    def look(self) -> None:
        """The link now, before each step that may judge runners (`placement.Hearing.look`): a change of link makes
        the router deaf since its last answer."""
        self.store.runners.looked(time.time(), self.link())

    async def answer(self) -> float | None:
        """A round trip through the server, for judging runners only by time the router knows it heard their beats
        (`placement.Hearing`): a PING, its PONG on the same link, then every beat received before the PONG handled.
        The server sent those beats before it took the PING, and TCP kept them in order, so once they are handled
        no beat it had sent is still on its way. When it came, or None when the server has not answered in
        `ANSWER_WAIT`: then the caller judges nothing this time, and the PING stays in flight (asking again would
        only queue a second PING behind it); its wait counts as deaf however it ends, so a timeout here only delays
        a judgement, never makes one."""
        async with self._answering:
            link = self.link()
            if self._ping is not None and link is not None and self._ping_link not in (None, link):
                # Sent on a connection that is gone: nats-py dropped its PONG's future with it, so nothing can
                # answer it now, and cancelling it cannot leave a future for a late PONG to trip over.
                self._ping.cancel()
                self._ping = None
            if self._ping is None:
                if link is None:
                    self.look()
                    return None
                self._ping, self._ping_link, self._ping_late = asyncio.create_task(self._round_trip()), None, False
            ping = self._ping
            await asyncio.wait({ping}, timeout=ANSWER_WAIT)
            if not ping.done():
                if not self._ping_late:
                    self._ping_late = True
                    log.warning(
                        "NATS has not answered a ping for %.0f s: the router judges no runner until it does",
                        ANSWER_WAIT,
                    )
                self.look()
                return None
            self._ping = None
            if ping.cancelled() or ping.exception() is not None:
                self.look()
                return None
            await self.beats_handled()
            now = time.time()
            self.store.runners.answered(now, self.link())
            if self._ping_late:
                log.info("NATS answered again: the time it did not counts as deaf")
            return now

    async def _round_trip(self) -> int:
        """The PING, sent on the link it returns, and its PONG. `rtt` puts the PONG's future in the client's queue and
        writes the PING before it first waits, so the link read just before is the one it went out on."""
        link = self.link()
        if link is None:
            raise ConnectionError("cut off from NATS")
        self._ping_link = link
        self.store.runners.asked(time.time(), link)
        await self.ctx.nc.rtt(NEVER)
        return link

    async def beats_handled(self) -> None:
        """Every heartbeat the client has received so far handled. nats-py queues each on the subscription, and
        its task hands them to `on_heartbeat` in order, each in one step (it never waits): an empty queue means
        none is left."""
        while self.beats is not None and self.beats.pending_msgs:
            await self._beat_handled.wait()

    async def settle(self, work: Callable[..., Outcome], *args: Any, held: Sequence[Msg] = ()) -> Outcome | None:
        """Run one store step and publish what it queued; None when the step itself failed.

        With `held`, the deliveries the step is for: while router.db cannot be written (a full disk, an I/O error, a
        lock held past the busy timeout: `servicedb.unwritable`), the step is tried again and the deliveries kept
        alive meanwhile, for as long as it takes. A nak would count toward max_deliver, and JetStream gives up on a
        message after that many, however sound it was; nothing else can be routed meanwhile either."""
        name = getattr(work, "__name__", work)
        wait, waited = 1.0, 0
        while True:
            self.look()
            async with self.publishing:
                try:
                    outcome = await self.store.run(work, *args)
                except Exception as exc:
                    if not (held and unwritable(exc)):
                        log.exception("router.db step %s failed", name)
                        return None
                    waited += 1
                    if waited & (waited - 1) == 0:  # the 1st, 2nd, 4th, 8th… try: a long wait is said, not flooded
                        log.error(
                            "router.db cannot be written (%s): %d message(s) wait (try %d)", exc, len(held), waited
                        )
                else:
                    self.counts.update(outcome.counts)
                    outcome.unpublished = not await self.flush(outcome.outgoing)
                    if waited:
                        log.info("router.db took step %s again after %d tries", name, waited)
                    return outcome
            for msg in held:
                with contextlib.suppress(Exception):  # NATS away too: the delivery may lapse, and comes again
                    await msg.in_progress()
            if not await sleep_unless_stopping(self.ctx.stopping, wait):
                return None  # naked by the caller: the next start takes them
            wait = min(wait * 2, HELD_WAIT)

    # --- inbound ----------------------------------------------------------------------------------

    async def on_batch(self, msgs: Sequence[Msg]) -> None:
        decoder: msgspec.json.Decoder[Inbound] = ev.decoder_for(Inbound)  # type: ignore[arg-type]  # a union is no type[T]
        events: list[Routable] = []  # clicks go to the approvals service
        keyed: list[tuple[Msg, str]] = []
        for msg in msgs:
            try:
                event: Inbound = decoder.decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self.counts["poisoned"] += 1
                log.error("dropping malformed message on %s: %s", msg.subject, exc)
                await msg.term()
                continue
            if _channel_of(event) == ev.AGENT_CHANNEL:
                # Agents speak to each other through the router alone (on_agents): no bridge may speak as
                # one, so nothing an agent relays can click a card or claim a person's standing.
                self.counts["poisoned"] += 1
                log.error("dropping a message on %s: the agent channel has no bridge", msg.subject)
                await msg.term()
                continue
            if (claimed := _channel_of(event)) != msg.subject.rsplit(".", 1)[-1]:
                # A bridge may publish only on its own subject; what it says inside must match, or
                # a compromised bridge could speak as another channel's owner.
                self.counts["poisoned"] += 1
                log.error("dropping a message on %s that claims to come from channel %r", msg.subject, claimed)
                await msg.term()
                continue
            if isinstance(event, ev.InboundAction):
                await self.forward_click(event, msg)
                continue
            if (user := weblink.asker(event, self.store.roles)) and isinstance(event, ev.InboundMessage):
                self.counts["web_links" if await weblink.answer(self.ctx, event, user, msg) else "publish_failed"] += 1
                continue
            events.append(event)
            keyed.append((msg, event.key))
        if not events:
            return
        outcome = await self.settle(self.store.route_batch, events, time.time(), held=[m for m, _ in keyed])
        for msg, key in keyed:
            # Routed state is committed; a failed publish stays in the outbox and a redelivery
            # (seen as a duplicate) flushes it, so a nak loses nothing and routes nothing twice.
            if outcome is None or outcome.unpublished or key in outcome.failed:
                await nak(msg)
            else:
                await msg.ack()

    async def on_agents(self, msgs: Sequence[Msg]) -> None:
        """What agents send each other (the agent channel's outbound lanes): relayed or dropped, in one
        transaction, acked once the wakes and receipts are out (store.relay_batch)."""
        sends: list[ev.OutboundMessage] = []
        for msg in msgs:
            try:
                event = _agent_decoder.decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self.counts["poisoned"] += 1
                log.error("dropping malformed message on %s: %s", msg.subject, exc)
                await msg.term()
                continue
            if isinstance(event, ev.OutboundMessage) and relay.relayed(event.kind, event.route.thread_id):
                sends.append(event)
            else:  # typing, edits, reactions and the runner's other notices mean nothing to an agent
                self.counts["agent_ignored"] += 1
        outcome = await self.settle(self.store.relay_batch, sends, time.time(), held=msgs) if sends else None
        for msg in msgs:
            if sends and (outcome is None or outcome.unpublished):
                await nak(msg)
            else:
                await msg.ack()

    async def on_due(self, msgs: Sequence[Msg]) -> None:
        """The scheduler's due runs: each a wake into its task's session where the session is now, in one
        transaction, acked once the wakes are out (store.wake_due). Under the publishing lock, like a move, so a
        run is woken wholly before a move reads the old runner's untaken wakes, or wholly after it."""
        decoder = ev.decoder_for(ev.TaskDue)
        runs: list[ev.TaskDue] = []
        taken: list[Msg] = []
        for msg in msgs:
            try:
                runs.append(decoder.decode(msg.data))
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self.counts["poisoned"] += 1
                log.error("dropping malformed task run on %s: %s", msg.subject, exc)
                await msg.term()
                continue
            taken.append(msg)
        if not runs:
            return
        outcome = await self.settle(self.store.wake_due, runs, time.time(), held=taken)
        for msg in taken:
            # Woken and committed; a wake not yet published stays in the outbox, and the redelivery (a duplicate
            # by `processed`) publishes it: a nak loses nothing and wakes nothing twice.
            if outcome is None or outcome.unpublished:
                await nak(msg)
            else:
                await msg.ack()

    async def forward_click(self, action: ev.InboundAction, msg: Msg) -> None:
        """Card clicks belong to the approvals service: passed on durably, keyed so a redelivery is one."""
        try:
            await self.ctx.js.publish(
                subjects.APPROVAL_CLICK,
                ev.encode(action),
                timeout=PUBLISH_TIMEOUT,
                headers={Header.MSG_ID: f"click:{action.key}"},
            )
        except Exception as exc:
            log.warning("forwarding click %s failed: %r", action.key, exc)
            self.counts["publish_failed"] += 1
            await nak(msg)
            return
        self.counts["clicks_forwarded"] += 1
        await msg.ack()

    async def on_decisions(self, msgs: Sequence[Msg]) -> None:
        decoder = ev.decoder_for(ev.ApprovalDecision)
        for msg in msgs:
            try:
                decision = decoder.decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self.counts["poisoned"] += 1
                log.error("dropping malformed decision on %s: %s", msg.subject, exc)
                await msg.term()
                continue
            outcome = await self.settle(self.store.on_decision, decision, time.time())
            if outcome is None or outcome.unpublished:
                await nak(msg)
            else:
                await msg.ack()

    async def on_heartbeat(self, msg: Msg) -> None:
        """A runner's latest load, kept for placing new sessions. Its id must be the one its subject names (a
        runner may publish only its own), so one runner cannot speak for another. Handled in one step, with no
        wait: `beats_handled` counts on it."""
        try:
            self._hear(msg)
        finally:
            self._beat_handled.set()
            self._beat_handled = asyncio.Event()

    def _hear(self, msg: Msg) -> None:
        try:
            beat = ev.decoder_for(ev.RunnerHeartbeat).decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.counts["poisoned"] += 1
            log.error("dropping malformed heartbeat on %s: %s", msg.subject, exc)
            return
        if msg.subject != subjects.heartbeat(beat.runner):
            self.counts["poisoned"] += 1
            log.error("dropping a heartbeat on %s that claims to come from runner %r", msg.subject, beat.runner)
            return
        self.look()
        now = time.time()
        self.store.runners.heard(beat, now)
        self.heard[beat.runner] = {"free": beat.free, "running": beat.running, "queued": beat.queued, "at": now}

    async def sweep(self) -> None:
        """Expire approvals nobody answered and forget old keys; also publishes whatever the outbox
        still holds (after a crash, or a publish that failed while no message came to retry it)."""
        await self.settle(self.store.expire_approvals, time.time())
        await self.store.run(self.store.prune, time.time())

    async def fail_over(self) -> None:
        """Move the sessions of every runner declared gone to live runners (shared storage only). Judged as of an
        answer of the server (`answer`), and judged again just before each move, once the beats that came meanwhile
        are handled: a runner heard since stays. Under the publishing lock: the outbox is published first and nothing
        else publishes meanwhile, so every wake for the gone runner is on its subject when it is read, and none is
        sent there after the move."""
        answered = await self.answer()
        if answered is None:
            self.counts["failover_unanswered"] += 1  # the server did not answer: nothing is judged this time
            return
        judged = await self.store.run(self.store.gone_runners, answered)
        self.counts["failover_checks"] += 1
        for gone in judged:
            async with self.publishing:
                if not await self.flush_all():
                    return  # NATS is not taking what we publish: the next round tries again
                try:
                    untaken = await failover.untaken_wakes(self.ctx.js, gone)
                except Exception as exc:
                    log.warning("cannot read what runner %s had not taken yet (%r); its sessions move later", gone, exc)
                    continue
                # Those answers came through the server after any beat it sent before them: once they are handled,
                # a runner heard since the judgement is live again.
                await self.beats_handled()
                if gone not in await self.store.run(self.store.gone_runners, time.time()):
                    log.info("runner %s was heard again before its sessions moved: they stay", gone)
                    continue
                try:
                    outcome = await self.store.run(self.store.move_sessions, gone, untaken, time.time())
                except Exception:
                    log.exception("moving runner %s's sessions failed", gone)
                    continue
                self.counts.update(outcome.counts)
                await self.flush_all()  # the moved sessions' wakes, before anything else is published

    async def failing_over(self, every: float) -> None:
        while await sleep_unless_stopping(self.ctx.stopping, every):
            await self.fail_over()

    async def looking(self, every: float) -> None:
        """A round trip through the server every `every` seconds (`answer`): the time up to each PING it answers
        counts as heard, so a runner's silence grows between steps too, and a server that stops answering is found
        within `every`, its link looking connected or not."""
        while await sleep_unless_stopping(self.ctx.stopping, every):
            await self.answer()

    async def sweeping(self) -> None:
        while await sleep_unless_stopping(self.ctx.stopping, SWEEP_EVERY):
            await self.sweep()

    # --- control ----------------------------------------------------------------------------------

    def serving(self, verb: ctl.Verb[Req, Rep]) -> Callable[[Req], Awaitable[Rep]]:
        """A control verb's handler: answered on the store's thread, a refusal said in the router's words."""

        async def serve(request: Req) -> Rep:
            try:
                answer: Rep = await self.store.run(self.control.handle, verb, request)
            except RouterError as exc:
                raise ControlError(str(exc)) from None
            if verb.name == "chats":  # a move by hand is announced at once, not with the next message
                async with self.publishing:
                    await self.flush(await self.store.run(self.store.outgoing))
            return answer

        return serve


def _channel_of(event: Inbound) -> str:
    route = getattr(event, "route", None)
    return route.channel if route is not None else str(getattr(event, "channel", ""))


def _login() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a bare container): nobody is made owner
        return None


async def main(ctx: ServiceContext) -> None:
    store = await RouterStore.start(ctx.config.data_dir / "router.db", ctx.config.runner.id)
    store.groups_dir = ctx.config.groups_dir  # a new agent's folder, made from the channel card (cards.py)
    store.dead_after = ctx.config.runner.dead_after
    store.shared_storage = ctx.config.runner.shared_storage
    store.max_payload = ctx.nc.max_payload  # what the server takes in one message: no wake is larger
    try:
        router = Router(ctx, store)
        for line in await store.run(store.seed, DEFAULT_GROUP, LOCAL_CHANNEL, _login(), time.time()):
            log.info("first start: %s", line)
        ctx.stats["router"] = router.counts
        ctx.stats["runners"] = router.heard
        for verb in ctl.served_by("router"):
            if verb.service == "router":  # not `ping`: the runtime answers that
                await ctx.endpoint(verb, router.serving(verb))
        inbound = await bind(ctx.js, router_inbound(), batch=BATCH)
        # Core NATS, before READY: a heartbeat is not replayed, and until one comes sessions go to runner.id.
        router.beats = await ctx.nc.subscribe(subjects.ALL_HEARTBEATS, cb=router.on_heartbeat)
        router.look()  # listening from now: a runner never heard is gone once the router has listened dead_after
        decisions = await bind(ctx.js, router_decisions(), batch=16)
        agents = await bind(ctx.js, router_agents(), batch=64)
        due = await bind(ctx.js, router_due(), batch=64)
        await router.sweep()
        await router.settle(store.record_placements, time.time())
        await ctx.ready()
        async with asyncio.TaskGroup() as tg:
            # Batches, not one message at a time: a batch is routed in one transaction.
            tg.create_task(consume_batches(inbound, router.on_batch, stopping=ctx.stopping))
            tg.create_task(consume_batches(decisions, router.on_decisions, stopping=ctx.stopping))
            tg.create_task(consume_batches(agents, router.on_agents, stopping=ctx.stopping))
            tg.create_task(consume_batches(due, router.on_due, stopping=ctx.stopping))
            tg.create_task(router.sweeping())
            tg.create_task(router.looking(ctx.config.runner.dead_after / 3))
            if ctx.config.runner.shared_storage:  # how often to look: a third of dead_after, as a runner beats
                tg.create_task(router.failing_over(ctx.config.runner.dead_after / 3))
    finally:
        await store.stop()
