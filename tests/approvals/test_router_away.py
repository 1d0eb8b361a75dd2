"""A request the router has not said who may approve, as `clawden run approvals` keeps it while the router is away:
listed from approvals.db right after a crash, decided by the machine's owner without the router, and expired at its
own time whatever the service went through. The router is answered (or not) by the test."""

from __future__ import annotations

import time

from clawden.bus import events as ev
from clawden.bus import streams
from clawden.bus.ctl import approvals as approvals_ctl
from clawden.control import ask_on
from tests.approvals.test_service import OWNER, Alone, Requester, Router, alone, control, unanswered  # noqa: F401
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
    The held request, when it comes again, finds it decided: no card, nobody asked, nothing decided twice."""
    requester = Requester(alone.nc, "vault-owner")
    await requester.ask(ttl=600)
    await asked_in_vain(alone)

    decide = approvals_ctl.DecideRequest(id="vault-owner", choice="approve", by=OWNER)
    decided = await ask_on(alone.nc, approvals_ctl.DECIDE, decide)
    assert (decided.status, decided.decided_by, decided.approver) == ("approved", OWNER, "")
    decision = await requester.decision()
    assert (decision.decision, decision.decided_by, decision.value) == ("approved", OWNER, "approve")

    router = Router(alone.nc)
    await router.come()  # too late to be asked: the request is decided

    async def held_no_more() -> bool:
        info = await alone.js.consumer_info("CLAWDEN_APPROVALS", streams.approvals_requests().durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(held_no_more, 20, "the held request was never finished")
    assert (await alone.stats()).get("duplicate") == 1 and router.asked == 0
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
