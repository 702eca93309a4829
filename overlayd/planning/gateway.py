"""The hybrid topology (pure): one gateway per site meshes with the other sites.

Per site, its *entry points* are its elected gateway (gateway mode) or every host (mesh
mode). An entry point holds WireGuard peers with the entry points of the other sites; a
remote gateway's peer carries every subnet of its site (AllowedIPs and routes). A host
of a gateway-mode site that is not its gateway holds no WireGuard peer at all: it
reaches other sites through its gateway, over the in-site VXLAN path. Inside a site,
everyone is a VXLAN peer of everyone, as in ``vxlan+wireguard`` mode.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.wireguard import WireGuardPlan, plan_wireguard
from overlayd.values.config import GATEWAY, NetworkConfig
from overlayd.values.gateway_state import GatewayClaim
from overlayd.values.kernel_state import RouteEntry
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PeerPath


@dataclass(frozen=True)
class GatewayPlan:
    """``wireguard``: this node's WireGuard side (no peers unless it is an entry point);
    ``via_gateway``: routes on the VXLAN device to other sites' subnets through our
    gateway (non-gateway members only); ``role`` and ``gateway`` describe the node."""

    wireguard: WireGuardPlan
    via_gateway: dict[IPv4Network, RouteEntry]
    role: str  # "gateway" | "member" | "mesh" | "waiting" (gateway site, none elected)
    gateway: GatewayClaim | None


def entry_points(
    cfg: NetworkConfig,
    leases: Mapping[IPv4Network, LeaseRecord],
    gateways: Mapping[str, GatewayClaim],
    site: str,
) -> list[LeaseRecord]:
    """The hosts of ``site`` that other sites peer with."""
    if cfg.topology.mode_of(site) != GATEWAY:
        return [r for r in leases.values() if r.site == site]
    claim = gateways.get(site)
    holder = leases.get(claim.subnet) if claim is not None else None
    if holder is None or claim is None or holder.node_id != claim.node_id:
        return []
    return [holder]


def plan_gateway(
    cfg: NetworkConfig,
    me: LeaseRecord,
    leases: Mapping[IPv4Network, LeaseRecord],
    gateways: Mapping[str, GatewayClaim],
    paths: Mapping[IPv4Network, PeerPath] | None = None,
    *,
    verified: Collection[IPv4Network] = frozenset(),
    created: Mapping[IPv4Network, int] | None = None,
    unguessable: Collection[IPv4Address] = frozenset(),
) -> GatewayPlan:
    """This node's plan in a network whose topology uses gateways (``created`` and
    ``unguessable``: as ``plan_wireguard``)."""
    sites = sorted({r.site for r in leases.values()} | {me.site})
    subnets_of = {s: sorted(r.subnet for r in leases.values() if r.site == s) for s in sites}
    my_mode = cfg.topology.mode_of(me.site)
    my_claim = gateways.get(me.site)
    if my_mode != GATEWAY:
        role = "mesh"
    elif my_claim is None or my_claim.subnet not in leases:
        role = "waiting"
    else:
        role = "gateway" if my_claim.node_id == me.node_id else "member"
    wanted = {s: r for s, r in leases.items() if r.site == me.site}
    remote_gateways: dict[IPv4Network, str] = {}
    if role in ("gateway", "mesh"):
        for site in sites:
            if site == me.site:
                continue
            for entry in entry_points(cfg, leases, gateways, site):
                wanted[entry.subnet] = entry
                if cfg.topology.mode_of(site) == GATEWAY:
                    remote_gateways[entry.subnet] = site
    wireguard = plan_wireguard(
        me, wanted, cfg.backend, paths, verified=verified, network=cfg.network,
        created=created, unguessable=unguessable,
    )  # fmt: skip
    for subnet, site in remote_gateways.items():
        peer = wireguard.peers.get(subnet)
        if peer is None:
            continue
        site_subnets = tuple(subnets_of[site])
        wireguard.peers[subnet] = replace(peer, allowed_ips=site_subnets)
        via = leases[subnet].overlay_ip
        for member in site_subnets:
            wireguard.routes.setdefault(member, RouteEntry(member, via))
    via_gateway: dict[IPv4Network, RouteEntry] = {}
    if role == "member":
        assert my_claim is not None
        via = leases[my_claim.subnet].overlay_ip
        for site in sites:
            if site != me.site:
                for subnet in subnets_of[site]:
                    via_gateway[subnet] = RouteEntry(subnet, via)
    return GatewayPlan(wireguard, via_gateway, role, my_claim)
