"""How a held request's ask ends when the agent hangs up late: after the vault's last call, or just as the approval
comes. Either way the vault's outcome and the card agree: the caller gets the decision, or the ask is withdrawn for
good and an approved card says that nothing was let through. The vault's side on a real NATS and `vault.db`; its
events then applied to a real `approvals.db` as the approvals service applies them."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from clawden.bus import ensure_streams, subjects
from clawden.bus import events as ev
from services.approvals.store import Store as ApprovalsStore
from services.vault import approvals as vault_approvals
from services.vault.approvals import ApprovalAsk, BusApprover, HeldAsks, Outcome
from services.vault.service import StoredAsks
from services.vault.store import Store

pytestmark = pytest.mark.timeout(60)

OWNER = "local:alice"
HUNG_UP = "the agent hung up while it waited"  # the gateway's words as it cancels the ask


def an_ask(approval_id: str, wait: float) -> ApprovalAsk:
    return ApprovalAsk(
        id=approval_id,
        agent_group="main",
        method="POST",
        host="api.example.test",
        path="/pay",
        rule="ask-pay",
        preview="",
        expires_at=time.time() + wait,
    )


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    js = nc.jetstream()
    await ensure_streams(js)
    return js


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.start(tmp_path / "vault.db")
    yield s
    await s.stop()


class Said:
    """What the vault says on `clawden.approval.request`, in order."""

    def __init__(self, sub: JetStreamContext.PushSubscription) -> None:
        self.sub = sub

    async def next(self) -> ev.Event:
        return ev.decode((await self.sub.next_msg(timeout=10)).data)

    async def nothing_more(self) -> bool:
        try:
            await self.sub.next_msg(timeout=0.5)
        except TimeoutError:
            return True
        return False


@pytest.fixture
async def said(js: JetStreamContext) -> Said:
    return Said(await js.subscribe(subjects.APPROVAL_REQUEST))


def approved_card_after(events: list[ev.Event], tmp_path: Path) -> str:
    """The card's last text, once the approvals service has the request, the owner's approval (applied before the
    vault heard of it, or as it did), and then the vault's withdrawals, in that order."""
    request, *withdrawals = events
    assert isinstance(request, ev.ApprovalRequest)
    store = ApprovalsStore.open(tmp_path / "approvals.db")
    try:
        store.add_request(request, [OWNER], 1000)
        (card,) = [e for e in _drain(store) if isinstance(e, ev.OutboundMessage)]
        receipt = ev.DeliveryReceipt(outbound_id=card.id, route=card.route, ok=True, platform_message_id="m1")
        store.receipt(receipt, 1001)
        store.decide(request.id, "approve", OWNER, 1002)
        for withdrawn in withdrawals:
            assert isinstance(withdrawn, ev.ApprovalWithdrawn)
            store.withdraw(withdrawn, 1003)
        edits = [e for e in _drain(store) if isinstance(e, ev.OutboundEdit)]
        return edits[-1].text
    finally:
        store.close()


def _drain(store: ApprovalsStore) -> list[ev.Event]:
    rows = store.outgoing()
    store.published([r.id for r in rows])
    return [ev.decode(r.payload) for r in rows]


async def test_an_agent_that_hangs_up_after_the_last_call_has_its_ask_withdrawn_for_good(
    nc: Client, js: JetStreamContext, store: Store, said: Said, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vault's own wait ended and its last call went out; the approvals service has not answered (behind, or
    away) when the agent hangs up. The cancel still withdraws the ask, for good, with the hang-up as the reason, so
    a press applied before the last call (never heard by the vault) ends on a card saying nothing was let through."""
    monkeypatch.setattr(vault_approvals, "FINAL_WORD", 30.0)  # the hang-up surely comes within it
    asking = asyncio.create_task(BusApprover(nc, js, StoredAsks(store)).ask(an_ask("late-hangup", 0.3)))
    request = await said.next()
    last_call = await said.next()  # its own wait is over: the last call, then FINAL_WORD for a word
    assert not asking.done()
    asking.cancel(HUNG_UP)
    await asyncio.gather(asking, return_exceptions=True)
    final = await said.next()

    assert isinstance(request, ev.ApprovalRequest)
    assert isinstance(last_call, ev.ApprovalWithdrawn) and last_call.last_call
    assert isinstance(final, ev.ApprovalWithdrawn) and not final.last_call and final.reason == HUNG_UP
    assert asking.cancelled()
    assert await store.run(store.open_asks) == []  # withdrawn: the next start has nothing left to withdraw
    assert approved_card_after([request, last_call, final], tmp_path).endswith(
        f"✅ Approved by {OWNER}\n↩️ But its requester had stopped waiting ({HUNG_UP}): nothing was let through"
    )


class ClosingSignalled(StoredAsks):
    """The vault's own record of open asks, telling the test when an ask starts to close."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.closing = asyncio.Event()

    async def closed(self, approval_id: str) -> None:
        self.closing.set()
        await super().closed(approval_id)


