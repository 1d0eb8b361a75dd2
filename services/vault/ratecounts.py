"""Rate-limit counts: kept in memory for the gateway's hot path, written behind to ``vault.db``.

A daily cap that a restart forgave would be no cap. The counts in memory are the truth while the
vault runs; the service loads the open windows' counts at start, and a background task writes the
counts that changed every second and once more at shutdown, so a crash forgets at most the charges
of the last second. A count only grows within its window, so writes keep the larger of the stored
and the written count and may land in any order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from clawden.runtime import sleep_unless_stopping
from services.vault.policy import RateKey

log = logging.getLogger("clawden.vault.rates")

FLUSH_INTERVAL = 1.0
MAX_KEYS = 4096  # above this, keys of windows that ended are dropped from memory

# (changed counts, now); prunes ended windows. The service's runs `Store.save_rate_counts` on the store's thread.
Saver = Callable[[list[tuple[RateKey, int]], float], Awaitable[None]]


class RateCounts:
    """The gateway's counters; ``save`` (``Store.save_rate_counts``) makes them outlive the process."""

    def __init__(
        self, save: Saver | None = None, flush_interval: float = FLUSH_INTERVAL, clock: Callable[[], float] = time.time
    ) -> None:
        self.counts: dict[RateKey, int] = {}
        self._dirty: set[RateKey] = set()
        self._save = save
        self._interval = flush_interval
        self._clock = clock
        self.stats = {"flushes": 0, "failures": 0}

    def load(self, counts: Iterable[tuple[RateKey, int]]) -> None:
        for key, count in counts:
            self.counts[key] = max(count, self.counts.get(key, 0))

    def charge(self, keys: Iterable[RateKey], now: float) -> None:
        """Count a request that goes ahead against each of its rules' current windows."""
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + 1
            if self._save is not None:
                self._dirty.add(key)
        if len(self.counts) > MAX_KEYS:
            for key in [k for k in self.counts if k.ends <= now]:
                del self.counts[key]
                self._dirty.discard(key)

    @property
    def pending(self) -> int:
        """Counts changed since the last flush: what a crash now would forget."""
        return len(self._dirty)

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush every interval until ``stopping``, then once more."""
        while await sleep_unless_stopping(stopping, self._interval):
            await self.flush()
        await self.flush()

    async def flush(self) -> None:
        if self._save is None or not self._dirty:
            return
        # Taken on the event loop, where charges happen; the store's thread gets a snapshot, never the dict.
        batch = [(key, self.counts[key]) for key in self._dirty if key in self.counts]
        self._dirty.clear()
        saved = False
        try:
            await self._save(batch, self._clock())
            saved = True
            self.stats["flushes"] += 1
        except Exception:
            self.stats["failures"] += 1
            log.exception("writing %d rate-limit counts failed; they are kept for the next try", len(batch))
        finally:
            if not saved:  # failed or cancelled: written again later (a repeat is harmless)
                self._dirty.update(key for key, _ in batch)
