"""The TCP listener's connections that have shown no proxy token yet: one bounded pool for them all that makes room
fairly by peer address, so that a flood from one address pushes out its own connections, not another's (no IO)."""

from __future__ import annotations

import heapq
import ipaddress
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def peer_address(peername: object) -> str:
    """The address a connection is counted under: the IP of `peername` (a socket's, port and all) alone, in one
    spelling; an IPv4-mapped IPv6 address (a dual-stack listener sees IPv4 peers so) as the IPv4 one it stands for.
    "" when the peer is unknown (it left before it was asked)."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return ""
    try:
        address = ipaddress.ip_address(peername[0])
    except ValueError:
        return peername[0]  # not an IP (no such peer on a TCP listener): counted under its name as given
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class Unauthenticated(Generic[K, V]):
    """Connections that have shown no token, oldest first, against one cap for them all. Each is kept with what ends
    it (`V`) and its peer's address. One past the cap makes room by dropping the oldest connection of the address
    that holds the most (of those that hold equally many, the one whose oldest came first): an address's flood then
    mostly evicts its own, and another's connection goes only once that address holds as many. The drops of a burst
    are counted so it is logged and audited once; a burst ends when the pool is back to half its cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.waiting: dict[K, V] = {}  # in the order they came
        self.dropped = 0  # by the burst going on
        self._peer: dict[K, str] = {}
        self._held: dict[str, dict[K, int]] = {}  # each address's connections, oldest first, with when they came
        self._came = 0  # connections admitted so far: the order they came in
        # A heap of (-held, when its oldest came, address): the address to trim at its top. An entry is pushed on
        # each change to an address; one that no longer matches its address is stale, skipped and, in bulk, swept.
        self._fullest: list[tuple[int, int, str]] = []

    def admit(self, key: K, value: V, peer: str) -> tuple[K, V] | None:
        """One more connection, from `peer`; returns the one dropped to make room, no longer counted, if one was."""
        dropped = self._make_room() if len(self.waiting) >= self.cap else None
        self.waiting[key] = value
        self._peer[key] = peer
        self._held.setdefault(peer, {})[key] = self._came
        self._came += 1
        self._changed(peer)
        return dropped

    def leave(self, key: K) -> V | None:
        """The connection showed its token, ended, or ran out of time: what ends it, if it was still counted."""
        if key not in self.waiting:
            return None
        peer = self._peer.pop(key)
        held = self._held[peer]
        del held[key]
        if held:
            self._changed(peer)
        else:
            del self._held[peer]
        return self.waiting.pop(key)

    def burst_ended(self) -> int:
        """How many a burst of drops took, once the pool is back to half its cap (then forgotten); else 0."""
        if not self.dropped or len(self.waiting) > self.cap // 2:
            return 0
        dropped, self.dropped = self.dropped, 0
        return dropped

    def _make_room(self) -> tuple[K, V]:
        key = next(iter(self._held[self._trimmed()]))
        value = self.waiting[key]
        self.leave(key)
        self.dropped += 1
        return key, value

    def _trimmed(self) -> str:
        """The address that holds the most, the one whose oldest came first among equals."""
        while not self._current(top := self._fullest[0]):
            heapq.heappop(self._fullest)
        return top[2]

    def _current(self, entry: tuple[int, int, str]) -> bool:
        return entry[2] in self._held and entry == self._entry(entry[2])

    def _entry(self, peer: str) -> tuple[int, int, str]:
        held = self._held[peer]
        return -len(held), next(iter(held.values())), peer

    def _changed(self, peer: str) -> None:
        heapq.heappush(self._fullest, self._entry(peer))
        if len(self._fullest) > 2 * len(self._held) + 64:  # mostly stale: rebuilt from the addresses (amortised)
            self._fullest = [self._entry(held) for held in self._held]
            heapq.heapify(self._fullest)
