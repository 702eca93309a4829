"""The planner: leases + this node + path choices -> the kernel state to program.

Pure and deterministic. ``Planner`` memoises each peer's entries by the identity of its
lease record, so replanning 5,000 unchanged peers reuses the same entry objects and the
diff against the kernel (which keeps those objects once applied) is cheap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlayd.values.kernel_state import FdbEntry, KernelState, MacAddress, NeighEntry, RouteEntry
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import NOT_GUESSED, PeerPath, guess_path


@dataclass(frozen=True, slots=True)
class PeerEntries:
    route: RouteEntry
    neigh: NeighEntry
    fdb: FdbEntry


def peer_entries(peer: LeaseRecord, underlay: IPv4Address) -> PeerEntries:
    """flannel's three entries for a VXLAN peer."""
    return PeerEntries(
        RouteEntry(peer.subnet, peer.overlay_ip),
        NeighEntry(peer.overlay_ip, peer.vtep_mac),
        FdbEntry(peer.vtep_mac, underlay),
    )


@dataclass(frozen=True)
class Plan:
    state: KernelState
    paths: dict[IPv4Network, PeerPath]
    skipped: tuple[tuple[IPv4Network, str], ...]  # peers not programmed, and why


@dataclass(frozen=True, slots=True)
class Touched:
    """Keys an incremental update may have changed in the desired state."""

    routes: frozenset[IPv4Network]
    neighs: frozenset[IPv4Address]
    fdbs: frozenset[MacAddress]


