"""How long to wait before trying again: the one exponential backoff every retry in Clawden uses (a
redelivered message, a container that failed to start, a child process that died)."""

from __future__ import annotations


def backoff(attempt: int, *, base: float = 1.0, cap: float) -> float:
    """Seconds to wait after `attempt` failures: `base` doubled `attempt` times, never more than `cap`."""
    return min(cap, base * 2.0 ** min(max(attempt, 0), 64))  # 2^64 is past any cap, and no float overflow
