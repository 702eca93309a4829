"""A path keeper for component tests of the agent: chosen paths set by the test, no probes.

It implements overlayd.agent.path_api.PathKeeping. Every peer gets the path it would get
without probes (``guess_path``) unless the test ``choose``s another; ``choose`` then
tells the daemon, as the prober does when a path settles. ``recomputed`` lists the peers
of each ``recompute`` call, so a test sees what the daemon replanned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network

from overlayd.agent.path_keeper import PeerReport
from overlayd.disk.node_key import NodeKey
from overlayd.planning.probe_pace import PeerSample
from overlayd.planning.vxlan import is_me
from overlayd.probe.prober import Send, Taker
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord, NodeEndpoints, SeenEndpoints
from overlayd.values.paths import PUBLIC, PeerPath, guess_path
from overlayd.values.wireguard import Endpoint

FAKE_PROBE_PORT = 51999  # published in the lease; nothing listens on it


class FakePaths:
    """``PathKeeping`` with paths the test sets."""

    def __init__(self) -> None:
        self.chosen: dict[IPv4Network, PeerPath] = {}  # set by ``choose``
        self.recomputed: list[frozenset[IPv4Network]] = []
        self.started = False
        self.confirmed: tuple[IPv4Address, ...] = ()  # "peers of other sites saw us at"
        self.taker: Taker | None = None  # who shares the probe socket (STUN)
        self.sent: list[tuple[bytes, tuple[str, int]]] = []  # what it sent through it
        self.traffic: list[Mapping[IPv4Network, PeerSample]] = []  # samples, in order
        self.endpoints = NodeEndpoints()  # "peers of other sites saw our sockets at"
        self.seen: tuple[SeenEndpoints, ...] = ()  # "we saw peers behind NAT at"
        self.wireguard_learned: list[dict[PublicKey, Endpoint]] = []  # as the daemon read them
        self.natted = True  # "a peer of another site is behind NAT"
        self._paths: dict[IPv4Network, PeerPath] = {}
        self._verified: dict[IPv4Network, float] = {}  # set by ``verify``: peer -> RTT (ms)
        self._on_change: Callable[[IPv4Network | None], None] | None = None

    @property
    def paths(self) -> Mapping[IPv4Network, PeerPath]:
        return self._paths

    @property
    def lingering(self) -> Mapping[IPv4Network, IPv4Address]:
        return {}

    @property
    def port(self) -> int:
        return FAKE_PROBE_PORT

    async def start(
        self,
        on_change: Callable[[IPv4Network | None], None],
        unguessable: frozenset[IPv4Address],
    ) -> None:
        self._on_change, self.started = on_change, True

    async def close(self) -> None:
        self.started = False

    def set_key(self, key: NodeKey) -> None:
        pass  # no probes: no key to speak with

    def lease_changed(self, me: LeaseRecord, subnet: IPv4Network, peer: LeaseRecord | None) -> None:
        if peer is None:
            self._paths.pop(subnet, None)

    def recompute(
        self,
        me: LeaseRecord,
        peers: Mapping[IPv4Network, LeaseRecord],
        which: Iterable[IPv4Network],
    ) -> set[IPv4Network]:
        which = frozenset(which)
        self.recomputed.append(which)
        changed = set()
        for subnet in which:
            peer = peers.get(subnet)
            path = None
            if peer is not None and not is_me(me, subnet, peer):
                path = self.chosen.get(subnet) or guess_path(me, peer)
            if path != self._paths.get(subnet):
                changed.add(subnet)
            if path is None:
                self._paths.pop(subnet, None)
            else:
                self._paths[subnet] = path
        return changed

    def note_traffic(self, samples: Mapping[IPv4Network, PeerSample]) -> None:
        self.traffic.append(samples)

    def share_socket(self, taker: Taker) -> Send:
        self.taker = taker

        def send(data: bytes, addr: tuple[str, int]) -> None:
            self.sent.append((data, addr))

        return send

    def verified(self) -> set[IPv4Network]:
        return set(self._verified)

    def public_addresses(self, me: LeaseRecord) -> tuple[IPv4Address, ...]:
        return self.confirmed

    def wireguard_seen(self, endpoints: Mapping[PublicKey, Endpoint]) -> None:
        self.wireguard_learned.append(dict(endpoints))

    def nat_peers(self) -> bool:
        return self.natted

    def observed(
        self, me: LeaseRecord, peers: Mapping[IPv4Network, LeaseRecord]
    ) -> tuple[NodeEndpoints, tuple[SeenEndpoints, ...]]:
        return self.endpoints, self.seen

    def report(
        self, peers: Mapping[IPv4Network, LeaseRecord], via: Mapping[IPv4Network, str]
    ) -> list[PeerReport]:
        out = []
        for subnet, rtt in self._verified.items():
            path = self._paths.get(subnet)
            if subnet in peers and path is not None:
                peer = peers[subnet]
                out.append(
                    PeerReport(peer.node, subnet, peer.site, path, rtt, None, (path.address,))
                )
        return out

    def verify(self, subnet: IPv4Network, rtt_ms: float = 1.0) -> None:
        """From now on ``subnet``'s path is verified by probes, with round trip ``rtt_ms``."""
        self._verified[subnet] = rtt_ms
        assert self._on_change is not None, "not started"
        self._on_change(subnet)

    def observe(self, endpoints: NodeEndpoints, seen: tuple[SeenEndpoints, ...]) -> None:
        """From now on we are seen at ``endpoints`` and have ``seen`` peers behind NAT."""
        self.endpoints, self.seen = endpoints, seen
        assert self._on_change is not None, "not started"
        self._on_change(None)

    def reflect(self, *addresses: IPv4Address) -> None:
        """From now on peers of other sites confirm that they see us at ``addresses``."""
        self.confirmed = addresses
        assert self._on_change is not None, "not started"
        self._on_change(None)

    def choose(self, subnet: IPv4Network, address: IPv4Address) -> None:
        """From now on ``subnet``'s path is ``address`` (verified, as after probes)."""
        self.chosen[subnet] = PeerPath(address, PUBLIC, "chosen by the test")
        assert self._on_change is not None, "not started"
        self._on_change(subnet)
