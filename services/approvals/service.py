"""The approvals process: requests in, cards out, clicks checked, expiry kept, decisions back to whoever
asked. Deciding lives in `policy` and `store`; this module moves bytes, times expiry and acks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo

from clawden import control, outbox
from clawden.backoff import backoff
from clawden.bus import bind, consume, stored_at, subjects
from clawden.bus import events as ev
from clawden.bus.connection import Retry
from clawden.bus.ctl import approvals as api
from clawden.bus.ctl import router as router_api
from clawden.bus.pull import Puller
from clawden.bus.streams import approvals_clicks, approvals_inbound, approvals_receipts, approvals_requests, given_up
from clawden.control import ask_on
from clawden.runtime import ControlError, ServiceContext, sleep_unless_stopping
from services.approvals import policy
from services.approvals.catchup import CatchUp
from services.approvals.store import Step, Store

log = logging.getLogger("clawden.approvals")
# What the inbound subjects carry: direct chats and moves are learnt from it; the rest is skipped (clicks
# come on their own subject, and messages a platform lost are the router's to tell the owners).
Inbound = ev.Inbound  # edits and deletes too: it reads the stream whole, and ignores what is not for it

PUBLISH_TIMEOUT = 5.0
ROUTER_TIMEOUT = 5.0
# A router that does not answer (stopped, restarting, still starting) has decided nothing: a group it was silent
# about is asked again after a backoff from ROUTER_RETRY up to ROUTER_RETRY_CAP, for as long as requests of it wait
# (`Approvals.routing`); the cap is the longest a request waits once the router is back, if nothing else wakes it.
ROUTER_RETRY = 1.0
ROUTER_RETRY_CAP = 10.0
ROUTER_ASKS = 8  # groups asked about at once
# The expiry timer re-arms on every new card; this bounds a sleep (and retries the outbox) anyway.
SAFETY_TICK = 30.0
# At a start, while clicks left from before are still owed (one the last process took and never acked comes
# again only at its ack wait), how long a pull may stay empty before the durable's counts are read again.
CATCH_UP_PULL = 1.0
STATUSES = ("pending", "approved", "denied", "expired", "answered")


class Approvals:
    def __init__(self, ctx: ServiceContext, store: Store) -> None:
        self.ctx = ctx
        self.store = store  # started: one thread owns approvals.db
        self.counts: Counter[str] = Counter()
        self.changed = asyncio.Event()
        self.flushing = asyncio.Lock()
        self.new_waiting = asyncio.Event()  # a request started waiting for the router: its group may be new
        self.asking = asyncio.Semaphore(ROUTER_ASKS)

    async def flush(self) -> None:
        """Publish what committed steps queued, in order; a failure leaves it queued and raises Retry."""
        async with self.flushing:
            done = await outbox.flush(self.ctx.js, self.store, timeout=PUBLISH_TIMEOUT)
        self.counts["published"] += done.sent
        if done.errors:
            self.counts["publish_failed"] += 1
            raise Retry(f"publishing failed, kept in the outbox: {done.errors[0]!r}", delay=2.0) from done.errors[0]

    async def step(self, fn: Callable[..., Step], *args: Any) -> Step:
        result = await self.store.run(fn, *args)
        self.counts[result.result] += 1
        self.counts.update(result.counts)
        await self.flush()
        return result

    # --- handlers -------------------------------------------------------------------------------

    async def on_request(self, request: ev.ApprovalRequest | ev.ApprovalWithdrawn, msg: Msg) -> None:
        if isinstance(request, ev.ApprovalWithdrawn):
            await self.step(self.store.withdraw, request, time.time())
            return
        if request.amends:
            await self.step(self.store.amend, request, time.time())
            return
        # The same after a restart: the request's age counts from when it reached the bus.
        asked_at = stored_at(msg, time.time())
        if not request.approvers and request.kind != "question":  # a question's card goes to the chat that asked
            # It waits for the router in approvals.db (`routing` asks), and is acked once committed there: a request
            # waiting holds no delivery, so nothing behind it on the stream waits with it.
            try:
                await self.step(self.store.wait_for_router, request, asked_at, time.time())
            finally:  # also when publishing what the step queued failed: it is committed, and comes again a copy
                self.changed.set()  # its expiry, for the timer
                self.new_waiting.set()
            return
        await self.step(self.store.add_request, request, request.approvers, time.time(), asked_at)
        self.changed.set()

    # --- asking the router who may approve ------------------------------------------------------

    async def routing(self) -> None:
        """Ask the router who may approve for each agent group with requests waiting, once per group whatever the
        number of its requests, and record them all with its answer (`Store.routed`). A group the router is silent
        about is asked again after a backoff; one that starts waiting is asked at once, as is every group at a start
        (a restart resumes asking right away) and once the router answered about any (it is back). Its silence is
        nobody's decision: a request waits until the router answers or its own expiry expires it (`expiring`)."""
        silent: dict[str, tuple[int, float]] = {}  # group -> (asks in vain in a row, when to ask again: monotonic)
        while not self.ctx.stopping.is_set():
            self.new_waiting.clear()
            try:
                groups = await self.store.run(self.store.waiting_groups, time.time())
            except Exception as exc:  # approvals.db unreadable for now: a new request, or the tick, tries again
                log.warning("could not read the requests waiting for the router: %r", exc)
                groups = []
            due = [g for g in groups if g not in silent or silent[g][1] <= time.monotonic()]
            why_not = await asyncio.gather(*(self.route(g) for g in due))  # None where the router answered
            silent = {g: silent[g] for g in groups if g in silent}  # a group waiting no more starts afresh
            if any(why is None for why in why_not):
                silent.clear()  # the router is back: every group still waiting is asked again now
                continue
            for group, why in zip(due, why_not, strict=True):
                tries = silent.get(group, (0, 0.0))[0]
                wait = backoff(tries, base=ROUTER_RETRY, cap=ROUTER_RETRY_CAP)
                silent[group] = (tries + 1, time.monotonic() + wait)
                if tries & (tries - 1) == 0:  # the 1st, 2nd, 3rd, 5th, 9th… time: a long wait is said, not flooded
                    log.warning("the router did not say who approves for %s (%d asks): %s", group, tries + 1, why)
            wake = min((at for _, at in silent.values()), default=time.monotonic() + SAFETY_TICK)
            await sleep_unless_stopping(self.ctx.stopping, wake - time.monotonic(), self.new_waiting)

    async def route(self, agent_group: str) -> str | None:
        """Ask the router about one group and settle its waiting requests with the answer; None once it answered,
        else why not. Only the router refusing to say (its "400") denies them; its failing ("500") is no word on
        them, nor its silence."""
        settle: Callable[..., Step]
        answer: tuple[str, ...] | str  # who may approve, or why the router will not say
        try:
            async with self.asking:
                approvers = await self.ask_router(agent_group)
            settle, answer = self.store.routed, approvers
        except control.Refused as exc:
            if exc.code != "400":
                self.counts["router_unanswered"] += 1
                return str(exc)
            settle, answer = self.store.refused, f"the router refused to say who may approve it: {exc}"
        except control.ControlError as exc:  # nobody answered, or not in words this service reads
            self.counts["router_unanswered"] += 1
            return str(exc)
        try:
            await self.step(settle, agent_group, answer, time.time())
        except Retry as exc:  # committed, not all published: the outbox keeps the rest for the next flush
            log.warning("the requests of %s waiting for the router are settled, not all told yet: %s", agent_group, exc)
        except Exception as exc:  # approvals.db not writable for now: they still wait, and the router is asked again
            log.warning("could not settle the requests of %s waiting for the router: %r", agent_group, exc)
            return repr(exc)
        return None

    async def ask_router(self, agent_group: str) -> tuple[str, ...]:
        """Admins of the agent group, then global admins, then owners: the router owns roles."""
        # No answer (NoAnswer) or a refusal (Refused) raises: `route` tells them apart.
        reply = await ask_on(
            self.ctx.nc, router_api.APPROVERS, router_api.ApproversGet(agent_group=agent_group), timeout=ROUTER_TIMEOUT
        )
        return tuple(reply.approvers)

    async def on_click(self, action: ev.InboundAction, msg: Msg) -> None:
        # Judged by when the click reached the bus (the router forwards it as it comes), not when it is
        # applied: a click in time counts after a restart, and one after the expiry never does. The server
        # stamps it; a bridge's `sent_at` could be written to say anything.
        await self.step(self.store.click, action, stored_at(msg, time.time()))

    async def on_receipt(self, receipt: ev.DeliveryReceipt, msg: Msg) -> None:
        if msg.subject != subjects.receipt(receipt.route.channel):
            # A bridge's word counts only for its own channel: a forged "refused" would pass the card on.
            self.counts["forged_channel"] += 1
            log.error(
                "ignoring a receipt on %s that claims to come from channel %r", msg.subject, receipt.route.channel
            )
            return
        if receipt.outbound_id.startswith("ap-") and ":" not in receipt.outbound_id:
            await self.step(self.store.receipt, receipt, time.time())

    async def on_inbound(self, event: Inbound, msg: Msg) -> None:
        claimed = event.channel if isinstance(event, ev.ChatMoved | ev.MessagesLost) else event.route.channel
        if msg.subject != subjects.inbound(claimed):
            # A bridge may publish only on its own subject; what it says inside must match, or a compromised
            # bridge could become a user's direct chat on another channel, or move its cards. The router drops
            # it too; here it is acked, as read, like anything else this reader skips.
            self.counts["forged_channel"] += 1
            log.error("ignoring a message on %s that claims to come from channel %r", msg.subject, claimed)
            return
        if isinstance(event, ev.ChatMoved):
            # A group's question cards now live under its new id: answers from there must count.
            self.counts["chats_moved"] += await self.store.run(self.store.move_chat, event)
        elif (
            isinstance(event, ev.InboundMessage)
            and not event.is_group
            and not event.sender.is_bot
            and not event.refused
        ):  # a forged sender's chat is never where their cards go
            user = policy.user_id(event.route.channel, event.sender.id)
            if await self.store.run(self.store.learn_chat, user, event.route, time.time()):
                self.counts["chats_learned"] += 1

    # --- expiry ---------------------------------------------------------------------------------

    async def expiring(self) -> None:
        while not self.ctx.stopping.is_set():
            self.changed.clear()  # before the read: a request recorded while it is read wakes the sleep below
            nxt = await self.store.run(self.store.next_expiry)
            wait = SAFETY_TICK if nxt is None else min(SAFETY_TICK, max(0.0, nxt - time.time()))
            if not await sleep_unless_stopping(self.ctx.stopping, wait, self.changed):
                return
            try:
                expired = await self.store.run(self.store.expire_due, time.time())
                self.counts["expired"] += expired
                await self.flush()
                self.counts["withdrawals_forgotten"] += await self.store.run(self.store.forget_withdrawals, time.time())
            except Exception as exc:  # the next tick tries again; the outbox keeps what is owed
                log.warning("expiry pass failed: %r", exc)

    async def recover(self, clicks: Puller) -> None:
        """Startup: apply every click that came while we were down, each judged by its own time against its
        card's expiry (`on_click`), then expire, once, what came due meanwhile. Nothing else expires: a restart
        of this service is no answer, and whoever asked still waits (the router's held messages, a runner's
        question); each request keeps its own expiry.

        Caught up means every click stored before `checked` handled once (`CatchUp`): applied, or failed and left
        to come again after the start, so one that fails every time holds nothing up. A click the last process
        took and never acked comes again at its ack wait, and is waited for."""
        await self.flush()
        durable = clicks.consumer
        checked = time.time()
        stream = await self.ctx.js.stream_info(durable.stream)
        info = await self.ctx.js.consumer_info(durable.stream, durable.durable)
        _, delivered, _ = _progress(info)
        owed = CatchUp(stream.state.last_seq, delivered, info.num_ack_pending or 0)

        async def on_given_up(msg: Msg) -> None:  # JetStream gave up on one: it will not come (`Puller` logs it)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                owed.given_up(int(json.loads(msg.data)["stream_seq"]))

        async def on_click(action: ev.InboundAction, msg: Msg) -> None:
            try:
                await self.on_click(action, msg)
            finally:
                owed.handled(msg.metadata.sequence.stream)

        advisories = await self.ctx.nc.subscribe(given_up(durable), cb=on_given_up)
        try:
            while not owed.done(*_progress(info)):
                await consume(clicks, ev.InboundAction, on_click, stopping=self.ctx.stopping, until_idle=CATCH_UP_PULL)
                if self.ctx.stopping.is_set():
                    return
                info = await self.ctx.js.consumer_info(durable.stream, durable.durable)
        finally:
            with contextlib.suppress(Exception):
                await advisories.unsubscribe()
        expired = await self.store.run(self.store.expire_due, checked)
        if expired:
            log.warning("expired %d approval(s) whose time ran out while the service was down", expired)
        self.counts["expired_at_start"] += expired
        await self.flush()

    # --- control --------------------------------------------------------------------------------

    async def ctl_list(self, req: api.ListRequest) -> list[api.Approval]:
        if req.status and req.status not in STATUSES:
            raise ControlError(f"status {req.status!r}: one of {', '.join(STATUSES)}")
        limit = max(1, min(req.limit, 10_000))
        return msgspec.convert(await self.store.run(self.store.list, req.status, limit), list[api.Approval])

    async def ctl_decide(self, req: api.DecideRequest) -> api.ApprovalDetail:
        """`clawden approvals approve|deny|answer`: the machine's owner decides without a chat, also a request still
        waiting for the router (the decision goes to its requester; the router is not needed to say who may)."""
        step = await self.step(self.store.decide, req.id, req.choice, req.by or "the machine's owner", time.time())
        found = await self.store.run(self.store.get, req.id)
        if step.result == "unknown" or found is None:
            raise ControlError(f"no approval {req.id!r} (see `clawden approvals list`)")
        if step.result in ("already", "expired"):  # expired: too late, and the store expired it just now
            raise ControlError(
                f"{req.id} is already {found['status']}" + (f" by {found['decided_by']}" if found["decided_by"] else "")
            )
        if step.result == "bad_button":
            choices = ", ".join(f"{i}) {b['label']}" for i, b in enumerate(found["buttons"], 1))
            raise ControlError(f"{req.choice!r} is not one of its choices: {choices}")
        return msgspec.convert(found, api.ApprovalDetail)

    async def ctl_show(self, req: api.ShowRequest) -> api.ApprovalDetail:
        found = await self.store.run(self.store.get, req.id)
        if found is None:
            raise ControlError(f"no approval {req.id!r} (see `clawden approvals list`)")
        return msgspec.convert(found, api.ApprovalDetail)


