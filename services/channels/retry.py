"""What a failed platform call means, and when to try it again: the pure part of every bridge's retries."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

# rate_limited, transient: the platform did not act; try again (after `retry_after` if it said so). A transient
#          failure with a 4xx `code` is a refusal an operator can fix (a revoked token, a missing scope; an SMTP
#          "try later"): tried again, but only until the deadline, since it may never pass by itself.
# permanent: trying again cannot help (bad request, blocked bot, no such chat).
# unknown: the request may have reached the platform and its answer was lost; repeating a send
#          could post it twice, so a bridge repeats it only where the platform dedupes (idempotent_sends)
#          or as often as it declares a second copy the lesser harm (Capabilities.ambiguous_resends).
Kind = Literal["rate_limited", "transient", "permanent", "unknown"]


class PlatformError(Exception):
    """A platform call that failed, classified for the retry policy. The message is for people."""

    def __init__(
        self, description: str, kind: Kind, *, code: int = 0, retry_after: float | None = None, connection: bool = False
    ) -> None:
        super().__init__(description)
        self.description = description
        self.kind: Kind = kind
        self.code = code
        self.retry_after = retry_after
        # The connection failed, not the platform: with kind transient the request never left
        # (connect, TLS, a full pool); with kind unknown it left and the answer never came.
        self.connection = connection

    @property
    def retryable(self) -> bool:
        return self.kind in ("rate_limited", "transient")

    @property
    def outage(self) -> bool:
        """The platform did not act and did not refuse: the request never left, the platform was unreachable or
        answered 5xx, or it asked for time (a rate limit). Such a failure is waited out however long it lasts."""
        return self.kind == "rate_limited" or (self.kind == "transient" and not 400 <= self.code < 500)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, overridden by the platform's own `retry_after`; an outage is waited out, any
    other failure worth another try is tried only within a deadline."""

    first: float = 1.0
    factor: float = 2.0
    ceiling: float = 60.0
    # How long one outbound event may keep failing with a refusal (a bad token) or lost answers before it is
    # reported as failed (or unconfirmed); an outage (`PlatformError.outage`) has no deadline.
    deadline: float = 600.0
    # A wait at least this long is worth a non-final receipt, so the agent knows it is delayed.
    notice_after: float = 10.0

    def delay(self, attempt: int, retry_after: float | None, jitter: float | None = None) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt counts from 0)."""
        if retry_after is not None and retry_after >= 0:
            # The platform's word wins; a little extra keeps us from landing on the boundary.
            return retry_after + 0.1 * (random.random() if jitter is None else jitter)
        base = min(self.ceiling, self.first * self.factor**attempt)
        # Full jitter within the upper half: many bridges restarting together do not stampede.
        return base * (0.5 + 0.5 * (random.random() if jitter is None else jitter))

    def gives_up(self, elapsed: float, next_delay: float, *, outage: bool = False) -> bool:
        """Whether to stop trying. Never during an outage: the reply then waits for the platform, held in its
        lane (JetStream keeps it), instead of being settled as failed while the request never reached anyone."""
        return not outage and elapsed + next_delay > self.deadline
