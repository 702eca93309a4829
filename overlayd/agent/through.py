"""Data-plane health: probes to peers' overlay addresses, which cross whatever forwards.

A probe to a peer's *overlay* address (its subnet's ``.0``) is routed like the traffic it
stands for: through our site's gateway (overlayd/agent/election.py) or through the relay
that carries the pair (overlayd/agent/relay_keeper.py), both ways. So it tells whether that
forwarder forwards, which its etcd key cannot (kilo#489). The probes are the authenticated
path probes (overlayd/probe), from a second prober on an ephemeral port; the peer's own
prober answers them on its overlay address like on any other.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from ipaddress import IPv4Network

from overlayd.disk.node_key import NodeKey
from overlayd.probe.prober import Prober
from overlayd.probe.settings import PeerTarget, ProbeConfig
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.lease import LeaseRecord


class ThroughProbes:
    """Probes a set of peers at their overlay addresses; ``on_change`` when a path's
    verdict changed (not for RTT samples)."""

    def __init__(self, key: NodeKey, on_change: Callable[[], None]) -> None:
        self.prober: Prober[IPv4Network] = Prober(
            key.private, ProbeConfig(port=0), lambda _peer: on_change()
        )
        self.targets: frozenset[IPv4Network] = frozenset()

    async def start(self) -> None:
        await self.prober.start()

    async def close(self) -> None:
        await self.prober.close()

    def set_key(self, key: PrivateKey) -> None:
        """Probe with a new node key (a rotation)."""
        self.prober.set_key(key)

    def set_targets(
        self, peers: Mapping[IPv4Network, LeaseRecord], *, fresh: Collection[IPv4Network] = ()
    ) -> None:
        """Probe ``peers`` (those whose lease has a key and a probe port); ``fresh``: the
        targets whose verdicts are forgotten (their forwarder changed: what the probes said
        of the old one says nothing of the new one)."""
        targets = {
            subnet: PeerTarget(
                PublicKey.from_base64(peer.public_key),
                (peer.overlay_ip,),
                peer.site,
                peer.probe_port,
            )
            for subnet, peer in peers.items()
            if peer.public_key and peer.probe_port
        }
        if forget := self.targets & set(fresh):
            self.prober.set_peers({s: t for s, t in targets.items() if s not in forget})
            self.targets -= forget
        if targets.keys() == self.targets:
            return
        self.prober.set_peers(targets)
        for subnet, target in targets.items():
            self.prober.set_chosen(subnet, target.candidates[0])
        self.targets = frozenset(targets)

    def verdict(self, subnet: IPv4Network) -> bool | None:
        """Whether the path to ``subnet`` works: True verified, False it stopped, None it
        never worked (yet)."""
        return self.forwarding((subnet,))

    def forwarding(self, subnets: Collection[IPv4Network] | None = None) -> bool | None:
        """Whether any path to ``subnets`` (default: every target) that ever worked or
        failed works now; None until one has."""
        which = self.targets if subnets is None else subnets
        stats = [s for t in which for s in self.prober.stats(t).values()]
        ever = [s for s in stats if s.verified or s.downs]
        if not ever:
            return None
        return any(s.verified for s in ever)
