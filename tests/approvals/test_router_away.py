"""A request the router has not said who may approve, as `clawden run approvals` keeps it while the router is away:
waiting in approvals.db, its delivery acked, so it holds up nothing behind it; listed from there right after a crash,
decided by the machine's owner without the router, expired at its own time whatever the service went through, and
sent to its approvers by one ask per agent group once the router answers. The router is answered (or not) by the
test."""

from __future__ import annotations

import time

import msgspec
from nats.aio.msg import Msg

from clawden.bus import events as ev
from clawden.bus import publish, streams, subjects
from clawden.bus.ctl import approvals as approvals_ctl
from clawden.bus.ctl import router as router_ctl
from clawden.control import ask_on
from tests.approvals.test_service import (  # noqa: F401 (alone: a fixture)
    OWNER,
    Alone,
    Requester,
    Router,
    alone,
    control,
    duplicates,
    held_request,
    unanswered,
)
from tests.eventually import eventually

ROUTING = "waiting for the router"


async def asked_in_vain(alone: Alone) -> None:  # noqa: F811 (the fixture's name)
    await eventually(lambda: unanswered(alone), 30, "the approvals service never asked the router")


async def test_a_request_waiting_for_the_router_is_listed_right_after_a_crash(alone: Alone) -> None:  # noqa: F811
    """The process asking the router dies; the one started after it lists the request at once, from approvals.db, not
    only when JetStream delivers the held request again (at its ack wait, half a minute later)."""
    requester = Requester(alone.nc, "vault-crash")
    expires_at = await requester.ask(ttl=600)
    await asked_in_vain(alone)
    alone.approvals.kill()
    await alone.approvals.start(alone.nc)

    [waiting] = [a for a in await control(alone.nc, "list", {"status": "pending"}) if a["id"] == "vault-crash"]
    assert (waiting["approver"], waiting["reason"], waiting["expires_at"]) == ("", ROUTING, expires_at)
    shown = await ask_on(alone.nc, approvals_ctl.SHOW, approvals_ctl.ShowRequest(id="vault-crash"))
    assert (shown.status, shown.reason) == ("pending", ROUTING)
    assert requester.decisions.empty()


async def test_the_owner_decides_a_request_waiting_for_the_router_and_its_requester_hears_at_once(
    alone: Alone,  # noqa: F811
) -> None:
    """The machine's owner needs no router to say who may decide: the decision goes to the requester as any other.
    It waits no more: when the router comes back, nobody is asked about it, no card goes out, nothing is decided
    twice."""
    requester = Requester(alone.nc, "vault-owner")
    await requester.ask(ttl=600)
    await asked_in_vain(alone)

    decide = approvals_ctl.DecideRequest(id="vault-owner", choice="approve", by=OWNER)
    decided = await ask_on(alone.nc, approvals_ctl.DECIDE, decide)
    assert (decided.status, decided.decided_by, decided.approver) == ("approved", OWNER, "")
    decision = await requester.decision()
    assert (decision.decision, decision.decided_by, decision.value) == ("approved", OWNER, "approve")

    router = Router(alone.nc)
    await router.come()
    following = Requester(alone.nc, "vault-owner-next")
    await following.ask(ttl=600, host="next.example.com")
    await alone.owner.first(ev.OutboundMessage, text="next.example.com")  # the router came, and was asked
    assert router.groups == ["main"]  # once, for the one still waiting
    cards = [e for e in alone.owner.seen if isinstance(e, ev.OutboundMessage) and "api.github.com" in e.text]
    assert cards == [] and requester.decisions.empty()
    shown = await ask_on(alone.nc, approvals_ctl.SHOW, approvals_ctl.ShowRequest(id="vault-owner"))
    whats = [a.what for a in shown.audit]
    assert whats.count("approved") == 1 and "card_sent" not in whats


async def test_a_request_the_router_never_answers_about_expires_at_its_own_time_after_a_crash(
    alone: Alone,  # noqa: F811
) -> None:
    """The process asking the router dies: the one after it expires the request at its own time, not when JetStream
    delivers the held request again (at its ack wait, long after)."""
    requester = Requester(alone.nc, "vault-crash-expires")
    expires_at = await requester.ask(ttl=10)
    await asked_in_vain(alone)
    alone.approvals.kill()
    await alone.approvals.start(alone.nc)

    decision = await requester.decision(timeout=max(0.0, expires_at - time.time()) + 10)
    assert (decision.decision, decision.decided_by) == ("expired", "")
    assert decision.reason == "it expired before the router said who may approve it"
    assert decision.decided_at >= expires_at


async def waiting_for_the_router(alone: Alone) -> set[str]:  # noqa: F811 (the fixture's name)
    listed = await control(alone.nc, "list", {"status": "pending", "limit": 1000})
    return {a["id"] for a in listed if a["reason"] == ROUTING}


