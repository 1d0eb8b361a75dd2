"""The outbox: the events a store step causes are written in that step's own transaction and published
after it commits, so a crash between the two loses nothing; each carries its dedupe key (`Nats-Msg-Id`),
so publishing one twice is a no-op. Rows of one lane (a session's wakes, a chat's replies) go out in
order; lanes go out side by side."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import Header

from clawden import servicedb
from clawden.bus import events as ev

# The table, for a store's migrations.
SCHEMA = """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        lane TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        payload BLOB NOT NULL
    )"""
BATCH = 2000  # rows read per step
PUBLISH_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One outbox row."""

    id: int
    lane: str
    subject: str
    msg_id: str
    payload: bytes


@dataclass
class Flushed:
    """What a publish did: how many rows went out (and left the outbox), and why the others did not."""

    sent: int = 0
    errors: list[BaseException] = field(default_factory=list)


class OutboxStore(servicedb.Store):
    """A store whose migrations create the outbox table (`SCHEMA`): its steps `emit`, its service
    publishes what they queued (`publish`, `flush`)."""

    def emit(self, subject: str, msg_id: str, event: ev.Event, lane: str = "") -> None:
        """Queue `event`, inside the step's transaction, so it is published only if the step commits."""
        self.conn.execute(
            "INSERT INTO outbox (lane, subject, msg_id, payload) VALUES (?, ?, ?, ?)",
            (lane, subject, msg_id, ev.encode(event)),
        )

    def outgoing(self, limit: int = BATCH) -> list[Outgoing]:
        return [
            Outgoing(int(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4]))
            for r in self.conn.execute(
                "SELECT id, lane, subject, msg_id, payload FROM outbox ORDER BY id LIMIT ?", (limit,)
            )
        ]

    def published(self, ids: Sequence[int]) -> None:
        if ids:
            with self._tx() as db:
                db.executemany("DELETE FROM outbox WHERE id = ?", ((i,) for i in ids))


async def publish(
    js: JetStreamContext, store: OutboxStore, rows: Sequence[Outgoing], *, timeout: float = PUBLISH_TIMEOUT
) -> Flushed:
    """Publish `rows` (read from a started `store`): each lane in order, stopping at its first failure,
    the lanes side by side. The rows that went out leave the outbox."""
    lanes: dict[str, list[Outgoing]] = {}
    for row in rows:
        lanes.setdefault(row.lane, []).append(row)
    sent: list[int] = []

    async def lane(queued: list[Outgoing]) -> None:
        for row in queued:
            await js.publish(row.subject, row.payload, timeout=timeout, headers={Header.MSG_ID: row.msg_id})
            sent.append(row.id)

    results = await asyncio.gather(*(lane(queued) for queued in lanes.values()), return_exceptions=True)
    await store.run(store.published, sent)
    return Flushed(len(sent), [r for r in results if isinstance(r, BaseException)])


async def flush(js: JetStreamContext, store: OutboxStore, *, timeout: float = PUBLISH_TIMEOUT) -> Flushed:
    """Publish everything the outbox holds, until it is empty or a publish fails."""
    done = Flushed()
    while rows := await store.run(store.outgoing):
        step = await publish(js, store, rows, timeout=timeout)
        done.sent += step.sent
        done.errors += step.errors
        if step.errors:
            break
    return done
