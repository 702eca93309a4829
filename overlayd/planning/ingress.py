"""The VXLAN ingress policy (pure): who may send us VXLAN, and what each peer may carry.

Two rules, both derived from what this node programs over VXLAN (the VXLAN plan's peers):

* **outer**: a datagram to our VXLAN UDP port is accepted only from an underlay address of
  such a peer. A peer of another site: every candidate it publishes (flannel's
  ``PublicIP``, ``PrivateIPs``, ``PublicIPs``) plus the path we chose for it, so failover
  and the move back keep working whichever candidate it sends from (the prober only ever
  verifies published candidates). A peer of our own site: only its private candidates
  (``PrivateIPs``, else ``PublicIP``) plus the path we chose for it -- its public address
  is accepted only while we reach it over that public address ourselves (in-site failover
  through hairpin NAT, which fails over both ends alike), so the internet cannot pass the
  outer check by forging a same-site peer's public address. An address we left lingers for
  a while (``lingering``; overlayd/planning/linger.py): the peer may take a little longer than we
  did to move back to the private path. With ``vxlan+wireguard`` the
  VXLAN plan holds only peers of our site: nothing of another site, and no public address
  of a healthy same-site peer, is accepted as plain VXLAN.
* **inner**: a frame decapsulated on our VXLAN device whose source MAC is a peer's VTEP MAC
  may only carry IPv4 sources inside that peer's subnet -- VXLAN's analogue of WireGuard's
  AllowedIPs. A site's gateway (gateway topology, seen from a member) also carries the
  subnets of the other sites it routes for us (``plan_gateway``'s ``via_gateway``).

Values only: ``IngressPolicy`` is frozen, ``IngressPlanner`` turns the plan into policies
and the delta between two of them, memoising each peer's entry by the identity of its
lease record (as ``plan.Planner`` does), so a lease change costs O(changed peers), and a
full replan of 5,000 unchanged peers only compares objects.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

from overlayd.values.kernel_state import MacAddress, RouteEntry
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PeerPath

_K = TypeVar("_K")

Pair = tuple[MacAddress, IPv4Network]
"""An allowed inner source: (the VTEP MAC a frame comes from, a prefix it may carry)."""

_MemoKey = tuple[LeaseRecord, IPv4Address, IPv4Address | None, tuple[IPv4Network, ...]]
"""What a memoised entry was made from: record, chosen and lingering address, carried."""


def _net_key(net: IPv4Network) -> tuple[int, int]:
    # ints compare in C; IPv4Network's own ordering is Python code, slow for thousands
    return int(net.network_address), net.prefixlen


def _pair_key(pair: Pair) -> tuple[str, int, int]:
    return pair[0].text, int(pair[1].network_address), pair[1].prefixlen


def disjoint(prefixes: Iterable[IPv4Network]) -> tuple[IPv4Network, ...]:
    """``prefixes`` sorted, without those inside another one (each prefix once).

    An nftables interval set refuses overlapping elements; one peer's prefixes never
    overlap in a sane network, but a set must not fail on a strange lease.
    """
    out: list[IPv4Network] = []
    end = -1  # last address covered by the kept prefixes
    for net in sorted(set(prefixes), key=_net_key):
        start = int(net.network_address)
        if start <= end:
            continue  # sorted by start then length: a containing prefix came first
        out.append(net)
        end = int(net.broadcast_address)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class PeerIngress:
    """What one VXLAN peer may send: from which underlay addresses, carrying which sources."""

    mac: MacAddress
    sources: tuple[IPv4Address, ...]  # sorted, each once
    prefixes: tuple[IPv4Network, ...]  # sorted, disjoint

    @property
    def pairs(self) -> tuple[Pair, ...]:
        return tuple((self.mac, p) for p in self.prefixes)


def peer_ingress(
    peer: LeaseRecord,
    path: IPv4Address | None = None,
    carried: Iterable[IPv4Network] = (),
    *,
    same_site: bool = False,
    lingering: IPv4Address | None = None,
) -> PeerIngress:
    """``peer``'s entry: its published candidates -- of a ``same_site`` peer only the
    private ones -- and ``path``, the address we chose for it, and ``lingering``, one we
    left a moment ago; its subnet plus ``carried`` (the other sites' subnets, for our
    gateway)."""
    if same_site:
        sources = set(peer.private_ips or (peer.public_ip,))
    else:
        sources = {peer.public_ip, *peer.private_ips, *peer.public_ips, *peer.candidates}
    sources.update(a for a in (path, lingering) if a is not None)
    return PeerIngress(
        peer.vtep_mac, tuple(sorted(sources, key=int)), disjoint((peer.subnet, *carried))
    )


@dataclass(frozen=True)
class IngressPolicy:
    """The whole policy: our VXLAN ``port`` and ``device``, each peer's entry by subnet,
    and the union of the entries (``sources``, ``pairs``: how many peers share each one).

    Treat the mappings as read-only: a change makes a new policy (``IngressPlanner``).
    """

    port: int
    device: str
    peers: Mapping[IPv4Network, PeerIngress] = field(default_factory=dict)
    sources: Mapping[IPv4Address, int] = field(default_factory=dict)
    pairs: Mapping[Pair, int] = field(default_factory=dict)

    def sorted_sources(self) -> tuple[IPv4Address, ...]:
        """The allowed outer sources, in address order."""
        return tuple(sorted(self.sources, key=int))

    def sorted_pairs(self) -> tuple[Pair, ...]:
        """The allowed (VTEP MAC, inner prefix) pairs, in MAC then prefix order."""
        return tuple(sorted(self.pairs, key=_pair_key))

    def same_rules(self, other: IngressPolicy | None) -> bool:
        """Whether ``other`` has the same port and device (so the same rules, other sets)."""
        return other is not None and (other.port, other.device) == (self.port, self.device)


@dataclass(frozen=True)
class IngressDelta:
    """Set elements to add and delete to go from one policy to the next; sorted."""

    add_sources: tuple[IPv4Address, ...] = ()
    del_sources: tuple[IPv4Address, ...] = ()
    add_pairs: tuple[Pair, ...] = ()
    del_pairs: tuple[Pair, ...] = ()

    def __len__(self) -> int:
        return (
            len(self.add_sources)
            + len(self.del_sources)
            + len(self.add_pairs)
            + len(self.del_pairs)
        )

    def summary(self) -> str:
        return (
            f"+{len(self.add_sources)}/-{len(self.del_sources)} sources, "
            f"+{len(self.add_pairs)}/-{len(self.del_pairs)} inner prefixes"
        )


def change_policy(
    old: IngressPolicy, changes: Mapping[IPv4Network, PeerIngress | None]
) -> tuple[IngressPolicy, IngressDelta]:
    """``old`` with the entries of ``changes`` replaced (None: peer gone), and the delta.

    Shared elements are counted, so an address two peers publish stays while either does.
    """
    if not changes:
        return old, IngressDelta()
    peers, sources, pairs = dict(old.peers), dict(old.sources), dict(old.pairs)
    added: tuple[set[IPv4Address], set[Pair]] = (set(), set())
    dropped: tuple[set[IPv4Address], set[Pair]] = (set(), set())
    for subnet, entry in changes.items():
        before = peers.pop(subnet, None)
        if entry is not None:
            peers[subnet] = entry
        if before is not None:
            _count(sources, before.sources, -1, added[0], dropped[0])
            _count(pairs, before.pairs, -1, added[1], dropped[1])
        if entry is not None:
            _count(sources, entry.sources, 1, added[0], dropped[0])
            _count(pairs, entry.pairs, 1, added[1], dropped[1])
    delta = IngressDelta(
        tuple(sorted(added[0], key=int)),
        tuple(sorted(dropped[0], key=int)),
        tuple(sorted(added[1], key=_pair_key)),
        tuple(sorted(dropped[1], key=_pair_key)),
    )
    return IngressPolicy(old.port, old.device, peers, sources, pairs), delta


def _count(
    counts: dict[_K, int], keys: Iterable[_K], step: int, added: set[_K], dropped: set[_K]
) -> None:
    """Adjust the reference counts of ``keys``; note those that appear or disappear
    (an element dropped and added back within one change is neither)."""
    for key in keys:
        n = counts.get(key, 0) + step
        if n:
            counts[key] = n
        else:
            del counts[key]
        if step > 0 and n == 1:
            if key in dropped:
                dropped.discard(key)
            else:
                added.add(key)
        elif step < 0 and n == 0:
            if key in added:
                added.discard(key)
            else:
                dropped.add(key)


def carried_prefixes(
    via_gateway: Mapping[IPv4Network, RouteEntry], leases: Mapping[IPv4Network, LeaseRecord]
) -> dict[IPv4Network, tuple[IPv4Network, ...]]:
    """Per peer subnet, the other subnets it routes for us: the routes of ``via_gateway``
    grouped by the peer whose overlay address they go via (our site's gateway)."""
    by_via: dict[IPv4Address, list[IPv4Network]] = {}
    for dst, route in via_gateway.items():
        by_via.setdefault(route.via, []).append(dst)
    out: dict[IPv4Network, tuple[IPv4Network, ...]] = {}
    if not by_via:
        return out
    owner = {r.overlay_ip: s for s, r in leases.items() if r.overlay_ip in by_via}
    for via, dsts in by_via.items():
        if via in owner:
            out[owner[via]] = tuple(sorted(dsts, key=_net_key))
    return out


@dataclass(frozen=True)
class VxlanPeers:
    """The VXLAN plan's peers, as the ingress policy needs them: their records
    (``leases``), chosen paths (``paths``: the peers programmed), the subnets that changed
    since the last plan (None: any may have), the routes via our site's gateway and our
    ``site`` (None: treat every peer as of another site), and the addresses we left
    that still linger (``lingering``)."""

    leases: Mapping[IPv4Network, LeaseRecord]
    paths: Mapping[IPv4Network, PeerPath]
    changed: Collection[IPv4Network] | None = None
    via_gateway: Mapping[IPv4Network, RouteEntry] = field(default_factory=dict)
    site: str | None = None
    lingering: Mapping[IPv4Network, IPv4Address] = field(default_factory=dict)


class IngressPlanner:
    """Turns the VXLAN plan into ``IngressPolicy`` values and the deltas between them.

    ``plan`` looks at every programmed peer; ``update`` only at ``changed`` ones (the
    result is the same as a full ``plan`` of the same inputs). Entries are memoised by
    the identity of the lease record, the chosen and lingering addresses and the carried
    prefixes.
    """

    def __init__(self) -> None:
        self._memo: dict[IPv4Network, tuple[_MemoKey, PeerIngress]] = {}
        self._carried: Mapping[IPv4Network, tuple[IPv4Network, ...]] = {}
        self._lingering: Mapping[IPv4Network, IPv4Address] = {}
        self._site: str | None = None
        self.policy: IngressPolicy | None = None

    def _entry(
        self, subnet: IPv4Network, peer: LeaseRecord, path: PeerPath
    ) -> tuple[PeerIngress, bool]:
        """The entry of ``subnet``, and whether it is the memoised one (which the last
        policy holds: every entry made here goes into the policy in the same call)."""
        carried = self._carried.get(subnet, ()) if self._carried else ()
        lingering = self._lingering.get(subnet) if self._lingering else None
        hit = self._memo.get(subnet)
        if hit is not None:
            key = hit[0]
            if key[0] is peer and key[1:] == (path.address, lingering, carried):
                return hit[1], True
        same_site = self._site is not None and peer.site == self._site
        entry = peer_ingress(peer, path.address, carried, same_site=same_site, lingering=lingering)
        if hit is not None and hit[1] == entry:
            entry = hit[1]  # same content: keep the object the policy already holds
        self._memo[subnet] = ((peer, path.address, lingering, carried), entry)
        return entry, False

    def plan(
        self,
        port: int,
        device: str,
        leases: Mapping[IPv4Network, LeaseRecord],
        paths: Mapping[IPv4Network, PeerPath],
        carried: Mapping[IPv4Network, tuple[IPv4Network, ...]] | None = None,
        site: str | None = None,
        lingering: Mapping[IPv4Network, IPv4Address] | None = None,
    ) -> tuple[IngressPolicy, IngressDelta]:
        """The policy for the peers of ``paths`` (the VXLAN plan's peers and chosen paths;
        their records in ``leases``; ``site``: ours; ``lingering``: addresses we left a
        moment ago), and the delta from the last policy."""
        self._carried, self._lingering = carried or {}, lingering or {}
        if site != self._site:
            self._site = site
            self._memo.clear()  # entries depend on which peers share our site
        old, fresh = self.policy, False
        if old is None or not old.same_rules(IngressPolicy(port, device)):
            old, fresh = IngressPolicy(port, device), True
        changes: dict[IPv4Network, PeerIngress | None] = {}
        for subnet, path in paths.items():
            peer = leases.get(subnet)
            if peer is None:  # deleted while the kernel was written: the next pass drops it
                continue
            entry, memoised = self._entry(subnet, peer, path)
            # dict lookups hash IPv4Network in Python: skip them for memoised entries
            if (fresh or not memoised) and old.peers.get(subnet) is not entry:
                changes[subnet] = entry
        if len(old.peers) + len(changes) > len(paths):  # some peers may be gone
            changes.update((s, None) for s in old.peers if s not in paths)
        if len(self._memo) > len(paths):  # the memo holds every subnet of ``paths``
            for gone in [s for s in self._memo if s not in paths]:
                del self._memo[gone]
        self.policy, delta = change_policy(old, changes)
        return self.policy, delta

    def update(
        self,
        port: int,
        device: str,
        leases: Mapping[IPv4Network, LeaseRecord],
        paths: Mapping[IPv4Network, PeerPath],
        changed: Collection[IPv4Network],
        carried: Mapping[IPv4Network, tuple[IPv4Network, ...]] | None = None,
        site: str | None = None,
        lingering: Mapping[IPv4Network, IPv4Address] | None = None,
    ) -> tuple[IngressPolicy, IngressDelta] | None:
        """Like ``plan`` for the same port and device, looking only at ``changed`` subnets
        (a subnet whose lingering address came or went is among them); None when a full
        ``plan`` is needed (no policy yet, another port, device, site or carried prefixes)."""
        old = self.policy
        if old is None or not old.same_rules(IngressPolicy(port, device)):
            return None
        if (carried or {}) != self._carried or site != self._site:
            return None
        self._lingering = lingering or {}
        changes: dict[IPv4Network, PeerIngress | None] = {}
        for subnet in changed:
            path, peer = paths.get(subnet), leases.get(subnet)
            if path is None or peer is None:  # gone (perhaps while the kernel was written)
                self._memo.pop(subnet, None)
                if subnet in old.peers:
                    changes[subnet] = None
                continue
            entry, memoised = self._entry(subnet, peer, path)
            if not memoised and old.peers.get(subnet) is not entry:
                changes[subnet] = entry
        self.policy, delta = change_policy(old, changes)
        return self.policy, delta
