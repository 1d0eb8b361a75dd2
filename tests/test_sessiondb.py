"""The session DB pair: seq parity, idempotent writes, the host cursor, acks."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clawden import sessiondb as sdb

ROUTE = sdb.Routing("local", "terminal")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    sdb.ensure_inbound(tmp_path)
    sdb.ensure_outbound(tmp_path)
    sdb.set_routing(tmp_path, ROUTE)
    return tmp_path


def message(key: str, text: str = "hi") -> sdb.InboundMessage:
    return sdb.InboundMessage(id=key, kind="chat", content={"text": text}, routing=ROUTE)


def test_inbound_seqs_are_even_outbound_odd_and_all_increase(folder: Path) -> None:
    a, _ = sdb.insert_inbound(folder, message("a"))
    out = sdb.write_outbound(folder, id="r1", kind="chat", content={"text": "x"}, routing=ROUTE)
    b, _ = sdb.insert_inbound(folder, message("b"), outbound_max_seq=sdb.outbound_max_seq(folder))
    out2 = sdb.write_outbound(folder, id="r2", kind="chat", content={"text": "y"}, routing=ROUTE)
    assert (a, out, b, out2) == (2, 3, 4, 5)


def test_a_replayed_inbound_message_keeps_its_first_seq(folder: Path) -> None:
    assert sdb.insert_inbound(folder, message("a")) == (2, True)
    assert sdb.insert_inbound(folder, message("a", "changed")) == (2, False)
    assert [m.content["text"] for m in sdb.pending_inbound(folder)] == ["hi"]


def test_the_host_reads_each_outbound_row_once_in_order(folder: Path) -> None:
    for i in range(3):
        sdb.write_outbound(folder, id=f"r{i}", kind="chat", content={"text": str(i)}, routing=ROUTE)
    rows = sdb.read_new_outbound(folder)
    assert [r.content["text"] for r in rows] == ["0", "1", "2"]
    sdb.mark_published(folder, rows[1].seq)
    assert [r.content["text"] for r in sdb.read_new_outbound(folder)] == ["2"]
    sdb.mark_published(folder, rows[0].seq)  # a late, older mark never moves the cursor back
    assert [r.content["text"] for r in sdb.read_new_outbound(folder)] == ["2"]


def written_by_hand(folder: Path, seq: Any, *, content: Any, created_at: Any, kind: str = "chat") -> None:
    """A row as the agent can write outbound.db past `write_outbound` (it writes the file as it likes)."""
    with contextlib.closing(sqlite3.connect(folder / sdb.OUTBOUND)) as conn, conn:
        conn.execute(
            "INSERT INTO messages_out (id, seq, created_at, kind, content) VALUES (?, ?, ?, ?, ?)",
            (f"by-hand-{seq}", seq, created_at, kind, content),
        )


@pytest.mark.parametrize(
    ("content", "created_at", "why"),
    [
        ("not json", 1.0, "its content is no JSON"),
        ('{"text": "x"}', "yesterday", "its created_at is no number"),
        ('["x"]', 1.0, "its content is no JSON object"),
        (b"\xff", 1.0, "its content is no JSON"),
    ],
)
def test_a_row_the_host_cannot_read_is_passed_over_and_the_next_one_read(
    folder: Path, content: Any, created_at: Any, why: str
) -> None:
    written_by_hand(folder, 3, content=content, created_at=created_at)
    sdb.write_outbound(folder, id="after", kind="chat", content={"text": "after"}, routing=ROUTE)

    assert [r.content["text"] for r in sdb.read_new_outbound(folder)] == ["after"]
    bad, good = sdb.outbound_to_publish(folder)  # what the runner's pump reads: the bad row's seq, to move past it
    assert isinstance(bad, sdb.Unreadable) and bad.seq == 3 and bad.why.startswith(why)
    assert isinstance(good, sdb.OutboundMessage) and good.seq == 5
    sdb.mark_published(folder, bad.seq)
    assert [r.seq for r in sdb.outbound_to_publish(folder)] == [5]


def test_a_row_whose_seq_is_no_integer_is_no_row(folder: Path) -> None:
    written_by_hand(folder, 3.5, content='{"text": "x"}', created_at=1.0)  # its parity CHECK passes: 3 % 2 = 1
    written_by_hand(folder, "9 lives", content='{"text": "x"}', created_at=1.0)
    sdb.write_outbound(folder, id="after", kind="chat", content={"text": "after"}, routing=ROUTE)

    [row] = sdb.read_new_outbound(folder)
    assert row.content["text"] == "after"
    assert sdb.outbound_max_seq(folder) == row.seq  # what a wake's row is numbered above
    sdb.mark_published(folder, row.seq)
    assert sdb.outbound_to_publish(folder) == []


def test_a_question_row_the_host_cannot_read_leaves_the_others_open(folder: Path) -> None:
    asked = {"request_id": "q-1", "question": "Tea?", "options": ["Yes", "No"], "timeout": 60}
    written_by_hand(folder, 3, content='{"request_id": "q-0"}', created_at="noon", kind="question")
    sdb.write_outbound(folder, id="q-1", kind="question", content=asked, routing=ROUTE)

    assert [q.content["request_id"] for q in sdb.unanswered_questions(folder)] == ["q-1"]


def test_acks_hide_messages_from_the_agent_and_sync_to_the_host(folder: Path) -> None:
    first, _ = sdb.insert_inbound(folder, message("a"))
    second, _ = sdb.insert_inbound(folder, message("b"))
    sdb.ack(folder, [first], "processing")
    assert [m.seq for m in sdb.pending_inbound(folder)] == [second]
    sdb.ack(folder, [first], "completed")
    assert sdb.sync_acks(folder) == {first: "completed"}
    assert sdb.inbound_status(folder) == {first: "completed", second: "pending"}


def test_a_dead_containers_unfinished_messages_are_retried_then_fail(folder: Path) -> None:
    done, _ = sdb.insert_inbound(folder, message("done"))
    claimed, _ = sdb.insert_inbound(folder, message("claimed"))
    sdb.ack(folder, [done], "completed")
    sdb.ack(folder, [claimed], "processing")
    retry, failed = sdb.settle_unfinished(folder, max_tries=2)
    assert ([m.seq for m in retry], failed) == ([claimed], [])
    sdb.clear_processing(folder)  # what the next container does first
    assert [m.seq for m in sdb.pending_inbound(folder)] == [claimed]
    retry, failed = sdb.settle_unfinished(folder, max_tries=2)
    assert (retry, [m.seq for m in failed]) == ([], [claimed])
    assert sdb.inbound_status(folder)[claimed] == "failed"
    assert sdb.pending_inbound(folder) == []


def test_a_claim_the_dead_container_wrote_to_the_chat_for_is_done_and_the_rest_run_again(folder: Path) -> None:
    answered, asked, riding = (sdb.insert_inbound(folder, message(t))[0] for t in ("answered", "asked", "riding"))
    sdb.ack(folder, [answered, asked, riding], "processing")

    def reply(answers: list[int]) -> int:
        row = "reply:2:send:0"
        return sdb.write_outbound(folder, id=row, kind="chat", content={}, routing=ROUTE, answers=answers)

    out = reply([answered])
    assert reply([answered, riding]) == out  # run again after a crash: the row is found, not written twice
    sdb.unclaim(folder, [riding])  # handed back to be shown to the model again: its answer no longer counts

    assert sdb.clear_processing(folder) == [answered]  # what the next container does first

    assert [m.seq for m in sdb.pending_inbound(folder)] == [asked, riding]
    assert len(sdb.read_new_outbound(folder)) == 1
    assert sdb.clear_processing(folder) == []  # the record went with the claims it settled


def test_a_session_file_from_before_the_answered_record_gets_it_from_its_next_container(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    sdb.ensure_inbound(folder)
    path = sdb.ensure_outbound(folder)
    with sdb.opened(path) as conn:
        conn.execute("DROP TABLE answered")  # as a file made by an older Clawden has it
    sdb.ensure_outbound(folder)
    seq, _ = sdb.insert_inbound(folder, message("hello"))
    sdb.ack(folder, [seq], "processing")
    sdb.write_outbound(folder, id="r", kind="chat", content={}, routing=ROUTE, answers=[seq])
    assert sdb.clear_processing(folder) == [seq]


def test_the_agent_takes_its_oldest_messages_first(folder: Path) -> None:
    seqs = [sdb.insert_inbound(folder, message(str(i)))[0] for i in range(5)]
    assert [m.seq for m in sdb.pending_inbound(folder, limit=3)] == seqs[:3]


def test_a_db_from_a_newer_clawden_is_refused(folder: Path) -> None:
    with sdb.opened(folder / sdb.INBOUND) as conn:
        conn.execute(f"PRAGMA user_version = {sdb.SCHEMA_VERSION + 1}")
    with pytest.raises(sdb.SchemaError):
        sdb.ensure_inbound(folder)


def test_session_state_round_trips(folder: Path) -> None:
    sdb.set_state(folder, "claude_session_id", "abc")
    assert sdb.get_state(folder, "claude_session_id") == "abc"
    sdb.set_state(folder, "claude_session_id", None)
    assert sdb.get_state(folder, "claude_session_id") is None


def test_a_writer_killed_mid_transaction_leaves_nothing_a_reader_cannot_read(folder: Path) -> None:
    """The runner SIGKILLed while it writes inbound.db leaves a hot journal, which only a read-write
    connection may roll back; the restarted runner reads before it writes, so its read must recover it."""
    sdb.insert_inbound(folder, message("before"))
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(folder / sdb.INBOUND)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "mid-transaction"
    writer.kill()
    writer.wait()
    writer.stdout.close()
    assert (folder / f"{sdb.INBOUND}-journal").stat().st_size > 0  # hot: its writer is gone

    assert sdb.has_unanswered(folder)  # "attempt to write a readonly database" before the fix
    assert list(sdb.inbound_status(folder).values()) == ["pending"]  # the half-written row rolled back
    assert not (folder / f"{sdb.INBOUND}-journal").exists()


# A writer that has changed pages of the file itself (its cache spilled) when it is killed: the journal
# holds the only copy of what they were.
KILLED_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode = DELETE")
conn.execute("PRAGMA cache_size = 1")
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE messages_in SET status = 'completed'")
conn.execute("CREATE TABLE filler (x BLOB)")
conn.execute("INSERT INTO filler SELECT randomblob(4000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL"
             " SELECT i + 1 FROM n WHERE i < 200) SELECT i FROM n)")
print("mid-transaction", flush=True)
time.sleep(60)
"""


