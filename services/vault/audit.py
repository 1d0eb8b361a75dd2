"""The audit trail: one record per request (who, what, where, which rule, what came of it), and one per burst of
connections refused over their group's cap (with how many: a record each would let a flood fill the disk).

Records carry names and counts only, never a header value, a query string or a body, so never a
credential. The gateway hands them to a sink on its hot path; ``AuditLog`` buffers them and a
background task writes batches to ``vault.db`` and publishes each as an ``AuditEvent``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from clawden.bus import events as ev
from clawden.runtime import sleep_unless_stopping

log = logging.getLogger("clawden.vault.audit")

FLUSH_INTERVAL = 0.5
BATCH = 500
MAX_BUFFER = 20_000


@dataclass(frozen=True, slots=True)
class AuditRecord:
    agent_group: str
    method: str
    host: str
    path: str  # never the query string: some APIs carry keys there
    status: int  # what the agent got; 0 when it got nothing (it left, or TLS failed)
    duration_ms: float
    decision: str = "allowed"
    rule: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    injected: tuple[str, ...] = ()  # names of the secrets added
    approval_id: str = ""
    at: float = 0.0
    count: int = 1  # what it stands for: a request, or a burst of refused connections (from `at`, that long)

    def event(self) -> ev.AuditEvent:
        what = " ".join(f"{self.agent_group} {self.method} {self.host}{self.path}".split())  # a burst has no request
        times = f" x{self.count}" if self.count != 1 else ""
        return ev.AuditEvent(
            service="vault",
            kind="request",
            at=self.at,
            summary=f"{what} -> {self.status} {self.decision}{times}",
            fields={
                "agent_group": self.agent_group,
                "method": self.method,
                "host": self.host,
                "path": self.path,
                "status": str(self.status),
                "decision": self.decision,
                "rule": self.rule,
                "bytes_in": str(self.bytes_in),
                "bytes_out": str(self.bytes_out),
                "duration_ms": f"{self.duration_ms:.1f}",
                "injected": ",".join(self.injected),
                "approval_id": self.approval_id,
                "count": str(self.count),
            },
        )


AuditSink = Callable[[AuditRecord], None]


def log_audit(record: AuditRecord) -> None:
    """A sink for tests and tools: one log line per request."""
    log.info("audit %s", record.event().summary)


class AuditLog:
    """The service's sink: buffer now, write and publish in batches off the request path."""

    def __init__(
        self,
        write: Callable[[list[AuditRecord]], Awaitable[None]],
        publish: Callable[[AuditRecord], Awaitable[None]] | None = None,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self._write = write
        self._publish = publish
        self._interval = flush_interval
        self._buffer: deque[AuditRecord] = deque()
        self._wake = asyncio.Event()
        self.stats = {"written": 0, "dropped": 0, "buffered": 0}

    def __call__(self, record: AuditRecord) -> None:
        if len(self._buffer) >= MAX_BUFFER:
            self._buffer.popleft()
            dropped = self.stats["dropped"] = self.stats["dropped"] + 1
            if dropped in (1, 100) or dropped % 10_000 == 0:
                log.error("audit buffer full: %d records dropped (is vault.db writable?)", dropped)
        self._buffer.append(record)
        if len(self._buffer) >= BATCH:
            self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush every interval (or when a batch is full) until ``stopping``, then once more."""
        while await sleep_unless_stopping(stopping, self._interval, self._wake):
            self._wake.clear()
            await self.flush()
        await self.flush()

    async def flush(self) -> None:
        self.stats["buffered"] = len(self._buffer)
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(BATCH, len(self._buffer)))]
            try:
                await self._write(batch)  # `Store.write_audit`, on the store's thread
                self.stats["written"] += len(batch)
            except Exception:
                log.exception("writing %d audit records failed; they are kept for the next try", len(batch))
                self._buffer.extendleft(reversed(batch))
                self.stats["buffered"] = len(self._buffer)
                return
            if self._publish is not None:
                for record in batch:
                    try:
                        await self._publish(record)
                    except Exception as exc:  # the bus is down: the rows are safe in vault.db
                        log.warning("publishing audit events failed: %s", exc)
                        break
