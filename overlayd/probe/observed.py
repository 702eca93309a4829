"""Our reflexive addresses as peers reported them in their replies, bounded per peer.

Each reply says which (address, port) our probe came from; ``Observations`` keeps one
``Observation`` per (peer, address, port), at most ``MAX_OBSERVED`` per observing peer,
for ``path_choice.confirmed_public``. No sockets, no clock: times come from the caller.
"""

from __future__ import annotations

from collections.abc import Collection
from ipaddress import IPv4Address
from typing import Generic

from overlayd.planning.path_choice import Observation, PeerId

MAX_OBSERVED = 4
"""Distinct (address, port) observations kept per observing peer."""


class Observations(Generic[PeerId]):
    """The observations of the current peers; the oldest of a peer's goes when it is full."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[tuple[PeerId, IPv4Address, int], Observation[PeerId]] = {}

    def observe(
        self, peer: PeerId, site: str, observed: tuple[IPv4Address, int], now: float
    ) -> bool:
        """Record that ``peer`` (of ``site``) saw us at ``observed``; True if that may change
        our confirmed public addresses: a new observation, or its first corroboration."""
        key = (peer, observed[0], observed[1])
        seen = self._seen
        old = seen.get(key)
        if old is None:
            mine = [k for k in seen if k[0] == peer]
            if len(mine) >= MAX_OBSERVED:
                del seen[min(mine, key=lambda k: seen[k].last_seen)]
            seen[key] = Observation(observed[0], observed[1], peer, site, 1, now, now)
            return True
        seen[key] = Observation(
            old.address, old.port, peer, site, old.count + 1, old.first_seen, now
        )
        return old.count == 1

    def forget(self, peer: PeerId) -> None:
        """Drop every observation by ``peer`` (its identity changed)."""
        for key in [k for k in self._seen if k[0] == peer]:
            del self._seen[key]

    def retain(self, peers: Collection[PeerId]) -> None:
        """Drop the observations of peers not in ``peers``."""
        for key in [k for k in self._seen if k[0] not in peers]:
            del self._seen[key]

    def all(self) -> tuple[Observation[PeerId], ...]:
        """Every observation kept, in the order they were first seen."""
        return tuple(self._seen.values())