# --- delivery receipts: the strongest word per message ---------------------------------------------

SENT = sdb.Delivery(3, "wamid.1", "delivered", None, 100.0)
READ = sdb.Delivery(3, "wamid.1", "delivered", None, 200.0, read_at=200.0)
FAILED = sdb.Delivery(3, None, "failed", "undeliverable", 300.0)


@pytest.mark.parametrize(
    ("old", "new", "state", "delivered_at", "read_at", "platform_id"),
    [
        (None, SENT, "delivered", 100.0, None, "wamid.1"),  # the first word
        (None, READ, "read", 200.0, 200.0, "wamid.1"),  # read as it arrived: Meta sends no "delivered" then
        (SENT, READ, "read", 100.0, 200.0, "wamid.1"),  # read upgrades delivered, which keeps its time
        (READ, SENT, "read", 200.0, 200.0, "wamid.1"),  # a late "delivered" never un-reads it
        (READ, sdb.Delivery(3, "wamid.1", "delivered", None, 250.0, 250.0), "read", 200.0, 200.0, "wamid.1"),
        (SENT, FAILED, "failed", 300.0, None, "wamid.1"),  # accepted, then Meta's failed status: the id is kept
        (READ, FAILED, "failed", 300.0, None, "wamid.1"),
        (FAILED, SENT, "failed", 300.0, None, None),  # failed stays failed
        (FAILED, READ, "failed", 300.0, None, None),
        (sdb.Delivery(3, None, "delivered", None, 100.0), READ, "read", 100.0, 200.0, "wamid.1"),  # id learned
    ],
)
def test_receipts_merge_to_the_strongest_state_in_any_order(
    old: sdb.Delivery | None,
    new: sdb.Delivery,
    state: str,
    delivered_at: float,
    read_at: float | None,
    platform_id: str,
) -> None:
    merged = sdb.merge_delivery(old, new)
    assert (merged.state, merged.delivered_at, merged.read_at, merged.platform_message_id) == (
        state,
        delivered_at,
        read_at,
        platform_id,
    )