def _progress(info: ConsumerInfo) -> tuple[int, int, int]:
    """A durable's messages not delivered yet, the stream sequence it delivered last, and its ack floor."""
    delivered = info.delivered.stream_seq if info.delivered else 0
    return info.num_pending or 0, delivered, info.ack_floor.stream_seq if info.ack_floor else 0


async def main(ctx: ServiceContext) -> None:
    store = await Store.start(ctx.config.data_dir / "approvals.db")
    try:
        svc = Approvals(ctx, store)
        ctx.stats["approvals"] = svc.counts
        await ctx.endpoint(api.LIST, svc.ctl_list)
        await ctx.endpoint(api.SHOW, svc.ctl_show)
        await ctx.endpoint(api.DECIDE, svc.ctl_decide)
        requests = await bind(ctx.js, approvals_requests())
        clicks = await bind(ctx.js, approvals_clicks())
        receipts = await bind(ctx.js, approvals_receipts())
        inbound = await bind(ctx.js, approvals_inbound(), batch=64)
        stop = ctx.stopping
        async with asyncio.TaskGroup() as tg:
            # At once, not after the clicks' catch-up: what waits for the router from before is asked about now.
            tg.create_task(svc.routing())
            await svc.recover(clicks)
            await ctx.ready()
            tg.create_task(consume(requests, ev.APPROVAL_REQUEST_DECODER, svc.on_request, stopping=stop))
            tg.create_task(consume(clicks, ev.InboundAction, svc.on_click, stopping=stop))
            tg.create_task(consume(receipts, ev.DeliveryReceipt, svc.on_receipt, stopping=stop))
            tg.create_task(
                consume(
                    inbound,
                    ev.INBOUND_DECODER,
                    svc.on_inbound,
                    stopping=stop,
                )
            )
            tg.create_task(svc.expiring())
    finally:
        await store.stop()
