"""Which peers of other sites this node reaches over plain VXLAN, and the warning about it.

VXLAN neither encrypts nor authenticates: between sites its frames cross the internet
readable by anyone on the path, and anyone who can send from (or spoof) a peer's underlay
address can inject frames into the overlay. That is the ``vxlan`` backend's behaviour with
peers in other sites; ``vxlan+wireguard`` carries those peers over WireGuard instead.
The daemon warns once when this becomes true (docs/backends.md, "Why the default is
vxlan+wireguard"). Pure: the daemon decides when to log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from overlayd.values.config import VXLAN_WIREGUARD
from overlayd.values.lease import LeaseRecord
from overlayd.values.text import quote

FIX = (
    f"use backend {VXLAN_WIREGUARD!r} (WireGuard between sites): Backend.Type in the network "
    f"config, e.g. 'overlayctl network init --network <network> --backend {VXLAN_WIREGUARD} "
    "--force', then restart every daemon"
)
"""What fixes plain VXLAN between sites; shown by the daemon's warning and by ``init``."""

SITES_SHOWN = 5  # a warning names at most this many sites (site names come from etcd)


@dataclass(frozen=True)
class PlainCrossSite:
    """Peers of other sites programmed over plain VXLAN: how many (``count``) and their
    sites (``sites``, sorted, at most ``SITES_SHOWN``; ``more_sites``: how many others).
    False when there are none."""

    count: int = 0
    sites: tuple[str, ...] = ()
    more_sites: int = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def warning(self) -> str:
        """One log line: what crosses sites in clear, why it matters, what fixes it."""
        sites = ", ".join(quote(s) for s in self.sites)
        if self.more_sites:
            sites += f" and {self.more_sites} more"
        return (
            f"{self.count} peer(s) in other sites ({sites}) are reached over plain VXLAN: "
            "traffic between sites is neither encrypted nor authenticated (anyone on the "
            "path can read it; anyone who can send from or spoof a peer's address can inject "
            f"into the overlay); {FIX}"
        )


def plain_cross_site(
    me: LeaseRecord,
    leases: Mapping[IPv4Network, LeaseRecord],
    skipped: Iterable[IPv4Network] = (),
) -> PlainCrossSite:
    """The peers of other sites than ``me``'s among those the VXLAN planner programs from
    ``leases`` (the leases given to ``Planner.plan``): every lease but ``me`` (as
    ``plan.is_me`` says) and the ``skipped`` subnets (``Plan.skipped``).

    It runs on every reconcile, over thousands of peers: one pass comparing strings only;
    hashing or ordering subnets is Python code, so the few leases not programmed (ours,
    the skipped ones) are looked up and taken back out afterwards.
    """
    per_site: dict[str, int] = {}
    for peer in leases.values():
        if peer.site != me.site and not _same_node(me, peer):
            per_site[peer.site] = per_site.get(peer.site, 0) + 1
    for subnet in {me.subnet, *skipped}:
        left_out = leases.get(subnet)
        if left_out is not None and left_out.site != me.site and not _same_node(me, left_out):
            per_site[left_out.site] -= 1
            if not per_site[left_out.site]:
                del per_site[left_out.site]
    ordered = sorted(per_site)
    return PlainCrossSite(
        count=sum(per_site.values()),
        sites=tuple(ordered[:SITES_SHOWN]),
        more_sites=max(0, len(ordered) - SITES_SHOWN),
    )


def _same_node(me: LeaseRecord, peer: LeaseRecord) -> bool:
    """``plan.is_me`` without its subnet comparison (the caller handles ``me.subnet``)."""
    return peer.node_id == me.node_id and peer.node == me.node