class Planner:
    """Plans the VXLAN entries for one node.

    ``plan`` replans everything; ``update`` replans only some peers and patches the last
    plan in place — the result is the same as a full ``plan`` of the same inputs, and
    ``update`` declines (returns None) whenever it could not guarantee that.
    """

    def __init__(self) -> None:
        self._memo: dict[IPv4Network, tuple[LeaseRecord, IPv4Address, PeerEntries]] = {}
        self._last: Plan | None = None
        self._basis: tuple[LeaseRecord, IPv4Network | None, frozenset[IPv4Address]] | None = None
        self._contested: set[object] = set()  # keys claimed by more than one node

    def _entries(self, peer: LeaseRecord, underlay: IPv4Address) -> PeerEntries:
        hit = self._memo.get(peer.subnet)
        if hit is not None and hit[0] is peer and hit[1] == underlay:
            return hit[2]
        entries = peer_entries(peer, underlay)
        self._memo[peer.subnet] = (peer, underlay, entries)
        return entries

    def plan(
        self,
        me: LeaseRecord,
        leases: Mapping[IPv4Network, LeaseRecord],
        paths: Mapping[IPv4Network, PeerPath] | None = None,
        network: IPv4Network | None = None,
        created: Mapping[IPv4Network, int] | None = None,
        unguessable: Collection[IPv4Address] = frozenset(),
    ) -> Plan:
        """Entries for every usable peer in ``leases`` (``me`` and unusable peers skipped).

        ``paths`` holds verified path choices by peer subnet; peers without one get
        ``guess_path``. Peers outside ``network``, with another subnet length, backend or
        VNI are skipped; conflicts (two peers claiming one VTEP MAC or overlay address)
        are resolved deterministically: the older lease wins (``created``: the etcd
        create_revision by subnet, see ``conflict_order``), the other is skipped; a peer
        claiming one of ours is always skipped. ``unguessable`` addresses (our etcd
        endpoints) are never guessed: a peer with nothing else waits for a verified path.
        """
        usable, uses, skipped = _usable_peers(me, leases, network)
        self._contested = _settle_conflicts(me, usable, uses, created, skipped)
        chosen: dict[IPv4Network, PeerPath] = {}
        entries_of: dict[IPv4Network, PeerEntries] = {}
        for subnet, peer in usable.items():
            path = (paths or {}).get(subnet) or guess_path(me, peer, unguessable)
            if path is None:
                skipped.append((subnet, NOT_GUESSED))
                continue
            entries_of[subnet] = self._entries(peer, path.address)
            chosen[subnet] = path
        state = KernelState(
            routes={e.route.dst: e.route for e in entries_of.values()},
            neighs={e.neigh.ip: e.neigh for e in entries_of.values()},
            fdbs={e.fdb.mac: e.fdb for e in entries_of.values()},
        )
        for gone in self._memo.keys() - leases.keys():
            del self._memo[gone]
        self._last = Plan(state, chosen, tuple(sorted(skipped)))
        self._basis = (me, network, frozenset(unguessable))
        return self._last

    def update(
        self,
        me: LeaseRecord,
        leases: Mapping[IPv4Network, LeaseRecord],
        changed: set[IPv4Network],
        paths: Mapping[IPv4Network, PeerPath] | None = None,
        network: IPv4Network | None = None,
        unguessable: Collection[IPv4Address] = frozenset(),
    ) -> tuple[Plan, Touched] | None:
        """Replan only the peers of ``changed`` subnets (added, altered or gone).

        Returns the last plan, patched in place, and the keys that may differ; None when
        a full ``plan`` is needed (no plan yet, another ``me`` or network, or a change
        that involves a conflict or a skipped peer).
        """
        last = self._last
        if last is None or self._basis is None or self._basis[0] is not me:
            return None
        if self._basis[1] != network or self._basis[2] != unguessable:
            return None
        skipped_subnets = {s for s, _ in last.skipped}
        state = last.state
        ours = {me.vtep_mac, me.overlay_ip}
        touched = _TouchedSets()
        for subnet in changed:
            peer = leases.get(subnet)
            if subnet in skipped_subnets or (peer is not None and is_me(me, subnet, peer)):
                return None
            if not self._unprogram(subnet, last, touched):
                return None
            if peer is None:
                self._memo.pop(subnet, None)
                continue
            if unusable_reason(me, peer, network) is not None:
                return None
            if (
                peer.vtep_mac in state.fdbs
                or peer.overlay_ip in state.neighs
                or {peer.vtep_mac, peer.overlay_ip} & (ours | self._contested)
            ):
                return None  # a new conflict: settle it with a full plan
            path = (paths or {}).get(subnet) or guess_path(me, peer, unguessable)
            if path is None:
                return None  # skipped: a full plan records why
            entries = self._entries(peer, path.address)
            state.routes[subnet] = entries.route
            state.neighs[entries.neigh.ip] = entries.neigh
            state.fdbs[entries.fdb.mac] = entries.fdb
            last.paths[subnet] = path
            touched.add(subnet, entries)
        return last, touched.frozen()

    def _unprogram(self, subnet: IPv4Network, last: Plan, touched: _TouchedSets) -> bool:
        """Take the entries of ``subnet``, if programmed, out of ``last``; False (nothing
        taken) if they hold a contested key: only a full plan settles a conflict."""
        old = self._memo.get(subnet)
        state = last.state
        if old is None or subnet not in state.routes:
            return True
        old_entries = old[2]
        if {old_entries.fdb.mac, old_entries.route.via} & self._contested:
            return False
        touched.add(subnet, old_entries)
        del state.routes[subnet], state.neighs[old_entries.neigh.ip]
        del state.fdbs[old_entries.fdb.mac]
        last.paths.pop(subnet, None)
        return True


class _TouchedSets:
    """The keys ``Planner.update`` has changed so far (``frozen()``: the ``Touched``)."""

    __slots__ = ("fdbs", "neighs", "routes")

    def __init__(self) -> None:
        self.routes: set[IPv4Network] = set()
        self.neighs: set[IPv4Address] = set()
        self.fdbs: set[MacAddress] = set()

    def add(self, subnet: IPv4Network, entries: PeerEntries) -> None:
        self.routes.add(subnet)
        self.neighs.add(entries.neigh.ip)
        self.fdbs.add(entries.fdb.mac)

    def frozen(self) -> Touched:
        return Touched(frozenset(self.routes), frozenset(self.neighs), frozenset(self.fdbs))


