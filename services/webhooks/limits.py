"""A request rate per source: a token bucket per address, fed the clock by its caller (pure, so tested as
tables). Memory stays bounded: a source idle long enough to have a full bucket is forgotten."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_SOURCES = 10_000  # beyond it the fullest buckets go first; a flood of addresses cannot grow memory


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimit:
    rate: float  # tokens per second
    burst: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, source: str, now: float) -> float:
        """0.0 when `source` may make a request now (one token spent), else the seconds until it may."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= MAX_SOURCES:
                self._forget_idle(now)
            bucket = self._buckets[source] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate if self.rate > 0 else float("inf")

    def _forget_idle(self, now: float) -> None:
        full = self.burst / self.rate if self.rate > 0 else float("inf")
        for source in [s for s, b in self._buckets.items() if now - b.at >= full]:
            del self._buckets[source]
        while len(self._buckets) >= MAX_SOURCES:  # all busy: drop the oldest
            del self._buckets[min(self._buckets, key=lambda s: self._buckets[s].at)]

    def __len__(self) -> int:
        return len(self._buckets)
