"""Agents that talk to each other, decided as a table: which sends reach which session with what hop count,
and which are dropped and why (services/router/relay.py)."""

from __future__ import annotations

import dataclasses

import pytest

from clawden.bus import events as ev
from services.router import relay
from services.router.relay import Deliver, Drop, Source, Target

PERSON_CHAT = ev.Route(channel="telegram", chat_id="ada")
# Session s-a of `research`, a person's chat; s-b of `writer`, opened by s-a's send.
S_A = Source("s-a", "research", "telegram", "ada", "", hops=0, hop_limit=0)
S_B = Source("s-b", "writer", "agent", "research", "s-a", hops=1, hop_limit=4)
BACK_TO_A = Target("s-a", "research", PERSON_CHAT)


def to(group: str, thread: str | None = None) -> ev.Route:
    return ev.Route(channel="agent", chat_id=group, thread_id=thread)


def hops(source: Source, n: int) -> Source:
    return dataclasses.replace(source, hops=n)


@pytest.mark.parametrize(
    ("route", "source", "destination_hops", "reply_to", "expected"),
    [
        # A send through a destination opens (or goes on with) the target's session for the sending session.
        (to("writer"), S_A, 0, None, Deliver("writer", "", to("research", "s-a"), 1, 4)),
        (to("writer"), S_A, 2, None, Deliver("writer", "", to("research", "s-a"), 1, 2)),
        (to("writer"), hops(S_A, 3), 0, None, Deliver("writer", "", to("research", "s-a"), 4, 4)),
        # The answer in the target's own chat goes back into the very session that asked, one hop more.
        (to("research", "s-a"), S_B, None, BACK_TO_A, Deliver("research", "s-a", PERSON_CHAT, 2, 4)),
        (to("research", "s-a"), hops(S_B, 3), None, BACK_TO_A, Deliver("research", "s-a", PERSON_CHAT, 4, 4)),
    ],
)
def test_a_send_is_delivered_with_its_hop_count(
    route: ev.Route, source: Source, destination_hops: int | None, reply_to: Target | None, expected: Deliver
) -> None:
    assert relay.decide(route, source, destination_hops=destination_hops, reply_to=reply_to) == expected


@pytest.mark.parametrize(
    ("route", "source", "destination_hops", "reply_to", "why"),
    [
        (to("writer"), None, 0, None, "from a session the router does not know"),
        (to("writer"), S_A, None, None, "research has no destination for agent group 'writer'"),
        (
            to("writer"),
            hops(S_A, 4),
            0,
            None,
            "hop limit 4 reached (5 agent-to-agent sends in a row): research -> writer",
        ),
        (to("writer"), hops(S_A, 2), 2, None, "hop limit 2 reached (3 agent-to-agent sends in a row)"),
        (to("research", "s-a"), hops(S_B, 4), None, BACK_TO_A, "hop limit 4 reached (5 agent-to-agent"),
        # Only the session a send opened answers, and only into the session that sent it.
        (to("research", "s-a"), S_A, None, BACK_TO_A, "session s-a may not answer into session 's-a'"),
        (to("research", "s-x"), S_B, None, Target("s-x", "research", PERSON_CHAT), "may not answer"),
        (to("research", "s-a"), S_B, None, None, "may not answer"),
        (to("research", "s-a"), S_B, None, Target("s-a", "other", PERSON_CHAT), "may not answer"),
        (to("other", "s-a"), S_B, None, BACK_TO_A, "may not answer"),
    ],
)
def test_a_send_that_may_not_go_is_dropped_saying_why(
    route: ev.Route, source: Source | None, destination_hops: int | None, reply_to: Target | None, why: str
) -> None:
    decision = relay.decide(route, source, destination_hops=destination_hops, reply_to=reply_to)
    assert isinstance(decision, Drop) and why in decision.reason


def test_a_relayed_message_is_from_an_agent_never_a_person() -> None:
    assert relay.sender("research") == ev.Sender(id="agent:research", name="agent research", is_bot=True)


def test_an_a_b_loop_is_cut_at_the_limit() -> None:
    """A asks B, B answers A, A asks B again ...: the count grows by one a send and the fifth one is dropped."""
    a, b, delivered = S_A, None, 0
    while True:
        into_b = relay.decide(to("writer"), a, destination_hops=0, reply_to=None)
        if isinstance(into_b, Drop):
            break
        delivered += 1
        b = Source("s-b", "writer", "agent", "research", "s-a", hops=into_b.hops, hop_limit=into_b.hop_limit)
        into_a = relay.decide(to("research", "s-a"), b, destination_hops=None, reply_to=BACK_TO_A)
        if isinstance(into_a, Drop):
            break
        delivered += 1
        a = hops(S_A, into_a.hops)
    assert delivered == ev.DEFAULT_MAX_HOPS


@pytest.mark.parametrize(
    ("kind", "thread", "relayed"),
    [
        ("reply", None, True),  # a send: its destination decides
        ("reply", "s-a", True),  # an answer
        ("error", "s-a", True),  # "couldn't answer" in a session another agent opened: the asker hears it
        ("error", None, False),  # no asker to tell
        ("notice", "s-a", False),  # the runner's other notices mean nothing to an agent
    ],
)
def test_an_answer_and_a_failure_to_answer_are_relayed_nothing_else(
    kind: str, thread: str | None, relayed: bool
) -> None:
    assert relay.relayed(kind, thread) is relayed


def test_a_failure_reads_as_the_hosts_word_an_answer_as_it_is() -> None:
    assert relay.text_of("reply", "writer", "Dawn") == "Dawn"
    assert relay.text_of("error", "writer", "Sorry") == "(Clawden: agent group writer could not answer: Sorry)"
