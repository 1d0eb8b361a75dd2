"""Where a new session runs: the least loaded live runner its agent group may use (issue 25, item 2).

`place` is pure: the runners' latest heartbeats (each with when the router got it, by the router's own clock,
so hosts' clocks may differ), how long the router has listened, the group's `runner` pin and the runners that hold
its extra mounts in, and the runner to fall back on; a `Placement` out. A runner's silence is counted in time the
router knows it listened (`Hearing`): a beat is core NATS, never replayed, so a stretch the router itself was cut
off from NATS, or that the server never answered for, is no silence of anybody's. `Runners` is the router's table
of those heartbeats: the heartbeat subscription writes it on the event loop, the store's thread reads it when it
makes a session."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from clawden.bus import events as ev


@dataclass(frozen=True, slots=True)
class Hearing:
    """How long the router has listened for heartbeats: only time it knows it heard counts. Knowing takes an
    answer of the server: the router sends a PING, and once the PONG is back on the same link, and every beat
    that came before it handled, everything the server sent before it took the PING has been heard (one TCP
    stream, in order), so the stretch from the last answer (or change of link) to the PING was heard. The wait
    for the PONG counts as deaf: a frozen server, or a link that silently drops packets, leaves the client looking
    connected all along, and then nothing tells the wait from silence but the answer. A change of link (the
    client's count of reconnections, or None when cut off) makes everything since the last answer deaf: core NATS
    replays nothing lost with a connection. So coming back from an outage, every runner's silence is what the
    router last knew of it, and grows only with what the server answered.

    `listened` counts the stretch not answered yet too (a beat is dated by it, and placing a new session or telling
    a chat its runner is away go by it), but never past a PING in flight: the router acts on a runner's silence
    (moving its sessions) only as of an answer (`answered`), when that stretch is none."""

    start: float  # when the router began to listen, by its clock
    checked: float  # its last answer or change of link: the time up to here is known heard or deaf
    link: int | None = 0  # the link it found then (the client's count of reconnections); None: cut off
    deaf: float = 0.0  # seconds the router could hear nothing, in all, up to `checked`
    asked: float | None = None  # when it sent the PING in flight on `link`, if one is

    def look(self, now: float, link: int | None) -> Hearing:
        """The link at `now`. The same one proves nothing: only an answer does. Another (lost, or a new one since)
        heard nothing since the last answer, however short the outage was, and a PING in flight is void."""
        if link is not None and link == self.link:
            return self
        now = max(now, self.checked)
        return Hearing(self.start, now, link, self.deaf + now - self.checked)

    def ask(self, now: float, link: int | None) -> Hearing:
        """A PING sent at `now` on `link` (the first in flight is the one its answer settles)."""
        looked = self.look(now, link)
        if link is None or looked.asked is not None:
            return looked
        return replace(looked, asked=max(now, looked.checked))

    def answered(self, now: float, link: int | None) -> Hearing:
        """The PONG to the PING in flight, with every beat received before it handled, at `now` on `link`: heard up
        to the PING, deaf while it waited. Nothing is settled when no PING is in flight on this link."""
        looked = self.look(now, link)
        if looked.asked is None:
            return looked
        now = max(now, looked.asked)
        return Hearing(self.start, now, link, looked.deaf + now - looked.asked)

    def listened(self, now: float) -> float:
        """Seconds listened from `start` to `now`: none past a look that found the router cut off, nor past a PING
        still in flight."""
        end = self.checked if self.link is None else now if self.asked is None else self.asked
        return min(now, end) - self.start - self.deaf


@dataclass(frozen=True, slots=True)
class Seen:
    beat: ev.RunnerHeartbeat
    at: float  # when the router got it, by the router's clock
    listened: float  # how long the router had listened then (`Hearing.listened`): its silence is counted from here
    placed: int = 0  # sessions placed there since this beat, which its next beat will count


@dataclass(frozen=True, slots=True)
class Placement:
    runner: str
    # Empty when a live runner fitted; otherwise why the session went to `runner` anyway, for the log.
    why: str = ""


def alive(seen: Seen, listened: float, dead_after: float) -> bool:
    """Whether the router, having listened `listened` seconds in all, heard `seen`'s runner in its last `dead_after`."""
    return listened - seen.listened <= dead_after


def away_since(runners: Mapping[str, Seen], runner: str, listened: float, dead_after: float) -> float | None:
    """When the router last heard `runner`, if it has been silent past `dead_after` (declared gone); None while it
    beats, and for a runner not heard since the router started (nothing is known of it yet)."""
    seen = runners.get(runner)
    return None if seen is None or alive(seen, listened, dead_after) else seen.at


def gone(
    runners: Mapping[str, Seen], holding: Iterable[str], listened: float, dead_after: float, started: float
) -> dict[str, float]:
    """The runners that hold sessions (`holding`) and are declared gone, each with since when: silent past
    `dead_after` since their last beat, or never heard at all once the router has listened for `dead_after`
    (since it `started`: a runner that died while the router was down beats no more)."""
    out: dict[str, float] = {}
    for rid in holding:
        seen = runners.get(rid)
        if seen is None:
            if listened > dead_after:
                out[rid] = started
        elif not alive(seen, listened, dead_after):
            out[rid] = seen.at
    return out


def holders(runners: Mapping[str, Seen], group: str) -> frozenset[str]:
    """The runners, live or not, whose host has every extra mount of `group` (its heartbeat says so). A group
    that none names has no extra mounts anywhere, and may run on any runner."""
    return frozenset(rid for rid, seen in runners.items() if group in seen.beat.mount_groups)


def rank(seen: Seen) -> tuple[int, float, int, str]:
    """Lower is less loaded: the most free slots (less what was placed since the beat), then the lowest load per
    CPU, then the most available memory (unknown counts as none), then the runner's id."""
    beat = seen.beat
    return (seen.placed - beat.free, beat.load / max(1, beat.cpus), -beat.memory_available, beat.runner)


def place(
    runners: Mapping[str, Seen], listened: float, *, group: str, pin: str, dead_after: float, fallback: str
) -> Placement:
    """The least loaded live runner that honours the group's pin ("" is any) or, unpinned, holds its mounts (a pin
    is the owner's word, and wins). When none fits: the pinned runner, else the holder of the mounts heard from
    last, else `fallback`; the session's wake then waits in that runner's durable until it is back."""
    bound = holders(runners, group)
    fits = [
        seen
        for rid, seen in runners.items()
        if alive(seen, listened, dead_after) and (rid == pin if pin else not bound or rid in bound)
    ]
    if fits:  # a runner whose containers reach the vault first: elsewhere no agent starts
        return Placement(min([s for s in fits if s.beat.reaches_vault] or fits, key=rank).beat.runner)
    if pin:
        where = "" if not bound or pin in bound else f"; its extra mounts are on {', '.join(sorted(bound))}"
        return Placement(pin, f"agent group {group} is pinned to runner {pin}, which is not live{where}")
    if bound:
        last = max(bound, key=lambda rid: (runners[rid].at, rid))
        return Placement(last, f"no live runner holds agent group {group}'s extra mounts; runner {last} did last")
    if not runners:
        return Placement(fallback, f"no runner heartbeat yet: runner {fallback}")
    return Placement(fallback, f"no live runner (none beat in the last {dead_after:g} s): runner {fallback}")


class Runners:
    """The latest heartbeat of each runner, how many sessions were placed on it since, and how long the router has
    listened. Written from the event loop (`heard`, `looked`, `asked`, `answered`) and the store's thread
    (`placed`), hence the lock."""

    def __init__(self) -> None:
        self._seen: dict[str, Seen] = {}
        self._hearing: Hearing | None = None  # begun at the first look, beat or judgement
        self._lock = threading.Lock()
        self._said = ""  # the last fallback logged: each is said once, until a live runner fits again

    def _begun(self, now: float) -> Hearing:
        if self._hearing is None:
            self._hearing = Hearing(start=now, checked=now)
        return self._hearing

    def looked(self, now: float, link: int | None) -> None:
        """The router's link to NATS at `now` (`Hearing.look`)."""
        with self._lock:
            self._hearing = self._begun(now).look(now, link)

    def asked(self, now: float, link: int | None) -> None:
        """A PING sent at `now` on `link` (`Hearing.ask`)."""
        with self._lock:
            self._hearing = self._begun(now).ask(now, link)

    def answered(self, now: float, link: int | None) -> None:
        """Its PONG, every beat before it handled (`Hearing.answered`)."""
        with self._lock:
            self._hearing = self._begun(now).answered(now, link)

    def hearing(self, now: float) -> Hearing:
        with self._lock:
            return self._begun(now)

    def heard(self, beat: ev.RunnerHeartbeat, at: float) -> None:
        with self._lock:
            self._seen[beat.runner] = Seen(beat, at, self._begun(at).listened(at))

    def placed(self, runner: str) -> None:
        with self._lock:
            if (seen := self._seen.get(runner)) is not None:
                self._seen[runner] = replace(seen, placed=seen.placed + 1)

    def snapshot(self) -> dict[str, Seen]:
        with self._lock:
            return dict(self._seen)

    def news(self, placement: Placement) -> bool:
        """Whether this placement's fallback is not yet said (a fitting placement makes the next one news)."""
        new = placement.why != self._said and placement.why != ""
        self._said = placement.why
        return new
