"""``PathKeeping``: what the daemon needs from the keeper of per-peer underlay paths.

overlayd/agent/path_keeper.py's ``PathKeeper`` (authenticated probes) is the one the
composition root passes in; component tests pass a fake whose chosen paths they set.
Only the Protocol lives here: no prober, socket or clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from overlayd.agent.path_keeper import PeerReport
from overlayd.disk.node_key import NodeKey
from overlayd.planning.probe_pace import PeerSample
from overlayd.probe.prober import Send, Taker
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord, NodeEndpoints, SeenEndpoints
from overlayd.values.paths import PeerPath
from overlayd.values.wireguard import Endpoint


class PathKeeping(Protocol):
    """Chosen underlay path per peer subnet, and what probes learnt about us."""

    @property
    def paths(self) -> Mapping[IPv4Network, PeerPath]:
        """The chosen path of each peer that has one."""

    @property
    def lingering(self) -> Mapping[IPv4Network, IPv4Address]:
        """Per peer, the address we left that its traffic may still come from."""

    @property
    def port(self) -> int:
        """The UDP port peers probe us on (published in our lease); once started."""

    async def start(
        self,
        on_change: Callable[[IPv4Network | None], None],
        unguessable: frozenset[IPv4Address],
    ) -> None:
        """Start probing; ``on_change(peer)`` when a path of ``peer`` became (un)verified
        or settled, ``on_change(None)`` when our reflexive address did. ``unguessable``:
        addresses never chosen unless verified (our etcd endpoints')."""

    async def close(self) -> None:
        """Stop probing."""

    def set_key(self, key: NodeKey) -> None:
        """Speak and answer with a new node key from now on (a rotation)."""

    def lease_changed(self, me: LeaseRecord, subnet: IPv4Network, peer: LeaseRecord | None) -> None:
        """The lease of ``subnet`` is now ``peer`` (None: gone)."""

    def recompute(
        self,
        me: LeaseRecord,
        peers: Mapping[IPv4Network, LeaseRecord],
        which: Iterable[IPv4Network],
    ) -> set[IPv4Network]:
        """Rechoose the paths of ``which``; returns the peers whose path (or lingering
        address) changed."""

    def note_traffic(self, samples: Mapping[IPv4Network, PeerSample]) -> None:
        """One sample of which peers carry traffic (overlayd/agent/traffic.py): peers with
        traffic or a recent path change are probed fast, the others at the idle pace."""

    def share_socket(self, taker: Taker) -> Send:
        """Let one other protocol (STUN) send from the probe socket, whose NAT mapping
        peers see; ``taker`` gets each datagram first and returns True for its own."""

    def verified(self) -> set[IPv4Network]:
        """Peers whose chosen path probes have verified."""

    def public_addresses(self, me: LeaseRecord) -> tuple[IPv4Address, ...]:
        """Our public addresses as peers in other sites confirmed them (sorted)."""

    def wireguard_seen(self, endpoints: Mapping[PublicKey, Endpoint]) -> None:
        """The endpoints our WireGuard device learned from its peers' handshakes."""

    def nat_peers(self) -> bool:
        """Whether a peer of another site sits behind NAT: only then do the endpoints our
        WireGuard device learned matter (``wireguard_seen``), so only then are they read."""

    def observed(
        self, me: LeaseRecord, peers: Mapping[IPv4Network, LeaseRecord]
    ) -> tuple[NodeEndpoints, tuple[SeenEndpoints, ...]]:
        """Our ``Endpoints`` as peers saw them, and our ``Seen`` of peers behind NAT."""

    def report(
        self, peers: Mapping[IPv4Network, LeaseRecord], via: Mapping[IPv4Network, str]
    ) -> list[PeerReport]:
        """``/peers``: one report per peer (those with no path at all say why)."""
