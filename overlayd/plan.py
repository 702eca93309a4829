"""The planner: leases + this node + path choices -> the kernel state to program.

Pure and deterministic. ``Planner`` memoises each peer's entries by the identity of its
lease record, so replanning 5,000 unchanged peers reuses the same entry objects and the
diff against the kernel (which keeps those objects once applied) is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlayd.kernel_state import FdbEntry, KernelState, NeighEntry, RouteEntry
from overlayd.lease import LeaseRecord


@dataclass(frozen=True)
class PeerPath:
    """The underlay address chosen for a peer, and why."""

    address: IPv4Address
    kind: str  # "private" | "public"
    reason: str


def guess_path(me: LeaseRecord, peer: LeaseRecord) -> PeerPath:
    """Best guess by site: same site -> the peer's private address, else its public one."""
    if peer.site == me.site and peer.private_ips:
        return PeerPath(peer.private_ips[0], "private", "same site")
    if peer.site != me.site and peer.public_ips:
        return PeerPath(peer.public_ips[0], "public", "other site")
    return PeerPath(peer.public_ip, "public", "lease PublicIP")


@dataclass(frozen=True)
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


class Planner:
    """Plans the VXLAN entries for one node; keeps a per-peer memo between calls."""

    def __init__(self) -> None:
        self._memo: dict[IPv4Network, tuple[LeaseRecord, IPv4Address, PeerEntries]] = {}

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
    ) -> Plan:
        """Entries for every usable peer in ``leases`` (``me`` and unusable peers skipped).

        ``paths`` holds verified path choices by peer subnet; peers without one get
        ``guess_path``. Conflicts (two peers claiming one VTEP MAC or overlay address)
        are resolved deterministically: the lower subnet wins, the other is skipped.
        """
        chosen: dict[IPv4Network, PeerPath] = {}
        entries_of: dict[IPv4Network, PeerEntries] = {}
        owner_of: dict[object, IPv4Network] = {me.vtep_mac: me.subnet, me.overlay_ip: me.subnet}
        skipped: list[tuple[IPv4Network, str]] = []
        # No sort of all leases (slow for thousands of IPv4Network): conflicts are settled
        # by comparing the two subnets involved, which gives the same result in any order.
        for subnet, peer in leases.items():
            if subnet == me.subnet or (peer.node_id == me.node_id and peer.node == me.node):
                continue
            reason = _unusable(me, peer)
            if reason is None and subnet.overlaps(me.subnet):
                reason = f"overlaps this node's subnet {me.subnet}"
            for key in (peer.vtep_mac, peer.overlay_ip):
                holder = owner_of.get(key)
                if reason is not None or holder is None:
                    continue
                if holder == me.subnet or holder < subnet:
                    reason = f"{key} already used by the node of {holder}"
                else:  # we win over the current holder: it becomes the skipped one
                    skipped.append((holder, f"{key} already used by the node of {subnet}"))
                    entries_of.pop(holder, None)
                    chosen.pop(holder, None)
                    for k in [k for k, v in owner_of.items() if v == holder]:
                        del owner_of[k]
            if reason is not None:
                skipped.append((subnet, reason))
                continue
            path = (paths or {}).get(subnet) or guess_path(me, peer)
            entries_of[subnet] = self._entries(peer, path.address)
            owner_of[peer.vtep_mac] = owner_of[peer.overlay_ip] = subnet
            chosen[subnet] = path
        state = KernelState(
            routes={e.route.dst: e.route for e in entries_of.values()},
            neighs={e.neigh.ip: e.neigh for e in entries_of.values()},
            fdbs={e.fdb.mac: e.fdb for e in entries_of.values()},
        )
        for gone in self._memo.keys() - leases.keys():
            del self._memo[gone]
        return Plan(state, chosen, tuple(sorted(set(skipped))))


def _unusable(me: LeaseRecord, peer: LeaseRecord) -> str | None:
    if peer.backend_type != me.backend_type:
        return f"backend {peer.backend_type!r} differs from ours ({me.backend_type!r})"
    if peer.vni != me.vni:
        return f"VNI {peer.vni} differs from ours ({me.vni})"
    return None
