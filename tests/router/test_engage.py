"""The routing decision as a table: message and what the router knows in, what happens out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawden.bus import events as ev
from services.router import pairing
from services.router.engage import (
    AskChannel,
    AskSender,
    Chat,
    Decision,
    Deliver,
    NoteSender,
    PairOwner,
    Reply,
    Standing,
    View,
    Wiring,
    decide,
)

USER = "telegram:u1"
CODE = "ABCDE-FGHJK"


def msg(
    text: str = "hi",
    *,
    chat: str = "c1",
    thread: str | None = None,
    group: bool = False,
    mentioned: bool = False,
    bot: bool = False,
    threads: bool = False,
    attachments: tuple[ev.Attachment, ...] = (),
    refused: str = "",
) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ev.Route(channel="telegram", chat_id=chat, thread_id=thread),
        message_id="m1",
        sender=ev.Sender(id=USER, name="Ada", is_bot=bot),
        text=text,
        sent_at=1.0,
        is_group=group,
        mentioned=mentioned,
        supports_threads=threads,
        attachments=attachments,
        refused=refused,
    )


def view(
    *wirings: Wiring,
    policy: str = "public",
    sender: Standing | None = None,
    sticky: tuple[str, ...] = (),
    known: bool = True,
    denied: bool = False,
    pending: bool = False,
    can_register: bool = True,
    code: str = "",
    has_groups: bool = True,
) -> View:
    return View(
        chat=Chat(known=known, policy=policy, denied=denied, registration_pending=pending),  # type: ignore[arg-type]
        sender=sender or Standing(USER),
        wirings=wirings,
        sticky=frozenset(sticky),
        pairing_digest=pairing.digest(code) if code else "",
        can_register=can_register,
        has_groups=has_groups,
    )


def summary(d: Decision) -> tuple[str, ...]:
    out: list[str] = []
    for a in d.actions:
        if isinstance(a, Deliver):
            s = a.session
            out.append(
                f"deliver {a.agent_group} {s.channel}/{s.chat_id}/{s.thread_id or '-'}"
                + ("" if a.trigger else " accumulate")
                + (f" {a.command}" if a.command else "")
            )
        elif isinstance(a, AskSender):
            out.append(f"ask-sender {a.agent_group}" + (" new" if a.new else ""))
        elif isinstance(a, AskChannel):
            out.append("ask-channel" + (" new" if a.new else ""))
        elif isinstance(a, Reply):
            out.append(f"reply {a.text}")
        elif isinstance(a, NoteSender):
            out.append(f"note {a.agent_group}")
        elif isinstance(a, PairOwner):
            out.append("pair")
    if d.dropped:
        out.append(("drop: " if d.record else "drop quietly: ") + d.dropped)
    return tuple(out)


MAIN = Wiring("main")
MENTION = Wiring("main", engage_mode="mention")
STICKY = Wiring("main", engage_mode="mention-sticky")
MEMBER = Standing(USER, member_of=frozenset({"main"}))
OWNER = Standing(USER, owner=True)
DELIVER = ("deliver main telegram/c1/-",)
QUIET = ("drop quietly: no wired agent group engaged",)

CASES = [
    # --- engage modes ---
    pytest.param(msg(), view(MAIN), DELIVER, id="pattern-always-engages"),
    pytest.param(
        msg("@bot hi", group=True), view(Wiring("main", engage_pattern="^@bot")), DELIVER, id="pattern-matches"
    ),
    pytest.param(
        msg("@BOT hi", group=True), view(Wiring("main", engage_pattern="^@bot")), DELIVER, id="pattern-ignores-case"
    ),
    pytest.param(
        msg("hello", group=True),
        view(Wiring("main", engage_pattern="^@bot")),
        QUIET,
        id="pattern-misses-quietly-in-a-group",
    ),
    pytest.param(
        msg("hello", group=True), view(Wiring("main", engage_pattern="(")), QUIET, id="bad-pattern-fails-closed"
    ),
    pytest.param(msg(group=True, mentioned=True), view(MENTION), DELIVER, id="mention-engages"),
    pytest.param(msg(group=True), view(MENTION), QUIET, id="no-mention-no-answer"),
    pytest.param(msg(), view(MENTION), DELIVER, id="a-direct-message-is-always-addressed"),
    pytest.param(
        msg(group=True, thread="t1", threads=True),
        view(STICKY, sticky=("main",)),
        ("deliver main telegram/c1/t1",),
        id="sticky-thread-keeps-engaging",
    ),
    pytest.param(msg(group=True, thread="t1", threads=True), view(STICKY), QUIET, id="sticky-needs-a-thread-session"),
    pytest.param(
        msg(group=True, thread="t1", threads=False),
        view(STICKY, sticky=("main",)),
        QUIET,
        id="sticky-needs-a-threaded-channel",
    ),
    # --- unknown-sender policy ---
    pytest.param(
        msg(),
        view(MAIN, policy="strict"),
        ("note main", "drop: main: unknown sender (strict chat)"),
        id="strict-drops-and-records",
    ),
    pytest.param(msg(), view(MAIN, policy="strict", sender=MEMBER), DELIVER, id="strict-lets-members-in"),
    pytest.param(msg(), view(MAIN, policy="strict", sender=OWNER), DELIVER, id="owners-are-implicit-members"),
    pytest.param(
        msg(),
        view(MAIN, policy="strict", sender=Standing(USER, admin_of=frozenset({"other"}))),
        ("note main", "drop: main: unknown sender (strict chat)"),
        id="another-groups-admin-is-unknown",
    ),
    pytest.param(msg(), view(MAIN, policy="request_approval"), ("ask-sender main new",), id="approval-is-asked"),
    pytest.param(
        msg(),
        view(MAIN, policy="request_approval", sender=Standing(USER, pending_for=frozenset({"main"}))),
        ("ask-sender main",),
        id="pending-approval-holds-the-message",
    ),
    pytest.param(
        msg(),
        view(MAIN, policy="request_approval", sender=Standing(USER, denied_for=frozenset({"main"}))),
        ("drop: main: an approver declined this sender",),
        id="declined-sender-is-not-asked-again",
    ),
    pytest.param(msg(), view(MAIN, policy="public"), DELIVER, id="public-lets-everyone-in"),
    # --- sender scope ---
    pytest.param(
        msg(),
        view(Wiring("main", sender_scope="known")),
        ("note main", "drop: main: only members may talk to it here"),
        id="scope-known-refuses-strangers",
    ),
    pytest.param(
        msg(), view(Wiring("main", sender_scope="known"), sender=MEMBER), DELIVER, id="scope-known-lets-members-in"
    ),
    # --- ignored messages ---
    pytest.param(
        msg(group=True),
        view(Wiring("main", engage_mode="mention", ignored_messages="accumulate")),
        ("deliver main telegram/c1/- accumulate",),
        id="accumulate-keeps-context-without-waking",
    ),
    pytest.param(
        msg(group=True),
        view(Wiring("main", engage_mode="mention", ignored_messages="accumulate"), policy="request_approval"),
        QUIET,
        id="accumulate-never-asks-for-approval",
    ),
    pytest.param(
        msg("/compact", group=True),
        view(Wiring("main", engage_mode="mention", ignored_messages="accumulate"), sender=OWNER),
        QUIET,
        id="commands-are-not-accumulated",
    ),
    # --- session modes and threads ---
    pytest.param(
        msg(group=True, mentioned=True, thread="t1", threads=True),
        view(MENTION),
        ("deliver main telegram/c1/t1",),
        id="threaded-group-gets-a-session-per-thread",
    ),
    pytest.param(msg(thread="t1", threads=True), view(MAIN), DELIVER, id="shared-direct-chat-collapses-threads"),
    pytest.param(
        msg(thread="t1", threads=True),
        view(Wiring("main", session_mode="per-thread")),
        ("deliver main telegram/c1/t1",),
        id="per-thread-splits-a-direct-chat",
    ),
    pytest.param(
        msg(thread="t1", group=True, mentioned=True),
        view(Wiring("main", session_mode="per-thread")),
        DELIVER,
        id="non-threaded-channel-collapses-threads",
    ),
    pytest.param(
        msg(chat="c9"),
        view(Wiring("main", session_mode="agent-shared")),
        ("deliver main */*/-",),
        id="agent-shared-is-one-session-everywhere",
    ),
    # --- fan-out ---
    pytest.param(
        msg(),
        view(Wiring("b"), Wiring("a"), Wiring("c", priority=5)),
        ("deliver c telegram/c1/-", "deliver a telegram/c1/-", "deliver b telegram/c1/-"),
        id="fan-out-by-priority-then-name",
    ),
    pytest.param(
        msg(group=True),
        view(Wiring("a"), Wiring("b", engage_mode="mention")),
        ("deliver a telegram/c1/-",),
        id="fan-out-only-to-groups-that-engage",
    ),
    pytest.param(
        msg(),
        view(Wiring("a"), Wiring("b", sender_scope="known"), sender=Standing(USER, member_of=frozenset({"a"}))),
        ("deliver a telegram/c1/-", "note b"),
        id="fan-out-gates-each-group",
    ),
    # --- commands ---
    pytest.param(msg("/clear"), view(MAIN, sender=OWNER), ("deliver main telegram/c1/- clear",), id="owner-clears"),
    pytest.param(
        msg("/clear@MyBot"), view(MAIN, sender=OWNER), ("deliver main telegram/c1/- clear",), id="clear-with-bot-suffix"
    ),
    pytest.param(
        msg("/clear"),
        view(MAIN, sender=Standing(USER, admin_of=frozenset({"main"}))),
        ("deliver main telegram/c1/- clear",),
        id="group-admin-clears",
    ),
    pytest.param(
        msg("/clear"),
        view(MAIN, sender=MEMBER),
        ("reply Only an admin of main can use /clear.",),
        id="non-admin-is-refused-clearly",
    ),
    pytest.param(
        msg("/login"),
        view(MAIN, sender=OWNER),
        ("drop: /login is a command for the agent's host, not the agent",),
        id="host-commands-ignored",
    ),
    pytest.param(msg("/weather today"), view(MAIN), DELIVER, id="other-slash-words-are-text"),
    # --- chats nobody is wired to ---
    pytest.param(msg(), view(known=False), ("ask-channel new",), id="unknown-direct-chat-asks-the-owner"),
    pytest.param(
        msg(group=True),
        view(known=False),
        ("drop quietly: chat is not wired to any agent group",),
        id="unaddressed-group-chatter-is-ignored",
    ),
    pytest.param(
        msg(group=True, mentioned=True),
        view(known=False),
        ("ask-channel new",),
        id="a-mention-in-an-unknown-group-asks",
    ),
    pytest.param(msg(), view(pending=True), ("ask-channel",), id="pending-registration-holds-the-message"),
    pytest.param(
        msg(), view(denied=True), ("drop: the owner declined to connect this chat",), id="declined-chat-stays-quiet"
    ),
    pytest.param(
        msg(),
        view(known=False, can_register=False),
        (
            "drop: chat is not wired to any agent group, and there is no owner to approve it"
            " (pair one with `clawden pair <channel>`)",
        ),
        id="no-owner-says-how-to-pair",
    ),
    pytest.param(
        msg(),
        view(known=False, has_groups=False),
        (
            "drop: chat is not wired to any agent group, and there is none to wire it to: create one"
            " (`clawden groups create NAME`) and wire it (`clawden wire add telegram c1 NAME`)",
        ),
        id="no-agent-group-says-make-one-not-pair",
    ),
    # --- pairing ---
    pytest.param(msg("abcde fghjk"), view(MAIN, code=CODE), ("pair",), id="pairing-code-pairs"),
    pytest.param(msg(CODE), view(known=False, code=CODE), ("pair",), id="pairing-works-in-an-unknown-chat"),
    pytest.param(msg("ABCDE-FGHJJ"), view(MAIN, code=CODE), DELIVER, id="wrong-code-is-just-text"),
    # --- never worth routing ---
    pytest.param(msg(bot=True), view(MAIN), ("drop quietly: message from a bot",), id="bots-are-ignored"),
    pytest.param(
        msg(refused="From fails DKIM alignment"),
        view(MAIN, code=CODE),
        ("drop: From fails DKIM alignment",),
        id="a-message-its-bridge-refused-is-recorded-and-goes-nowhere",
    ),
    pytest.param(msg("  "), view(MAIN), ("drop: empty message",), id="empty-message-dropped"),
    pytest.param(
        msg("", attachments=(ev.Attachment(name="a.png"),)), view(MAIN), DELIVER, id="attachment-only-message-engages"
    ),
]


@pytest.mark.parametrize(("message", "known", "expected"), CASES)
def test_decision(message: ev.InboundMessage, known: View, expected: tuple[str, ...]) -> None:
    assert summary(decide(message, known)) == expected


def test_a_replay_reaches_only_the_group_it_was_held_for() -> None:
    known = view(Wiring("a"), Wiring("b"), policy="public", code=CODE)
    assert summary(decide(msg(CODE), known, only="b")) == ("deliver b telegram/c1/-",)


def test_a_replay_for_a_group_no_longer_wired_is_dropped() -> None:
    assert summary(decide(msg(), view(Wiring("a")), only="b")) == (
        "drop: agent group b is no longer wired to this chat",
    )


def test_deliveries_carry_the_route_with_the_thread_only_where_threads_count() -> None:
    [threaded] = decide(msg(group=True, mentioned=True, thread="t1", threads=True), view(MENTION)).deliveries
    [flat] = decide(msg(group=True, mentioned=True, thread="t1"), view(MENTION)).deliveries
    assert threaded.route == ev.Route(channel="telegram", chat_id="c1", thread_id="t1")
    assert flat.route == ev.Route(channel="telegram", chat_id="c1", thread_id=None)


# --- no input crashes it ------------------------------------------------------------------------------

GROUPS = st.sampled_from(["a", "b", "c"])
wirings = st.builds(
    Wiring,
    GROUPS,
    st.sampled_from(["pattern", "mention", "mention-sticky"]),
    st.sampled_from([".", "^@bot", "(", "x*", "[", "hi|/clear", ""]),
    st.sampled_from(["all", "known"]),
    st.sampled_from(["drop", "accumulate"]),
    st.sampled_from(["shared", "per-thread", "agent-shared"]),
    st.integers(-3, 3),
)
group_sets = st.frozensets(GROUPS)
standings = st.builds(
    Standing, st.just(USER), st.booleans(), st.booleans(), group_sets, group_sets, group_sets, group_sets
)
views = st.builds(
    View,
    st.builds(
        Chat, st.booleans(), st.sampled_from(["strict", "request_approval", "public"]), st.booleans(), st.booleans()
    ),
    standings,
    st.lists(wirings, max_size=4, unique_by=lambda w: w.agent_group).map(tuple),
    group_sets,
    st.sampled_from(["", pairing.digest(CODE)]),
    st.booleans(),
)
texts = st.one_of(st.text(max_size=60), st.sampled_from(["/clear", "/login", "/", "/ x", "@bot hi", CODE, "/CLEAR@b"]))
messages = st.builds(
    ev.InboundMessage,
    route=st.builds(
        ev.Route,
        channel=st.just("telegram"),
        chat_id=st.text(min_size=1, max_size=5),
        thread_id=st.one_of(st.none(), st.just(""), st.text(max_size=3)),
    ),
    message_id=st.just("m"),
    sender=st.builds(ev.Sender, id=st.just(USER), is_bot=st.booleans()),
    text=texts,
    sent_at=st.just(0.0),
    is_group=st.booleans(),
    mentioned=st.booleans(),
    supports_threads=st.booleans(),
    attachments=st.lists(st.just(ev.Attachment(name="f")), max_size=1).map(tuple),
)


@settings(max_examples=400, deadline=None)
@given(messages, views, st.one_of(st.none(), GROUPS))
def test_no_input_crashes_the_decision_and_it_keeps_its_promises(
    message: ev.InboundMessage, known: View, only: str | None
) -> None:
    decision = decide(message, known, only=only)
    wired = {w.agent_group for w in known.wirings}
    delivered = [d.agent_group for d in decision.deliveries]
    assert len(delivered) == len(set(delivered))  # one session per group
    assert set(delivered) <= wired
    if only is not None:
        assert set(delivered) <= {only}
    for d in decision.deliveries:
        # Nobody gets past the gates: a stranger reaches an agent only in a public chat.
        assert known.sender.knows(d.agent_group) or known.chat.policy == "public"
        if d.session.thread_id:
            assert message.supports_threads
    if message.sender.is_bot:
        assert decision.actions == ()
    assert bool(decision.dropped) != any(
        isinstance(a, Deliver | Reply | AskSender | AskChannel | PairOwner) for a in decision.actions
    )