async def test_requests_waiting_for_an_absent_router_hold_up_nothing_behind_them(alone: Alone) -> None:  # noqa: F811
    """More requests wait for the router than the request durable lets be delivered and unacked at once: each is acked
    once it waits in approvals.db, so a withdrawal and a request naming its approver behind them are handled at
    once, not after the crowd's expiry."""
    recorded = Requester(alone.nc, "vault-recorded")
    await recorded.ask(ttl=600, host="recorded.example.com", approvers=(OWNER,))
    await alone.owner.first(ev.OutboundMessage, text="recorded.example.com")
    crowd = {f"vault-crowd-{n}" for n in range(streams.approvals_requests().max_ack_pending + 44)}
    for rid in crowd:
        await publish(alone.js, subjects.APPROVAL_REQUEST, held_request(rid, ttl=600), msg_id=f"vault:{rid}")

    withdrawn = ev.ApprovalWithdrawn(id="vault-recorded", requester="vault", reason="the agent hung up")
    await publish(alone.js, subjects.APPROVAL_REQUEST, withdrawn, msg_id="vault:withdrawn:vault-recorded")
    named = Requester(alone.nc, "vault-named")
    await named.ask(ttl=600, host="named.example.com", approvers=(OWNER,))

    decision = await recorded.decision(timeout=30)
    assert (decision.decision, decision.reason) == ("expired", "withdrawn by vault: the agent hung up")
    await alone.owner.first(ev.OutboundMessage, timeout=30, text="named.example.com")
    assert await waiting_for_the_router(alone) == crowd
    requests = await alone.js.consumer_info("CLAWDEN_APPROVALS", streams.approvals_requests().durable)
    assert (requests.num_pending, requests.num_ack_pending) == (0, 0)  # none held for the router


async def test_a_router_that_takes_the_ask_and_never_answers_holds_up_no_other_request(
    alone: Alone,  # noqa: F811
) -> None:
    """The router is asked beside the requests, not in their way: a request naming its approver is handled while an
    ask the router took (and hangs on) is still open. Still open as the service sees it: answered only once that card
    is out, the ask is taken as the router's word (had the card waited for the ask to time out, the answer would come
    to nobody, and the ask after it hangs)."""
    asks: list[Msg] = []

    async def hung(msg: Msg) -> None:
        asks.append(msg)

    await alone.nc.subscribe(router_ctl.APPROVERS.subject, cb=hung)
    await Requester(alone.nc, "vault-hung").ask(ttl=600)
    await eventually(lambda: asks, 20, "the router was never asked")
    await Requester(alone.nc, "vault-named").ask(ttl=600, host="named.example.com", approvers=(OWNER,))
    await alone.owner.first(ev.OutboundMessage, text="named.example.com")

    await asks[0].respond(msgspec.json.encode(router_ctl.Approvers(agent_group="main", approvers=[OWNER])))

    await alone.owner.first(ev.OutboundMessage, text="api.github.com")  # the hung ask's request, sent by its answer
    assert await unanswered(alone) == 0  # that ask had not timed out


async def test_the_router_is_asked_per_group_not_per_request_and_one_answer_sends_all_its_cards(
    alone: Alone,  # noqa: F811
) -> None:
    """While the router is away (here it takes each ask and never answers) it is asked about each group now and then,
    not about each request; once it answers, one ask per group sends the card of every request of it, a copy of one
    being a duplicate."""
    per_group = 20
    asks: list[tuple[str, int]] = []  # each ask's group, and how many asks had ended unanswered by then (or after)

    async def hung(msg: Msg) -> None:
        group = msgspec.json.decode(msg.data, type=router_ctl.ApproversGet).agent_group
        asks.append((group, await unanswered(alone)))

    hanging = await alone.nc.subscribe(router_ctl.APPROVERS.subject, cb=hung)
    for group in ("main", "ops"):
        for n in range(per_group):
            request = held_request(f"vault-{group}-{n}", ttl=600, host=f"{group}-{n}.example.com", agent_group=group)
            await publish(alone.js, subjects.APPROVAL_REQUEST, request, msg_id=f"vault:{request.id}")
    copy = held_request("vault-main-0", ttl=600, host="main-0.example.com")
    await publish(alone.js, subjects.APPROVAL_REQUEST, copy, msg_id="vault:vault-main-0:again")

    async def all_waiting() -> bool:
        return len(await waiting_for_the_router(alone)) == 2 * per_group

    await eventually(all_waiting, 30, "the requests were never all waiting for the router")
    # One round of asks at a time, each group once in it, the next round only once the last one's asks have all
    # ended (here: timed out, each counted as unanswered when it does): the n-th ask comes after n - 2 such ends.
    # Asking about each request had dozens out at once.
    await eventually(lambda: len(asks) >= 3 and {g for g, _ in asks} == {"main", "ops"}, 60, lambda: f"asks: {asks}")
    await hanging.unsubscribe()
    assert all(ended >= n - 1 for n, (_, ended) in enumerate(asks)), asks  # n counts from 0

    router = Router(alone.nc)
    await router.come()

    def cards() -> list[ev.OutboundMessage]:
        seen = [e for e in alone.owner.seen if isinstance(e, ev.OutboundMessage) and e.card is not None]
        return [e for e in seen if "example.com" in e.text]

    await eventually(lambda: len(cards()) >= 2 * per_group, 30, lambda: f"cards: {len(cards())}")
    assert sorted(router.groups) == ["main", "ops"]
    assert len(cards()) == 2 * per_group and len({c.card.title for c in cards() if c.card}) == 2 * per_group
    assert await waiting_for_the_router(alone) == set() and await duplicates(alone) == 1


async def test_after_a_crash_the_router_is_asked_about_waiting_requests_at_once(alone: Alone) -> None:  # noqa: F811
    """The process dies while requests wait for the router; the one started after it asks about them as it starts,
    not when JetStream would deliver them again (their ack wait, half a minute on)."""
    for n in range(3):
        await Requester(alone.nc, f"vault-restart-{n}").ask(ttl=600, host=f"restart-{n}.example.com")
    await eventually(lambda: unanswered(alone), 30, "the approvals service never asked the router")
    assert len(await waiting_for_the_router(alone)) == 3
    alone.approvals.kill()
    router = Router(alone.nc)
    await router.come()

    await alone.approvals.start(alone.nc)
    for n in range(3):
        await alone.owner.first(ev.OutboundMessage, timeout=10, text=f"restart-{n}.example.com")
    assert router.groups == ["main"]