def test_a_read_receipt_is_kept_and_a_later_delivered_one_does_not_downgrade_it(folder: Path) -> None:
    assert sdb.delivery(folder, 3) is None
    assert sdb.record_delivery(folder, 3, platform_message_id="wamid.1").state == "delivered"
    assert sdb.record_delivery(folder, 3, platform_message_id="wamid.1", read=True).state == "read"
    assert sdb.record_delivery(folder, 3, platform_message_id="wamid.1").state == "read"
    known = sdb.delivery(folder, 3)
    assert known is not None and known.state == "read" and known.read_at is not None
    assert sdb.platform_message_id(folder, 3) == "wamid.1"  # a read message can still be edited or reacted to
    assert sdb.record_delivery(folder, 5, platform_message_id=None, error="blocked").state == "failed"
    assert sdb.record_delivery(folder, 5, platform_message_id="x", read=True).state == "failed"
    assert sdb.failed_deliveries(folder) == [(5, "blocked")]


V2_DELIVERED = """
CREATE TABLE delivered (
    out_seq INTEGER PRIMARY KEY,
    platform_message_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('delivered', 'failed')),
    error TEXT,
    delivered_at REAL NOT NULL
);
INSERT INTO delivered VALUES (3, 'wamid.old', 'delivered', NULL, 1.0);
PRAGMA user_version = 2;
"""


def test_a_session_file_from_before_read_receipts_is_migrated_by_its_next_receipt(tmp_path: Path) -> None:
    """A runner upgraded under a live session gets a receipt before the session's next wake: the receipt
    itself brings the file up to date, keeps what it held, and a reader that opened the file before still
    reads it afterwards."""
    with sdb.opened(tmp_path / sdb.INBOUND) as conn:
        conn.executescript(V2_DELIVERED)
    with sdb.opened(tmp_path / sdb.INBOUND, readonly=True) as reader:  # the container, reading meanwhile
        assert reader.execute("SELECT status FROM delivered WHERE out_seq = 3").fetchone()[0] == "delivered"
        assert sdb.record_delivery(tmp_path, 3, platform_message_id="wamid.old", read=True).state == "read"
        assert reader.execute("SELECT read_at FROM delivered WHERE out_seq = 3").fetchone()[0] is not None
    with sdb.opened(tmp_path / sdb.INBOUND, readonly=True) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sdb.SCHEMA_VERSION
    known = sdb.delivery(tmp_path, 3)
    assert known is not None and (known.delivered_at, known.state) == (1.0, "read")
    sdb.ensure_inbound(tmp_path)  # again: nothing to do, nothing broken
    assert sdb.platform_message_id(tmp_path, 3) == "wamid.old"
