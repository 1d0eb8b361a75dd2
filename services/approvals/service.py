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
from typing import Any, Literal

import msgspec
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo

from clawden import control, outbox
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
from services.approvals.store import UNROUTED, Step, Store

log = logging.getLogger("clawden.approvals")
# What the inbound subjects carry: direct chats and moves are learnt from it; the rest is skipped (clicks
# come on their own subject, and messages a platform lost are the router's to tell the owners).
Inbound = ev.Inbound  # edits and deletes too: it reads the stream whole, and ignores what is not for it

PUBLISH_TIMEOUT = 5.0
ROUTER_TIMEOUT = 5.0
# A router that does not answer (stopped, restarting, still starting) has decided nothing: the request is asked
# again this much later, for as long as it takes, held by a `Retry` (one delivery kept alive, so JetStream's
# max_deliver is not spent), until the router answers or the request's own expiry ends the wait.
ROUTER_RETRY = 2.0
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
        # The same for each try, and after a restart: the request's age counts from when it reached the bus.
        asked_at = stored_at(msg, time.time())
        approvers: tuple[str, ...] = request.approvers
        if not approvers and request.kind != "question":  # a question's card goes to the chat that asked
            # Kept in approvals.db while it waits (listed, decidable by the owner, expiring at its time); nobody is
            # asked about one recorded already (a copy, one the owner decided meanwhile) or withdrawn before it came.
            waiting = await self.store.run(self.store.wait_for_router, request, asked_at)
            if waiting.result == "waiting":
                self.changed.set()  # its expiry, for the timer
            if waiting.result in ("waiting", "still_waiting"):
                found = await self.approvers_of(request, policy.expiry(request, asked_at))
                if found is None:
                    return
                approvers = found
        await self.step(self.store.add_request, request, approvers, time.time(), asked_at)
        self.changed.set()

    async def approvers_of(self, request: ev.ApprovalRequest, expires_at: float) -> tuple[str, ...] | None:
        """Who may approve, in the router's word; None when the request was settled here instead. Only the router
        refusing to say denies it; a router that does not answer is asked again (`Retry`) until the request's own
        expiry, which then expires it: its silence is nobody's decision. Meanwhile it waits in approvals.db
        (`Store.wait_for_router`)."""
        try:
            return await self.ask_router(request.agent_group)
        except control.Refused as exc:
            if exc.code == "400":  # the router's own answer: it will not say who approves this
                reason = f"the router refused to say who may approve it: {exc}"
                await self.settle_unrouted(request, "denied", reason, expires_at)
                return None
            unanswered: control.ControlError = exc  # it failed on it ("500"): no word on this request
        except control.ControlError as exc:  # nobody answered, or not in words this service reads
            unanswered = exc
        self.counts["router_unanswered"] += 1
        now = time.time()
        if now >= expires_at:
            await self.settle_unrouted(request, "expired", UNROUTED, expires_at)
            return None
        raise Retry(
            f"the router did not say who approves {request.agent_group}: {unanswered}",
            delay=min(ROUTER_RETRY, expires_at - now),  # no later than the expiry, which ends the wait
        ) from unanswered

    async def settle_unrouted(
        self, request: ev.ApprovalRequest, outcome: Literal["denied", "expired"], why: str, expires_at: float
    ) -> None:
        await self.step(self.store.approvers_unknown, request, outcome, why, expires_at, time.time())

    async def ask_router(self, agent_group: str) -> tuple[str, ...]:
        """Admins of the agent group, then global admins, then owners: the router owns roles."""
        # No answer (NoAnswer) or a refusal (Refused) raises: `approvers_of` tells them apart.
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
            nxt = await self.store.run(self.store.next_expiry)
            wait = SAFETY_TICK if nxt is None else min(SAFETY_TICK, max(0.0, nxt - time.time()))
            self.changed.clear()
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
        await svc.recover(clicks)
        await ctx.ready()
        stop = ctx.stopping
        async with asyncio.TaskGroup() as tg:
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
