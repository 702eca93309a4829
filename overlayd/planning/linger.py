"""Addresses a peer may still send from after we stopped using them (pure).

Each end of a pair chooses its path on its own: after a failover and the move back, one
end returns to the same-site private path up to a slow probe interval before the other
(each verifies the recovered path at its own next probe, then both hold it for the same
time). Meanwhile the slower end still sends from its public address, which the ingress
filter accepts from a same-site peer only while we use that address ourselves. So an
address we leave *lingers* -- stays accepted -- for ``Linger.seconds`` more, long enough for
the peer to follow (see ``linger_for``); it is then dropped, so the internet cannot forge
a healthy same-site peer's public address for longer than that after a failover.

Times are ``time.monotonic()`` seconds, as the prober records them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network


def linger_for(slow_interval: float, jitter: float, timeout: float) -> float:
    """How long a left address stays accepted: two of the peer's slow probe intervals
    (the most its recovered-path check can lag ours, twice over) plus a probe timeout."""
    return 2 * slow_interval * (1 + jitter) + timeout


@dataclass
class Linger:
    """The addresses each peer may still send from, and until when."""

    seconds: float
    _until: dict[IPv4Network, tuple[IPv4Address, float]] = field(default_factory=dict)

    def left(
        self,
        subnet: IPv4Network,
        old: IPv4Address | None,
        new: IPv4Address | None,
        candidates: Collection[IPv4Address],
        now: float,
    ) -> bool:
        """Our path to ``subnet`` moved from ``old`` to ``new``: ``old`` lingers if it is
        still one of the peer's ``candidates``. Returns whether something now lingers."""
        self._until.pop(subnet, None)
        if old is None or old == new or old not in candidates:
            return False
        self._until[subnet] = (old, now + self.seconds)
        return True

    def forget(self, subnet: IPv4Network) -> None:
        """The peer is gone."""
        self._until.pop(subnet, None)

    def expire(self, which: Iterable[IPv4Network], now: float) -> set[IPv4Network]:
        """Drop the expired entries among ``which``; returns their subnets."""
        gone = set()
        for subnet in which:
            hit = self._until.get(subnet)
            if hit is not None and hit[1] <= now:
                del self._until[subnet]
                gone.add(subnet)
        return gone

    @property
    def addresses(self) -> Mapping[IPv4Network, IPv4Address]:
        """Per peer subnet, the address that still lingers."""
        return {subnet: address for subnet, (address, _) in self._until.items()}
