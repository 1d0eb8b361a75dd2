"""Where a new session runs (services/router/placement.py), as tables; then the router's store placing real
sessions in a real router.db by the heartbeats it was given, a group's pin set through the control verbs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from clawden import servicedb
from clawden.bus import ctl
from clawden.bus import events as ev
from clawden.config import GroupConfig
from services.router.control import Control
from services.router.placement import Hearing, Placement, Runners, Seen, away_since, gone, place
from services.router.schema import MIGRATIONS
from services.router.store import RouterError, RouterStore
from services.runner import heartbeat

NOW = 1_000.0
DEAD_AFTER = 15.0


def beat(
    rid: str,
    *,
    free: int = 8,
    load: float = 0.0,
    cpus: int = 4,
    memory: int = 2**30,
    mounts: str = "",
    vault: bool = True,
) -> Any:
    return heartbeat.beat(
        rid,
        at=0.0,  # the runner's own clock: never used, hosts' clocks may differ
        slots=8,
        running=8 - free,
        queued=0,
        cpus=cpus,
        load=load,
        memory=memory,
        mounts=tuple(mounts.split(",")) if mounts else (),
        reaches_vault=vault,
    )


def seen(rid: str, *, age: float = 1.0, placed: int = 0, **figures: Any) -> Seen:
    """A beat heard `age` seconds ago, the router listening all along (the tables' NOW is both clocks)."""
    return Seen(beat(rid, **figures), NOW - age, NOW - age, placed)


def table(*runners: Seen) -> dict[str, Seen]:
    return {s.beat.runner: s for s in runners}


def placed(runners: dict[str, Seen], group: str = "g", pin: str = "") -> Placement:
    return place(runners, NOW, group=group, pin=pin, dead_after=DEAD_AFTER, fallback="home")


@pytest.mark.parametrize(
    ("runners", "where"),
    [
        # the most free slots first
        (table(seen("a", free=2), seen("b", free=5)), "b"),
        # what was placed since the last beat counts against it: b's 5 free, less 4 placed, is below a's 2
        (table(seen("a", free=2), seen("b", free=5, placed=4)), "a"),
        # equal slots: the lowest load per CPU (b's 3 on 8 CPUs beats a's 2 on 4)
        (table(seen("a", load=2.0, cpus=4), seen("b", load=3.0, cpus=8)), "b"),
        # equal slots and load: the most memory; an unknown one (-1) counts as none
        (table(seen("a", memory=2**30), seen("b", memory=2**31)), "b"),
        (table(seen("a", memory=-1), seen("b", memory=1)), "b"),
        # all equal: by id, so the same table always gives the same runner
        (table(seen("b"), seen("a"), seen("c")), "a"),
        # a full runner still takes a session when it is the only live one (it waits for a slot there)
        (table(seen("a", free=0)), "a"),
        # a runner whose containers reach the vault first, however busy (elsewhere no agent would start) ...
        (table(seen("a", free=8, vault=False), seen("b", free=1)), "b"),
        # ... and by load again when none does
        (table(seen("a", free=8, vault=False), seen("b", free=1, vault=False)), "a"),
    ],
)
def test_a_new_session_goes_to_the_least_loaded_live_runner(runners: dict[str, Seen], where: str) -> None:
    assert placed(runners) == Placement(where)


@pytest.mark.parametrize(
    ("age", "live"),
    [(0.0, True), (DEAD_AFTER, True), (DEAD_AFTER + 0.1, False), (600.0, False)],
)
def test_a_runner_whose_heartbeat_is_older_than_dead_after_takes_no_new_session(age: float, live: bool) -> None:
    runners = table(seen("a", age=age, free=8), seen("b", free=1))
    assert placed(runners).runner == ("a" if live else "b")


@pytest.mark.parametrize(
    ("runners", "pin", "expected"),
    [
        # a pin wins over load
        (table(seen("a", free=8), seen("b", free=1)), "b", Placement("b")),
        # the pinned runner is silent: the session waits for it there, and the log says why
        (
            table(seen("a"), seen("b", age=60)),
            "b",
            Placement("b", "agent group g is pinned to runner b, which is not live"),
        ),
        # pinned to a runner never heard of (not started yet): the same
        (table(seen("a")), "z", Placement("z", "agent group g is pinned to runner z, which is not live")),
        # pinned away from where the group's mounts are: the pin wins, and the log names the mounts' runner
        (
            table(seen("a", mounts="g"), seen("b")),
            "b",
            Placement("b"),
        ),
        (
            table(seen("a", mounts="g"), seen("b", age=60)),
            "b",
            Placement("b", "agent group g is pinned to runner b, which is not live; its extra mounts are on a"),
        ),
        # "" is no pin
        (table(seen("a", free=1), seen("b", free=2)), "", Placement("b")),
    ],
)
def test_a_groups_pin_decides_where_its_sessions_go(runners: dict[str, Seen], pin: str, expected: Placement) -> None:
    assert placed(runners, pin=pin) == expected


@pytest.mark.parametrize(
    ("runners", "group", "expected"),
    [
        # only b has g's mounts: g stays there, however busy
        (table(seen("a", free=8), seen("b", free=1, mounts="g")), "g", Placement("b")),
        # both hosts have them (shared storage): by load again
        (table(seen("a", free=8, mounts="g,h"), seen("b", free=1, mounts="g")), "g", Placement("a")),
        # another group's mounts do not bind this one
        (table(seen("a", free=8), seen("b", free=1, mounts="h")), "g", Placement("a")),
        # the only holder is silent: the session waits there rather than run without its folders
        (
            table(seen("a"), seen("b", age=60, mounts="g")),
            "g",
            Placement("b", "no live runner holds agent group g's extra mounts; runner b did last"),
        ),
        # of two silent holders, the one heard from last
        (
            table(seen("a", age=90, mounts="g"), seen("b", age=60, mounts="g"), seen("c")),
            "g",
            Placement("b", "no live runner holds agent group g's extra mounts; runner b did last"),
        ),
    ],
)
def test_a_group_whose_mounts_exist_on_some_hosts_only_stays_on_them(
    runners: dict[str, Seen], group: str, expected: Placement
) -> None:
    assert placed(runners, group=group) == expected


@pytest.mark.parametrize(
    ("runners", "expected"),
    [
        # a fresh start: no heartbeat yet, the install's own runner at once (nobody waits for a beat)
        ({}, Placement("home", "no runner heartbeat yet: runner home")),
        # every runner silent
        (
            table(seen("a", age=20), seen("b", age=30)),
            Placement("home", "no live runner (none beat in the last 15 s): runner home"),
        ),
    ],
)
def test_when_no_live_runner_fits_the_session_goes_to_the_fallback(
    runners: dict[str, Seen], expected: Placement
) -> None:
    assert placed(runners) == expected


@pytest.mark.parametrize(
    ("runners", "away"),
    [
        (table(seen("a", age=1)), None),  # beating
        (table(seen("a", age=DEAD_AFTER)), None),  # just within
        (table(seen("a", age=DEAD_AFTER + 1)), NOW - DEAD_AFTER - 1),  # gone: since it was last heard
        (table(seen("b", age=99)), None),  # not heard since the router started: nothing known
    ],
)
def test_a_runner_is_away_once_silent_past_dead_after(runners: dict[str, Seen], away: float | None) -> None:
    assert away_since(runners, "a", NOW, DEAD_AFTER) == away


@pytest.mark.parametrize(
    ("runners", "listened", "declared"),
    [
        (table(seen("a", age=1)), NOW, {}),  # beating
        (table(seen("a", age=DEAD_AFTER + 1)), NOW, {"a": NOW - DEAD_AFTER - 1}),  # since its last beat
        # never heard: gone once the router has listened for dead_after (since it started, at 500)
        ({}, DEAD_AFTER + 1, {"a": 500.0}),
        ({}, DEAD_AFTER, {}),
        # only runners that hold sessions count: a silent runner with none is nothing to act on
        (table(seen("a", age=1), seen("c", age=99)), NOW, {}),
    ],
)
def test_a_runner_holding_sessions_is_gone_once_silent_past_dead_after_or_never_heard(
    runners: dict[str, Seen], listened: float, declared: dict[str, float]
) -> None:
    assert gone(runners, ["a"], listened, DEAD_AFTER, 500.0) == declared


def test_the_table_keeps_each_runners_latest_beat_and_counts_what_was_placed_since() -> None:
    runners = Runners()
    runners.placed("a")  # not heard of yet: nothing to count against
    assert runners.snapshot() == {}
    runners.heard(beat("a", free=3), NOW)
    runners.placed("a")
    runners.placed("a")
    assert runners.snapshot()["a"].placed == 2
    runners.heard(beat("a", free=1), NOW + 5)  # the new beat counts them itself
    assert runners.snapshot() == {"a": Seen(beat("a", free=1), NOW + 5, 5.0, 0)}  # listening since the first beat


@pytest.mark.parametrize(
    ("steps", "at", "listened"),
    [
        ([], NOW + 30, 30.0),  # connected all along, on the link it began with
        ([("look", NOW + 10, 0), ("look", NOW + 20, 0)], NOW + 30, 30.0),
        # cut off at the look at +10 (deaf since the start), still cut off at +20: nothing since
        ([("look", NOW + 10, None), ("look", NOW + 20, None)], NOW + 30, 0.0),
        # back at +20 on a new link: from then on only
        ([("look", NOW + 10, None), ("look", NOW + 20, 1)], NOW + 30, 10.0),
        # a new link found at +20, the outage never seen: a look that found the old link proves nothing, so
        # nothing before +20 counts ...
        ([("look", NOW + 10, 0), ("look", NOW + 20, 1)], NOW + 30, 10.0),
        # ... but an answer does: the server answered at +11 a PING sent at +10, so all up to +10 was heard
        ([("ask", NOW + 10, 0), ("answer", NOW + 11, 0), ("look", NOW + 20, 1)], NOW + 30, 20.0),
        # a PING in flight: nothing past it counts until it is answered (a frozen server, a link dropping
        # packets: the client looks connected all along) ...
        ([("ask", NOW + 10, 0)], NOW + 30, 10.0),
        ([("ask", NOW + 10, 0), ("look", NOW + 20, 0)], NOW + 30, 10.0),
        # ... and once it is, its wait (4 s here) is deaf: the time from the answer on counts again
        ([("ask", NOW + 10, 0), ("answer", NOW + 14, 0)], NOW + 30, 26.0),
        # a second PING behind the first: the first one's answer settles
        ([("ask", NOW + 10, 0), ("ask", NOW + 12, 0), ("answer", NOW + 14, 0)], NOW + 30, 26.0),
        # cut off while a PING was in flight: it proves nothing, even if an answer is reported on the new link
        ([("ask", NOW + 10, 0), ("look", NOW + 12, None), ("answer", NOW + 14, 0)], NOW + 30, 16.0),
        ([("ask", NOW + 10, 0), ("answer", NOW + 14, 1)], NOW + 30, 16.0),
        # a PING on a new link: the link before it is deaf, and the new one counts from its answer on
        ([("ask", NOW + 10, 1)], NOW + 30, 0.0),
        ([("ask", NOW + 10, 1), ("answer", NOW + 11, 1)], NOW + 30, 19.0),
        # no PING goes out cut off; an answer with no PING in flight settles nothing
        ([("ask", NOW + 10, None)], NOW + 30, 0.0),
        ([("answer", NOW + 10, 0)], NOW + 30, 30.0),
        # times from another thread's clock move nothing back: a look, a PING or an answer stamped too early
        ([("look", NOW + 10, None), ("look", NOW + 5, 1)], NOW + 30, 20.0),
        ([("look", NOW + 10, None), ("ask", NOW + 5, 1), ("answer", NOW + 12, 1)], NOW + 30, 18.0),
        ([("ask", NOW + 10, 0), ("answer", NOW + 8, 0)], NOW + 30, 30.0),
    ],
)
def test_the_router_counts_only_time_the_server_answered_for_on_one_link(
    steps: list[tuple[str, float, int | None]], at: float, listened: float
) -> None:
    hearing = Hearing(start=NOW, checked=NOW)
    for step, now, link in steps:
        hearing = {"look": hearing.look, "ask": hearing.ask, "answer": hearing.answered}[step](now, link)
    assert hearing.listened(at) == listened


def test_a_runner_is_not_judged_silent_for_the_time_the_router_was_cut_off_from_nats(store: RouterStore) -> None:
    store.shared_storage = True
    store.runners.looked(NOW, 0)
    store.runners.heard(beat("a"), NOW)
    wake = say(store, "t1", 1)
    assert runner_of(store, wake.session_id) == "a"
    store.runners.looked(NOW + 1, None)  # the router is cut off from NATS: no beat reaches it
    back = NOW + 120
    store.runners.looked(back, 1)  # and back, on a new link; b's beat comes first, a's is due any moment
    store.runners.heard(beat("b"), back)
    assert store.gone_runners(back + 1) == {}  # a is not gone: it was silent only while the router could not hear
    assert notices_in(said(store, "t1", 2, back + 1)) == []  # its chat is told nothing: its wake goes to a
    assert runner_of(store, wake.session_id) == "a"
    store.runners.heard(beat("b", free=1), back + 1)
    assert runner_of(store, say(store, "t2", 3).session_id) == "a"  # a is still live for new sessions (8 free > 1)
    # silent for dead_after of the router's listening: gone now, since its last beat
    assert store.gone_runners(back + DEAD_AFTER + 1) == {"a": NOW}


def test_a_runner_silent_before_the_router_was_cut_off_stays_gone_when_it_is_back(store: RouterStore) -> None:
    store.runners.looked(NOW, 0)
    store.runners.heard(beat("a"), NOW)
    say(store, "t1", 1)
    store.runners.asked(NOW + DEAD_AFTER + 1, 0)  # the server answers a PING: a is silent past dead_after already ...
    store.runners.answered(NOW + DEAD_AFTER + 1, 0)
    store.runners.looked(NOW + DEAD_AFTER + 2, None)  # ... when the router is cut off
    store.runners.looked(NOW + 120, 1)
    assert len(notices_in(said(store, "t1", 2, NOW + 121))) == 1  # its chat is told its message waits


def test_a_runner_is_not_judged_gone_for_the_time_the_server_took_to_answer(store: RouterStore) -> None:
    store.shared_storage = True
    store.runners.looked(NOW, 0)
    store.runners.heard(beat("a"), NOW)
    wake = say(store, "t1", 1)
    # A PING at +1 that the server answers only much later: it was frozen, or the link dropped packets, while the
    # client looked connected all along (the same link). b's beat came just before the answer.
    store.runners.asked(NOW + 1, 0)
    late = NOW + DEAD_AFTER + 5
    store.runners.heard(beat("b"), late)
    assert store.gone_runners(late) == {}  # nothing past the PING counts while it is in flight
    assert notices_in(said(store, "t1", 2, late)) == []  # nor for telling a chat its runner is away
    store.runners.answered(late, 0)
    assert store.gone_runners(late) == {}  # the wait for the answer was deaf
    assert runner_of(store, wake.session_id) == "a"
    # a's silence grows again only with what the server answers for: 1 s before the PING, and from its answer on
    later = late + DEAD_AFTER
    store.runners.asked(later, 0)
    store.runners.answered(later, 0)
    store.runners.heard(beat("b"), later)
    assert store.gone_runners(later) == {"a": NOW}  # 16 s: past dead_after


def test_each_fallback_is_news_once_until_a_live_runner_fits_again() -> None:
    runners = Runners()
    silent = Placement("home", "no runner heartbeat yet: runner home")
    assert [runners.news(p) for p in (silent, silent, Placement("a"), Placement("a"), silent)] == [
        True,
        False,
        False,
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("groups", "present", "mounted"),
    [
        ({"g": [("/data/g", "g")], "h": [("/data/h", "h")]}, {"/data/g"}, ("g",)),
        ({"g": [("/data/g", "g"), ("/data/x", "x")]}, {"/data/g"}, ()),  # all of them, or it is not there
        ({"g": [], "h": [("/data/h", "h")]}, {"/data/h"}, ("h",)),  # no mounts: no binding
        ({"z": [("/z", "z")], "a": [("/a", "a")]}, {"/z", "/a"}, ("a", "z")),
    ],
)
def test_a_runner_names_the_groups_whose_extra_mounts_all_exist_on_its_host(
    groups: dict[str, list[tuple[str, str]]], present: set[str], mounted: tuple[str, ...]
) -> None:
    cfg = {
        name: msgspec.convert({"mounts": [{"host": h, "name": n} for h, n in mounts]}, GroupConfig)
        for name, mounts in groups.items()
    }
    assert heartbeat.mount_groups(cfg, present.__contains__) == mounted
    hb = heartbeat.beat("a", at=1, slots=1, running=0, queued=0, cpus=1, load=0, memory=1, mounts=mounted)
    assert ev.decode(ev.encode(hb)) == hb


def test_a_heartbeat_of_an_older_runner_has_no_mounts_and_still_decodes() -> None:
    old = {k: v for k, v in msgspec.to_builtins(beat("a", mounts="g")).items() if k != "mount_groups"}
    decoded = ev.decode(msgspec.json.encode(old))
    assert isinstance(decoded, ev.RunnerHeartbeat) and decoded.mount_groups == ()


# ---- the router's store, on a real router.db -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> RouterStore:
    s = RouterStore.open(tmp_path / "router.db", "home")
    s.seed("main", "local", "alice", NOW)
    return s


def admin(store: RouterStore, resource: str, **payload: object) -> Any:
    verb, request = ctl.Subject("router", resource).decode(msgspec.json.encode(payload))
    return msgspec.to_builtins(Control(store, clock=lambda: NOW).handle(verb, request))


def say(store: RouterStore, chat: str, n: int) -> ev.Wake:
    message = ev.InboundMessage(
        route=ev.Route(channel="local", chat_id=chat),
        message_id=f"m{n}",
        sender=ev.Sender(id="local:alice", name="Alice"),
        text="hi",
        sent_at=float(n),
    )
    outcome = store.route_batch([message], NOW)
    store.published([o.id for o in outcome.outgoing])
    [wake] = [(o.subject, e) for o in outcome.outgoing if not isinstance(e := ev.decode(o.payload), ev.SessionPlaced)]
    subject, event = wake
    assert isinstance(event, ev.Wake) and subject == f"clawden.wake.{runner_of(store, event.session_id)}"
    return event


def runner_of(store: RouterStore, session_id: str) -> str:
    return str(store.conn.execute("SELECT runner FROM sessions WHERE id = ?", (session_id,)).fetchone()[0])


def test_before_any_heartbeat_sessions_go_to_the_installs_own_runner(store: RouterStore) -> None:
    assert runner_of(store, say(store, "t1", 1).session_id) == "home"


def test_new_sessions_spread_by_load_and_an_existing_one_keeps_its_runner(store: RouterStore) -> None:
    store.runners.heard(beat("a", free=2), NOW)
    store.runners.heard(beat("b", free=3), NOW)
    first = [runner_of(store, say(store, f"t{n}", n).session_id) for n in range(4)]
    assert first == ["b", "a", "b", "a"]  # b 3 > a 2; then 2 = 2, by id ... each placement counted
    store.runners.heard(beat("a", free=0), NOW)  # a is full now
    again = say(store, "t0", 10)  # t0's session is on b and stays there whatever the load
    assert runner_of(store, again.session_id) == "b"
    assert runner_of(store, say(store, "t9", 11).session_id) == "b"


def test_a_silent_runner_gets_no_new_session(store: RouterStore) -> None:
    store.runners.heard(beat("a", free=8), NOW - 60)
    store.runners.heard(beat("b", free=1), NOW)
    assert runner_of(store, say(store, "t1", 1).session_id) == "b"


def test_a_pinned_groups_sessions_all_go_to_its_runner_and_the_pin_shows(store: RouterStore) -> None:
    store.runners.heard(beat("a", free=8), NOW)
    store.runners.heard(beat("b", free=1), NOW)
    assert admin(store, "groups", op="update", name="main", runner="b")["runner"] == "b"
    assert [runner_of(store, say(store, f"t{n}", n).session_id) for n in range(3)] == ["b", "b", "b"]
    assert [g["runner"] for g in admin(store, "groups", op="list")] == ["b"]
    assert admin(store, "groups", op="get", name="main")["runner"] == "b"
    admin(store, "groups", op="update", name="main", model="claude-x")  # other settings leave the pin alone
    assert admin(store, "groups", op="get", name="main")["runner"] == "b"
    admin(store, "groups", op="update", name="main", runner="")  # unpinned: by load again
    assert runner_of(store, say(store, "t7", 7).session_id) == "a"


def test_a_group_is_created_with_a_pin(store: RouterStore) -> None:
    assert admin(store, "groups", op="create", name="ops", runner="b-1")["runner"] == "b-1"
    assert admin(store, "groups", op="create", name="any")["runner"] == ""


@pytest.mark.parametrize("bad", ["a.b", "a b", "x" * 65, ">", "b*"])
def test_a_pin_that_is_no_runner_id_is_refused_in_plain_words(store: RouterStore, bad: str) -> None:
    with pytest.raises(RouterError, match="give a runner's id"):
        admin(store, "groups", op="update", name="main", runner=bad)
    with pytest.raises(RouterError, match="give a runner's id"):
        admin(store, "groups", op="create", name="other", runner=bad)
    assert admin(store, "groups", op="get", name="main")["runner"] == ""  # nothing changed


def said(store: RouterStore, chat: str, n: int, now: float) -> list[tuple[str, ev.Event]]:
    """What routing one message of `chat` at `now` sends: its wake, and any notice."""
    message = ev.InboundMessage(
        route=ev.Route(channel="local", chat_id=chat),
        message_id=f"m{n}",
        sender=ev.Sender(id="local:alice", name="Alice"),
        text="hi",
        sent_at=now,
    )
    outcome = store.route_batch([message], now)
    store.published([o.id for o in outcome.outgoing])
    sent = [(o.subject, ev.decode(o.payload)) for o in outcome.outgoing]
    return [(subject, e) for subject, e in sent if not isinstance(e, ev.SessionPlaced)]


def notices_in(sent: list[tuple[str, ev.Event]]) -> list[str]:
    return [e.text for _, e in sent if isinstance(e, ev.OutboundMessage) and e.kind == "notice"]


def test_a_chat_whose_runner_went_silent_is_told_once_per_absence_and_its_wakes_wait_for_it(
    store: RouterStore,
) -> None:
    store.runners.heard(beat("b"), NOW)
    first = said(store, "t1", 1, NOW + 1)
    assert notices_in(first) == [] and first[0][0] == "clawden.wake.b"

    late = NOW + DEAD_AFTER + 5  # b has not beaten since NOW
    away = said(store, "t1", 2, late)
    assert away[0][0] == "clawden.wake.b" and away[1][0].startswith("clawden.outbound.local.")  # the wake waits
    [notice] = notices_in(away)
    assert "runner b" in notice and "will be answered when it is back" in notice
    assert notices_in(said(store, "t1", 3, late + 60)) == []  # once per absence

    store.runners.heard(beat("b"), late + 100)  # back, and beating
    assert notices_in(said(store, "t1", 4, late + 101)) == []
    assert len(notices_in(said(store, "t1", 5, late + 100 + DEAD_AFTER + 1))) == 1  # a second absence: told again


def test_a_task_run_for_a_session_whose_runner_went_silent_waits_for_it_and_the_chat_is_told_once(
    store: RouterStore,
) -> None:
    store.runners.heard(beat("b"), NOW)
    [(_, wake)] = said(store, "t1", 1, NOW + 1)
    assert isinstance(wake, ev.Wake)
    late = NOW + DEAD_AFTER + 5  # b has not beaten since NOW

    def run(n: int, now: float) -> list[tuple[str, ev.Event]]:
        due = ev.TaskDue(
            id=f"task:t-1:{n}", task_id="t-1", session_id=wake.session_id, agent_group="main", route=wake.route,
            text="water the plants", at=now,
        )  # fmt: skip
        outcome = store.wake_due([due], now)
        store.published([o.id for o in outcome.outgoing])
        return [(o.subject, ev.decode(o.payload)) for o in outcome.outgoing]

    away = run(1, late)
    assert away[0][0] == "clawden.wake.b"  # the run waits for b, as a message does
    [notice] = notices_in(away)
    assert "runner b" in notice
    assert notices_in(run(2, late + 60)) == [] and notices_in(said(store, "t1", 2, late + 61)) == []  # once


# ---- moving the sessions of a runner declared gone (shared storage) ----------------------------------------------


def everything(store: RouterStore, outcome: Any) -> list[tuple[str, str, ev.Event]]:
    store.published([o.id for o in outcome.outgoing])
    return [(o.subject, o.msg_id, ev.decode(o.payload)) for o in outcome.outgoing]


def test_a_new_session_is_recorded_with_epoch_1_before_its_first_wake(store: RouterStore) -> None:
    store.runners.heard(beat("a"), NOW)
    message = ev.InboundMessage(
        route=ev.Route(channel="local", chat_id="t1"),
        message_id="m1",
        sender=ev.Sender(id="local:alice"),
        text="hi",
        sent_at=NOW,
    )
    sent = everything(store, store.route_batch([message], NOW))
    (where, key, placed), (to, _, wake) = sent
    assert isinstance(placed, ev.SessionPlaced) and isinstance(wake, ev.Wake)
    assert (where, placed.runner, placed.epoch, to, wake.epoch) == (
        f"clawden.placement.{wake.session_id}",
        "a",
        1,
        "clawden.wake.a",
        1,
    )
    assert key == f"placed:{wake.session_id}:1"  # the same record, if published twice, is one
    assert everything(store, store.route_batch([message], NOW)) == []  # a redelivery places nothing again


def test_sessions_of_a_gone_runner_move_to_a_live_one_with_the_wakes_it_had_not_taken(store: RouterStore) -> None:
    store.shared_storage = True
    store.runners.heard(beat("a"), NOW)
    first, other = say(store, "t1", 1), say(store, "t2", 2)
    assert runner_of(store, first.session_id) == runner_of(store, other.session_id) == "a"
    later = NOW + DEAD_AFTER + 1
    store.runners.heard(beat("b"), later)  # a stopped beating at NOW; b beats
    assert store.gone_runners(later) == {"a": NOW}
    untaken = {first.session_id: [first]}  # what a's durable had not acked: the first chat's wake
    sent = everything(store, store.move_sessions("a", untaken, later))
    mine = [(to, key, e) for to, key, e in sent if getattr(e, "session_id", "") == first.session_id]
    (to_adopt, _, adopt), (to_again, again_key, again), (to_placed, _, placed) = mine
    assert isinstance(adopt, ev.Adopt) and (to_adopt, adopt.epoch, adopt.from_runner) == ("clawden.wake.b", 2, "a")
    assert adopt.route == first.route and adopt.group == first.group and adopt.destinations == first.destinations
    # the untaken wake again, for b, with the new epoch, under a new dedupe key (the old one is in the window)
    assert to_again == "clawden.wake.b" and again == msgspec.structs.replace(first, epoch=2)
    assert again_key == f"{first.key}@2"
    assert isinstance(placed, ev.SessionPlaced) and (to_placed, placed.runner, placed.epoch) == (
        f"clawden.placement.{first.session_id}",
        "b",
        2,
    )
    assert runner_of(store, first.session_id) == runner_of(store, other.session_id) == "b"  # both moved
    assert store.gone_runners(later) == {}  # nothing left to move
    # the next message goes to b, with the new epoch, and its chat is told nothing about a
    after = said(store, "t1", 3, later + 1)
    assert [(to, e.epoch) for to, e in after if isinstance(e, ev.Wake)] == [("clawden.wake.b", 2)]
    assert notices_in(after) == []


def test_a_session_no_live_runner_may_take_stays_and_its_chat_is_told(store: RouterStore) -> None:
    store.shared_storage = True
    store.runners.heard(beat("a"), NOW)
    admin(store, "groups", op="update", name="main", runner="a")
    wake = say(store, "t1", 1)
    later = NOW + DEAD_AFTER + 1
    store.runners.heard(beat("b"), later)
    assert store.gone_runners(later) == {}  # pinned to a: nothing may move
    assert everything(store, store.move_sessions("a", {}, later)) == []
    assert runner_of(store, wake.session_id) == "a"
    assert len(notices_in(said(store, "t1", 2, later))) == 1  # so it waits, and its chat hears why


def test_without_shared_storage_nothing_moves(store: RouterStore) -> None:
    store.runners.heard(beat("a"), NOW)
    say(store, "t1", 1)
    later = NOW + DEAD_AFTER + 1
    store.runners.heard(beat("b"), later)
    assert len(notices_in(said(store, "t1", 2, later))) == 1  # the chat is told it waits for a


def test_sessions_made_before_placements_were_recorded_are_recorded_once(store: RouterStore) -> None:
    wake = say(store, "t1", 1)
    store.conn.execute("DELETE FROM meta WHERE key = 'placements_recorded'")
    sent = everything(store, store.record_placements(NOW))
    assert [(to, e) for to, _, e in sent] == [
        (
            f"clawden.placement.{wake.session_id}",
            ev.SessionPlaced(session_id=wake.session_id, agent_group="main", runner="home", epoch=1, at=NOW),
        )
    ]
    assert everything(store, store.record_placements(NOW + 1)) == []


# ---- an agent-shared session (one conversation for every chat wired so): what its runner is sent --------------


def runners_read(sent: list[tuple[str, str, ev.Event]]) -> list[ev.Wake | ev.Adopt]:
    """Every wake and adoption as the runner reads its subject: with its own decoder, which refuses a bad route."""
    return [ev.WAKE_DECODER.decode(ev.encode(e)) for to, _, e in sent if to.startswith("clawden.wake.")]


def agent_shared(store: RouterStore, *chats: str) -> None:
    """Terminal chats wired to main as one conversation: their session is `*`/`*`, with no chat of its own."""
    for chat in chats:
        admin(store, "chats", op="create", channel="local", chat_id=chat)
        wiring = {"channel": "local", "chat_id": chat, "agent_group": "main", "session_mode": "agent-shared"}
        admin(store, "wirings", op="create", **wiring)


def test_an_agent_shared_session_moves_with_an_adoption_naming_the_chat_that_spoke_last(store: RouterStore) -> None:
    store.shared_storage = True
    store.runners.heard(beat("a"), NOW)
    agent_shared(store, "t1", "t2")
    first, last = say(store, "t1", 1), say(store, "t2", 2)
    assert first.session_id == last.session_id  # one session for both chats, which has no chat of its own
    later = NOW + DEAD_AFTER + 1
    store.runners.heard(beat("b"), later)
    # taken and not answered yet: the adoption alone tells b where the answer goes
    [adopt] = runners_read(everything(store, store.move_sessions("a", {}, later)))
    assert isinstance(adopt, ev.Adopt) and (adopt.session_id, adopt.epoch) == (last.session_id, 2)
    assert adopt.route == last.route == ev.Route(channel="local", chat_id="t2")


def test_an_agents_answer_into_an_agent_shared_session_names_a_chat_its_runner_can_read(store: RouterStore) -> None:
    agent_shared(store, "t1")
    admin(store, "groups", op="create", name="helper")
    admin(store, "destinations", op="add", agent_group="main", name="helper", channel="agent", chat_id="helper")
    asking = say(store, "t1", 1)
    ask = ev.OutboundMessage(
        id="o1", route=ev.Route(channel="agent", chat_id="helper"), text="how?", session_id=asking.session_id,
        agent_group="main",
    )  # fmt: skip
    [asked] = runners_read(everything(store, store.relay_batch([ask], NOW)))
    answer = ev.OutboundMessage(
        id="o2", route=ev.Route(channel="agent", chat_id="main", thread_id=asking.session_id), text="so",
        session_id=asked.session_id, agent_group="helper",
    )  # fmt: skip
    [answered] = runners_read(everything(store, store.relay_batch([answer], NOW)))
    assert isinstance(answered, ev.Wake) and answered.session_id == asking.session_id
    assert answered.route == asking.route and answered.message.text == "so"


def test_an_agent_shared_session_whose_chat_is_not_known_yet_waits_for_its_next_message_to_move(
    store: RouterStore,
) -> None:
    store.shared_storage = True
    store.runners.heard(beat("a"), NOW)
    agent_shared(store, "t1")
    wake = say(store, "t1", 1)
    store.conn.execute("UPDATE sessions SET last_route = '' WHERE id = ?", (wake.session_id,))  # as made before
    later = NOW + DEAD_AFTER + 1
    store.runners.heard(beat("b"), later)
    assert store.gone_runners(later) == {}  # no chat to name in an adoption: it stays for now
    said(store, "t1", 2, later)  # its wake waits for a, and names the chat
    [adopt] = runners_read(everything(store, store.move_sessions("a", {}, later)))
    assert isinstance(adopt, ev.Adopt) and adopt.route == wake.route


def test_an_agent_shared_session_made_before_the_upgrade_takes_its_chat_from_the_last_message_routed_to_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.db"
    conn, _ = servicedb.open_db(path, [m for m in MIGRATIONS if m[0] < "0012"], foreign_keys=True)
    conn.executescript(
        """INSERT INTO agent_groups (name, folder, created_at) VALUES ('main', 'main', 1);
        INSERT INTO sessions (id, agent_group, channel, chat_id, runner, created_at, last_message_at)
            VALUES ('s-shared', 'main', '*', '*', 'a', 1, 3);
        INSERT INTO routed VALUES ('local:m1', 'main', 's-shared', 'local:m1:main', 'local', 't1', NULL, 'u', 1, 1);
        INSERT INTO routed VALUES ('local:m2', 'main', 's-shared', 'local:m2:main', 'local', 't2', 'x', 'u', 1, 2);"""
    )
    conn.close()
    store = RouterStore.open(path, "home")
    store.shared_storage = True
    later = NOW + DEAD_AFTER + 1
    store.runners.heard(beat("b"), later)
    [adopt] = runners_read(everything(store, store.move_sessions("a", {}, later)))
    assert isinstance(adopt, ev.Adopt) and adopt.route == ev.Route(channel="local", chat_id="t2", thread_id="x")


def test_a_session_whose_adoption_its_runner_could_not_read_stays_and_the_others_move(store: RouterStore) -> None:
    store.shared_storage = True
    store.runners.heard(beat("a"), NOW)
    broken, fine = say(store, "t1", 1), say(store, "t2", 2)
    store.conn.execute("UPDATE sessions SET channel = 'no such channel' WHERE id = ?", (broken.session_id,))
    later = NOW + DEAD_AFTER + 1
    store.runners.heard(beat("b"), later)
    outcome = store.move_sessions("a", {broken.session_id: [broken]}, later)
    assert outcome.counts["moves_refused"] == 1  # said loudly, never sent for b's decoder to refuse
    [adopt] = runners_read(everything(store, outcome))
    assert isinstance(adopt, ev.Adopt) and adopt.session_id == fine.session_id
    assert (runner_of(store, broken.session_id), runner_of(store, fine.session_id)) == ("a", "b")
