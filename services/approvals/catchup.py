"""When a start has caught up with the clicks left on the bus: every click stored by then handled once (applied, or
failed and left to come again), told by the stream's and the durable's sequence numbers, never by a wait."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CatchUp:
    stored: int  # the stream's last sequence at the start: every click up to it is owed
    delivered: int  # the durable's delivered stream sequence then: the clicks up to it went to a process before
    unacked: int  # how many of those it never acked: each comes again, or JetStream gives up on it
    newest: int = 0  # the highest sequence handled since (at least `delivered`)
    again: set[int] = field(default_factory=set)  # those up to `delivered` handled since, or given up on

    def __post_init__(self) -> None:
        self.newest = max(self.newest, self.delivered)

    def handled(self, seq: int) -> None:
        """The click at `seq` was handled once: applied, or failed (it comes again, after the start)."""
        self.newest = max(self.newest, seq)
        self.given_up(seq)

    def given_up(self, seq: int) -> None:
        """JetStream will not deliver the click at `seq` again (max_deliver): there is nothing left to wait for."""
        if seq <= self.delivered:
            self.again.add(seq)

    def done(self, pending: int, delivered: int, ack_floor: int) -> bool:
        """Given the durable's counts now: whether every click owed was handled. The new ones: one stored after the
        start was handled (they come in order), or none is left to deliver and the last delivered was handled or
        is acked (one that did not decode is terminated unhandled). The ones the last process never acked: each
        came again, or none up to `delivered` is unacked any more."""
        new = self.newest >= self.stored or (pending == 0 and max(self.newest, ack_floor) >= delivered)
        old = len(self.again) >= self.unacked or ack_floor >= self.delivered
        return new and old
