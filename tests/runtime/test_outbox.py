"""The kernel's outbox on a real SQLite file and a real nats-server: queued with the step that causes it,
published after, a lane in order, and once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from clawden import outbox
from clawden.bus import events as ev

STREAM, SUBJECTS = "OUTBOX_TEST", "outbox.test.>"


class Store(outbox.OutboxStore):
    migrations = [("0001_outbox", outbox.SCHEMA)]

    def decide(self, lane: str, *ids: str, subject: str = "outbox.test.ok") -> None:
        with self._tx():
            for i in ids:
                self.emit(subject, f"msg-{i}", ev.ApprovalDecision(id=i, decision="denied"), lane=lane)

    def decide_then_fail(self, i: str) -> None:
        with self._tx():
            self.emit("outbox.test.ok", f"msg-{i}", ev.ApprovalDecision(id=i, decision="denied"))
            raise RuntimeError("the step failed")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.start(tmp_path / "service.db")
    yield s
    await s.stop()


async def published(nc: Client) -> list[str]:
    """The decision ids in the stream, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(STREAM)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        decision = ev.decode((await js.get_msg(STREAM, seq)).data or b"")
        assert isinstance(decision, ev.ApprovalDecision)
        found.append(decision.id)
    return found


async def test_a_flush_publishes_each_lane_in_order_and_empties_the_outbox(nc: Client, store: Store) -> None:
    await nc.jetstream().add_stream(name=STREAM, subjects=[SUBJECTS])
    await store.run(store.decide, "session-1", "a1", "a2", "a3")
    await store.run(store.decide, "session-2", "b1", "b2")
    done = await outbox.flush(nc.jetstream(), store)
    assert (done.sent, done.errors) == (5, [])
    stream = await published(nc)
    assert [i for i in stream if i.startswith("a")] == ["a1", "a2", "a3"]
    assert [i for i in stream if i.startswith("b")] == ["b1", "b2"]
    assert await store.run(store.outgoing) == []


async def test_rows_published_again_after_a_crash_reach_the_stream_once(nc: Client, store: Store) -> None:
    await nc.jetstream().add_stream(name=STREAM, subjects=[SUBJECTS])
    await store.run(store.decide, "", "x1", "x2")
    rows = await store.run(store.outgoing)
    await outbox.publish(nc.jetstream(), store, rows)
    # As if the process died after publishing and before deleting: the same rows are queued again.
    await store.run(store.decide, "", "x1", "x2")
    assert (await outbox.flush(nc.jetstream(), store)).sent == 2
    assert await published(nc) == ["x1", "x2"]


async def test_a_failed_publish_stops_its_lane_keeps_the_rest_and_other_lanes_go_on(nc: Client, store: Store) -> None:
    await nc.jetstream().add_stream(name=STREAM, subjects=[SUBJECTS])
    await store.run(store.decide, "stuck", "s1")
    await store.run(store.decide, "stuck", "s2", subject="nowhere.no.stream")  # no stream takes it
    await store.run(store.decide, "stuck", "s3")
    await store.run(store.decide, "free", "f1", "f2")
    done = await outbox.flush(nc.jetstream(), store, timeout=1.0)
    assert done.sent == 3 and len(done.errors) == 1
    assert sorted(await published(nc)) == ["f1", "f2", "s1"]
    assert [r.msg_id for r in await store.run(store.outgoing)] == ["msg-s2", "msg-s3"], "kept, in order"


async def test_a_step_that_fails_queues_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError, match="the step failed"):
        await store.run(store.decide_then_fail, "lost")
    await store.run(store.decide, "", "kept")
    assert [r.msg_id for r in await store.run(store.outgoing)] == ["msg-kept"]
