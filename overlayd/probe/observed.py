"""Our reflexive addresses as peers reported them in their replies, bounded per peer.

Each reply says which (address, port) our probe came from; ``Observations`` keeps one
record per (peer, address, port), at most ``MAX_OBSERVED`` per observing peer, for
``path_choice.confirmed_public``. A reply costs two dictionary look-ups and no allocation
(the ``Observation`` values are built when they are read), and a new observation does not
look at other peers' (at 5,000 peers a scan of every peer's per new one made start-up
quadratic). No sockets, no clock: times come from the caller.
"""

from __future__ import annotations

from collections.abc import Collection
from ipaddress import IPv4Address
from typing import Generic

from overlayd.planning.path_choice import Observation, PeerId

MAX_OBSERVED = 4
"""Distinct (address, port) observations kept per observing peer."""


class _Seen:
    """One (peer, address, port) observation, counted in place."""

    __slots__ = ("count", "first_seen", "last_seen", "site")

    def __init__(self, site: str, now: float) -> None:
        self.site = site
        self.count = 1
        self.first_seen = self.last_seen = now


class Observations(Generic[PeerId]):
    """The observations of the current peers; the oldest of a peer's goes when it is full."""

    __slots__ = ("_all", "_seen")

    def __init__(self) -> None:
        self._seen: dict[PeerId, dict[tuple[IPv4Address, int], _Seen]] = {}
        self._all: tuple[Observation[PeerId], ...] | None = ()  # None: to be built again

    def observe(
        self, peer: PeerId, site: str, observed: tuple[IPv4Address, int], now: float
    ) -> bool:
        """Record that ``peer`` (of ``site``) saw us at ``observed``; True if that may change
        our confirmed public addresses: a new observation, or its first corroboration."""
        self._all = None
        mine = self._seen.get(peer)
        if mine is None:
            mine = self._seen[peer] = {}
        old = mine.get(observed)
        if old is None:
            if len(mine) >= MAX_OBSERVED:
                del mine[min(mine, key=lambda k: mine[k].last_seen)]
            mine[observed] = _Seen(site, now)
            return True
        old.site = site
        old.count += 1
        old.last_seen = now
        return old.count == 2

    def forget(self, peer: PeerId) -> None:
        """Drop every observation by ``peer`` (its identity changed)."""
        if self._seen.pop(peer, None) is not None:
            self._all = None

    def retain(self, peers: Collection[PeerId]) -> None:
        """Drop the observations of peers not in ``peers``."""
        for peer in [p for p in self._seen if p not in peers]:
            self.forget(peer)

    def all(self) -> tuple[Observation[PeerId], ...]:
        """Every observation kept, in the order they were first seen."""
        if self._all is None:
            found = [
                Observation(address, port, peer, s.site, s.count, s.first_seen, s.last_seen)
                for peer, mine in self._seen.items()
                for (address, port), s in mine.items()
            ]
            self._all = tuple(sorted(found, key=lambda o: o.first_seen))
        return self._all