def _usable_peers(
    me: LeaseRecord, leases: Mapping[IPv4Network, LeaseRecord], network: IPv4Network | None
) -> tuple[dict[IPv4Network, LeaseRecord], Counter[object], list[tuple[IPv4Network, str]]]:
    """The peers that can be programmed, how many of them claim each VTEP MAC and overlay
    address, and the others with the reason (``me`` left out)."""
    skipped: list[tuple[IPv4Network, str]] = []
    usable: dict[IPv4Network, LeaseRecord] = {}
    uses: Counter[object] = Counter()
    for subnet, peer in leases.items():
        if is_me(me, subnet, peer):
            continue
        reason = unusable_reason(me, peer, network)
        if reason is not None:
            skipped.append((subnet, reason))
            continue
        usable[subnet] = peer
        uses[peer.vtep_mac] += 1
        uses[peer.overlay_ip] += 1
    return usable, uses, skipped


def _settle_conflicts(
    me: LeaseRecord,
    usable: dict[IPv4Network, LeaseRecord],
    uses: Counter[object],
    created: Mapping[IPv4Network, int] | None,
    skipped: list[tuple[IPv4Network, str]],
) -> set[object]:
    """Remove from ``usable`` (into ``skipped``) every peer that loses a conflict; return
    the contested keys.

    Two peers claiming one VTEP MAC or overlay address (or one of ours): the older lease
    wins (``conflict_order``), we always keep ours. Only the contested peers are sorted;
    sorting thousands of IPv4Network objects on every plan would be slow.
    """
    owner: dict[object, IPv4Network] = {me.vtep_mac: me.subnet, me.overlay_ip: me.subnet}
    contested = sorted(
        (
            s
            for s, p in usable.items()
            if uses[p.vtep_mac] > 1
            or uses[p.overlay_ip] > 1
            or p.vtep_mac in owner
            or p.overlay_ip in owner
        ),
        key=lambda s: conflict_order(s, created),
    )
    keys: set[object] = {k for s in contested for k in (usable[s].vtep_mac, usable[s].overlay_ip)}
    for subnet in contested:
        peer = usable[subnet]
        taken = [k for k in (peer.vtep_mac, peer.overlay_ip) if k in owner]
        if taken:
            holder = owner[taken[0]]
            by = "this node" if holder == me.subnet else usable[holder].node
            skipped.append((subnet, f"{peer.node}'s {taken[0]} already used by {by} ({holder})"))
            del usable[subnet]
        else:
            owner[peer.vtep_mac] = owner[peer.overlay_ip] = subnet
    return keys


def conflict_order(
    subnet: IPv4Network, created: Mapping[IPv4Network, int] | None
) -> tuple[int, int, int]:
    """Who wins when two leases claim one key (lowest first): the older lease (etcd
    create_revision; unknown counts as 0), then the lower subnet. Older wins so that a
    newcomer copying a live peer's VTEP MAC, overlay address or key never knocks it out."""
    return (created or {}).get(subnet, 0), int(subnet.network_address), subnet.prefixlen


def is_me(me: LeaseRecord, subnet: IPv4Network, peer: LeaseRecord) -> bool:
    """Whether ``peer`` (at ``subnet``) is this node itself, under any subnet."""
    return subnet == me.subnet or (peer.node_id == me.node_id and peer.node == me.node)


def unusable_reason(me: LeaseRecord, peer: LeaseRecord, network: IPv4Network | None) -> str | None:
    """Why ``peer`` cannot be programmed at all (None: it can); shared by both planners."""
    if peer.backend_type != me.backend_type:
        return f"backend {peer.backend_type!r} differs from ours ({me.backend_type!r})"
    if peer.vni != me.vni:
        return f"VNI {peer.vni} differs from ours ({me.vni})"
    # integer arithmetic: IPv4Network.overlaps/subnet_of cache properties on every
    # subnet, which costs memory per peer at thousands of peers
    if _contains(peer.subnet, me.subnet) or _contains(me.subnet, peer.subnet):
        return f"overlaps this node's subnet {me.subnet}"
    if peer.subnet.prefixlen != me.subnet.prefixlen:
        return f"subnet length /{peer.subnet.prefixlen} differs from the network's"
    if network is not None and not _contains(network, peer.subnet):
        return f"outside the network {network}"
    return None


def _contains(outer: IPv4Network, inner: IPv4Network) -> bool:
    """``inner`` lies within ``outer`` (for aligned networks: they overlap iff one contains)."""
    if inner.prefixlen < outer.prefixlen:
        return False
    shift = 32 - outer.prefixlen
    return int(inner.network_address) >> shift == int(outer.network_address) >> shift
