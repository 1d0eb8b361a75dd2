"""The session folder's placement fence (issue 25 item 3): the claim decision and the write check as tables, and
every write of the pair refused, with nothing written, once a later placement holds the folder."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clawden import sessiondb as sdb
from clawden.sessiondb import Fence

ROUTE = sdb.Routing("local", "terminal")


@pytest.fixture(autouse=True)
def unfenced_after() -> Iterator[None]:
    yield
    sdb.write_as(None)
    sdb.on_fenced = None


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    sdb.ensure_inbound(tmp_path)
    sdb.ensure_outbound(tmp_path)
    sdb.set_routing(tmp_path, ROUTE)
    return tmp_path


@pytest.mark.parametrize(
    ("fence", "epoch", "runner", "claim"),
    [
        (None, 1, "a", "take"),  # a new session, or an older folder with no fence yet
        (Fence(1, "a"), 1, "a", "hold"),  # the next wake of the same placement
        (Fence(1, "a"), 2, "b", "take"),  # moved to b
        (Fence(1, "a"), 2, "a", "take"),  # moved back to a (a later epoch, the same runner)
        (Fence(2, "b"), 1, "a", "fenced"),  # a stale wake on the old runner
        (Fence(2, "b"), 2, "a", "fenced"),  # the same epoch, another runner
        (Fence(3, "a"), 2, "a", "fenced"),  # an older wake of this runner: it was moved away and back since
        (None, 0, "a", "hold"),  # the scheduler's wake of an unfenced folder
        (Fence(4, "a"), 0, "a", "hold"),  # ... of a folder this runner holds
        (Fence(4, "b"), 0, "a", "fenced"),  # ... of a folder moved to b
    ],
)
def test_the_claim_takes_holds_or_finds_the_folder_fenced(
    fence: Fence | None, epoch: int, runner: str, claim: sdb.Claim
) -> None:
    assert sdb.claim_decision(fence, epoch, runner) == claim


@pytest.mark.parametrize(
    ("fence", "held", "ok"),
    [
        (None, Fence(1, "a"), True),  # unfenced folder
        (Fence(1, "a"), Fence(1, "a"), True),
        (Fence(2, "b"), Fence(1, "a"), False),
        (Fence(2, "a"), Fence(1, "a"), False),  # moved away and back: the older holder (a stale container) stops
        (Fence(1, "a"), Fence(2, "a"), True),  # the fence is only ever raised by the claim that set `held`
        (Fence(5, "a"), Fence(0, "a"), True),  # a container started before its runner knew epochs
        (Fence(5, "b"), Fence(0, "a"), False),
    ],
)
def test_a_writer_may_write_only_while_the_fence_names_no_later_placement(
    fence: Fence | None, held: Fence, ok: bool
) -> None:
    assert sdb.may_write(fence, held) is ok


def test_a_claim_writes_the_fence_once_and_a_stale_claim_is_refused_naming_the_new_holder(folder: Path) -> None:
    sdb.write_as("a")
    assert sdb.fence(folder) is None  # an older folder: unfenced
    assert sdb.claim(folder, 1, "a") == Fence(1, "a")
    assert sdb.claim(folder, 1, "a") == Fence(1, "a")
    assert sdb.claim(folder, 2, "b") == Fence(2, "b")
    with pytest.raises(sdb.Fenced, match="moved to runner b at epoch 2") as refused:
        sdb.claim(folder, 1, "a")
    assert refused.value.fence == Fence(2, "b") and sdb.fence(folder) == Fence(2, "b")


def test_an_unknown_epoch_holds_the_fence_this_runner_has(folder: Path) -> None:
    sdb.write_as("a")
    sdb.claim(folder, 3, "a")
    sdb.write_as("a")  # a restart: what runner.db said is not held yet
    assert sdb.claim(folder, 0, "a") == Fence(3, "a") and sdb.held(folder) == Fence(3, "a")


def test_an_older_session_folder_without_the_table_is_unfenced_and_a_claim_adds_it(tmp_path: Path) -> None:
    sdb.ensure_inbound(tmp_path)
    with sdb.opened(tmp_path / sdb.INBOUND) as conn:
        conn.execute("DROP TABLE fence")  # as a folder made before fencing
    sdb.write_as("a")
    sdb.insert_inbound(tmp_path, sdb.InboundMessage(id="m", kind="chat", content={}, routing=ROUTE))
    assert sdb.fence(tmp_path) is None
    assert sdb.claim(tmp_path, 1, "a") == Fence(1, "a")


def _snapshot(folder: Path) -> dict[str, list[tuple[object, ...]]]:
    tables = {
        sdb.INBOUND: ("messages_in", "delivered", "destinations", "session_routing", "host_cursor", "fence"),
        sdb.OUTBOUND: ("messages_out", "processing_ack", "session_state", "turn_cost"),
    }
    seen: dict[str, list[tuple[object, ...]]] = {}
    for name, wanted in tables.items():
        with sdb.opened(folder / name, readonly=True) as conn:
            for table in wanted:
                seen[table] = [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
    return seen


WRITES: dict[str, Callable[[Path], object]] = {
    "insert_inbound": lambda f: sdb.insert_inbound(f, sdb.InboundMessage("x", "chat", {}, ROUTE)),
    "set_routing": lambda f: sdb.set_routing(f, sdb.Routing("local", "elsewhere")),
    "set_destinations": lambda f: sdb.set_destinations(f, {"d": ("D", ROUTE)}),
    "record_delivery": lambda f: sdb.record_delivery(f, 3, platform_message_id="p"),
    "mark_published": lambda f: sdb.mark_published(f, 3),
    "sync_acks": lambda f: sdb.sync_acks(f),
    "settle_unfinished": lambda f: sdb.settle_unfinished(f, 3),
    "respond": lambda f: sdb.respond(f, "q", {"answer": "yes"}),
    "write_outbound": lambda f: sdb.write_outbound(f, id="late", kind="chat", content={"text": "x"}, routing=ROUTE),
    "ack": lambda f: sdb.ack(f, [4], "processing"),
    "unclaim": lambda f: sdb.unclaim(f, [2]),
    "clear_processing": lambda f: sdb.clear_processing(f),
    "record_cost": lambda f: sdb.record_cost(f, [2], usd=1.0, input_tokens=1, output_tokens=1),
    "set_state": lambda f: sdb.set_state(f, "k", "v"),
}


def _write_some(folder: Path) -> None:
    """Rows for every write to act on: two messages, an ack, a reply, a state."""
    sdb.insert_inbound(folder, sdb.InboundMessage(id="m", kind="chat", content={"text": "hi"}, routing=ROUTE))
    sdb.insert_inbound(folder, sdb.InboundMessage(id="n", kind="chat", content={"text": "hi"}, routing=ROUTE))
    sdb.ack(folder, [2], "completed")
    sdb.write_outbound(folder, id="r", kind="chat", content={"text": "hello"}, routing=ROUTE)
    sdb.set_state(folder, "k", "before")


@pytest.mark.parametrize("write", WRITES)
def test_every_write_of_a_writer_the_session_was_moved_from_is_refused_and_writes_nothing(
    folder: Path, write: str
) -> None:
    sdb.write_as("a")
    sdb.claim(folder, 1, "a")
    _write_some(folder)
    sdb.write_as("b")  # runner b adopts the session (the same folder, on shared storage)
    sdb.claim(folder, 2, "b")
    before = _snapshot(folder)
    told: list[sdb.Fenced] = []
    sdb.write_as("a")  # runner a (or its container) comes back, holding epoch 1
    sdb.hold(folder, 1)
    sdb.on_fenced = told.append
    with pytest.raises(sdb.Fenced, match="moved to runner b at epoch 2"):
        WRITES[write](folder)
    assert _snapshot(folder) == before
    assert [f.fence for f in told] == [Fence(2, "b")]
    with pytest.raises(sdb.Fenced):
        sdb.check_fence(folder)


@pytest.mark.parametrize("write", WRITES)
def test_the_runner_itself_writes_on_under_its_own_later_claim_where_its_older_container_is_refused(
    folder: Path, write: str
) -> None:
    """A poll or a pump in flight while the session moved away and back read the epoch held before the runner's own
    later claim: the runner holds the folder at the fence's epoch and writes on. Its container of the older epoch
    (the same runner's name, without `follows_own`) is refused, as is the runner itself once another one holds it."""
    sdb.write_as("a")
    sdb.claim(folder, 3, "a")  # moved to b at 2, and back to a at 3
    _write_some(folder)
    sdb.write_as("a")  # the container of epoch 1 still runs
    sdb.hold(folder, 1)
    with pytest.raises(sdb.Fenced, match="moved to runner a at epoch 3"):
        WRITES[write](folder)
    sdb.write_as("a", follows_own=True)  # the runner, with a check in flight from before its claim
    sdb.hold(folder, 1)
    WRITES[write](folder)
    assert sdb.held(folder) == Fence(3, "a")
    sdb.write_as("b")
    sdb.claim(folder, 4, "b")
    sdb.write_as("a", follows_own=True)
    sdb.hold(folder, 3)
    with pytest.raises(sdb.Fenced, match="moved to runner b at epoch 4"):
        WRITES[write](folder)


def test_the_new_holder_and_an_unfenced_process_keep_writing(folder: Path) -> None:
    sdb.write_as("b")
    sdb.claim(folder, 2, "b")
    for write in WRITES.values():
        write(folder)  # none refused
    sdb.write_as(None)
    sdb.set_state(folder, "k", "unfenced")  # an older runner, a test: no check at all
    assert sdb.get_state(folder, "k") == "unfenced"


def test_a_write_holding_its_check_keeps_a_claim_waiting_until_it_commits(folder: Path) -> None:
    """The check and the write are one transaction: the claim that fences the folder cannot slip in between."""
    sdb.write_as("a")
    sdb.claim(folder, 1, "a")
    out = sqlite3.connect(folder / sdb.OUTBOUND, isolation_level=None)
    out.execute("ATTACH DATABASE ? AS inbound", (f"file:{folder / sdb.INBOUND}?mode=ro",))
    out.execute("BEGIN IMMEDIATE")
    assert out.execute("SELECT epoch, runner FROM inbound.fence").fetchone() == (1, "a")  # as `_writing` reads it
    # A claim commits with an exclusive lock on inbound.db: it cannot have one while the write is open.
    claimer = sqlite3.connect(folder / sdb.INBOUND, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        claimer.execute("BEGIN EXCLUSIVE")
    claimer.close()
    out.execute("INSERT INTO session_state VALUES ('k', 'written under epoch 1', 0)")
    out.execute("COMMIT")
    out.close()
    sdb.claim(folder, 2, "b")
    assert sdb.fence(folder) == Fence(2, "b") and sdb.get_state(folder, "k") == "written under epoch 1"
    with pytest.raises(sdb.Fenced):
        sdb.set_state(folder, "k", "after the move")