async def test_an_agent_that_hangs_up_as_the_approval_comes_has_its_ask_withdrawn(
    nc: Client, js: JetStreamContext, store: Store, said: Said, tmp_path: Path
) -> None:
    """The approval arrives, and the vault closes the ask (a commit synced to disk, which another writer holds up
    here) when the agent hangs up: the gateway cancels the ask, and lets nothing through. The ask is then withdrawn,
    so the approved card says so, instead of "Approved" with nothing let through."""
    asks = ClosingSignalled(store)
    asking = asyncio.create_task(BusApprover(nc, js, asks).ask(an_ask("hangup-at-approval", 30)))
    request = await said.next()
    writer = sqlite3.connect(tmp_path / "vault.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the ask's close waits for this writer (SQLite's busy timeout)
    try:
        decision = ev.ApprovalDecision(id=request.id, decision="approved", decided_by=OWNER)  # type: ignore[union-attr]
        await nc.publish(subjects.approval_decision(request.id), ev.encode(decision))  # type: ignore[union-attr]
        await asyncio.wait_for(asks.closing.wait(), 10)
        asking.cancel(HUNG_UP)  # it lands in the close, whenever that ends
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    await asyncio.gather(asking, return_exceptions=True)
    after = await said.next()

    assert asking.cancelled()  # the gateway's answer: the agent is gone, nothing goes upstream
    assert isinstance(after, ev.ApprovalWithdrawn) and not after.last_call and after.reason == HUNG_UP
    assert await store.run(store.open_asks) == []
    assert approved_card_after([request, after], tmp_path).endswith(
        f"✅ Approved by {OWNER}\n↩️ But its requester had stopped waiting ({HUNG_UP}): nothing was let through"
    )


async def test_an_approval_that_comes_as_the_agent_hangs_up_is_answered_without_a_withdrawal(
    nc: Client, js: JetStreamContext, store: Store, said: Said
) -> None:
    """The other order: the ask has closed and answered when the hang-up comes. The approval stands, unamended, as
    the gateway has the answer in hand."""
    asking = asyncio.create_task(BusApprover(nc, js, StoredAsks(store)).ask(an_ask("answered", 30)))
    request = await said.next()
    decision = ev.ApprovalDecision(id=request.id, decision="approved", decided_by=OWNER)  # type: ignore[union-attr]
    await nc.publish(subjects.approval_decision(request.id), ev.encode(decision))  # type: ignore[union-attr]
    outcome = await asking
    asking.cancel(HUNG_UP)  # too late: it has answered

    assert outcome == "approved"
    assert await said.nothing_more()
    assert await store.run(store.open_asks) == []


class Pressed:
    """An approver whose decision comes when the test says (the gateway's side of HeldAsks is all that is tested)."""

    def __init__(self) -> None:
        self.now = asyncio.Event()

    async def ask(self, ask: ApprovalAsk) -> Outcome:
        await self.now.wait()
        return "approved"

    async def tell_limit(self, trip: vault_approvals.LimitTrip) -> None:
        return None


async def test_a_decision_reaches_the_gateway_even_as_a_long_poll_starts_looking() -> None:
    """The HTTP API's long-poll begins to wait just as the decision comes. The approver has given its answer, so the
    gateway must get it: a hang-up that comes next finds the ask over, not still putting away its bookkeeping (where
    the cancel would drop an approval the approver counts as given, and nothing would withdraw it)."""
    approver = Pressed()
    held = HeldAsks(approver)
    asking = asyncio.create_task(held.ask(an_ask("polled", 30)))
    await asyncio.sleep(0)  # held, waiting for the decision
    looking = asyncio.create_task(held.wait_past(held.version, 10))  # a long-poll comes in first
    approver.now.set()  # the decision, in the same turn
    await asyncio.sleep(0)  # both have run once
    asking.cancel(HUNG_UP)  # the hang-up, next
    (outcome,) = await asyncio.gather(asking, return_exceptions=True)
    woke = await looking

    assert outcome == "approved"
    assert woke and held.asks == {}
