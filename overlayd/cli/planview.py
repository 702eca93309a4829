"""What ``overlayctl plan`` shows: a node's VXLAN entries and its WireGuard side.

Planned with the daemon's own planners (``plan_wireguard``, ``plan_gateway``, ``Planner``)
from what etcd holds; only the probes' verdicts are missing, so paths are the guesses by
site (``paths.guess_path``) and a cross-site WireGuard endpoint is set only for a peer's
published public address, as the daemon does before its probes have verified anything.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.config import NetworkConfig
from overlayd.gateway_state import GatewayClaim
from overlayd.kernel_state import RouteEntry
from overlayd.lease import LeaseRecord
from overlayd.lease_rules import check_scope
from overlayd.plan import Plan, Planner
from overlayd.plan_gateway import plan_gateway
from overlayd.plan_wireguard import WireGuardPlan, plan_wireguard


@dataclass(frozen=True)
class NodePlan:
    """``vxlan``: the VXLAN device's plan (routes through our site's gateway included);
    ``wireguard``: the WireGuard peers and routes (none for the ``vxlan`` backend)."""

    vxlan: Plan
    wireguard: WireGuardPlan
    refused: tuple[tuple[IPv4Network, str], ...] = ()  # records the scope check refused

    @property
    def peers(self) -> int:
        return len(self.vxlan.paths) + len(self.wireguard.peers)

    @property
    def skipped(self) -> list[tuple[IPv4Network, str]]:
        return sorted((*self.vxlan.skipped, *self.wireguard.skipped, *self.refused))


def node_plan(
    cfg: NetworkConfig,
    me: LeaseRecord,
    records: Mapping[IPv4Network, LeaseRecord],
    claims: Mapping[str, GatewayClaim],
    *,
    created: Mapping[IPv4Network, int] | None = None,
    unguessable: Collection[IPv4Address] = frozenset(),
) -> NodePlan:
    """``me``'s plan under ``cfg``'s backend and topology (``claims``: elected gateways;
    ``created`` and ``unguessable``: as the planners'). Records the daemon's scope check
    refuses are left out and listed as skipped, as the daemon does."""
    refused = {s: why for s, r in records.items() if (why := check_scope(r, cfg.network))}
    usable = {s: r for s, r in records.items() if s not in refused}
    via_gateway: dict[IPv4Network, RouteEntry] = {}
    if cfg.topology.uses_gateways:
        topo = plan_gateway(cfg, me, usable, claims, created=created, unguessable=unguessable)
        wireguard, via_gateway = topo.wireguard, topo.via_gateway
    else:
        wireguard = plan_wireguard(
            me, usable, cfg.backend, network=cfg.network, created=created, unguessable=unguessable
        )
    vxlan = Planner().plan(
        me, wireguard.vxlan_leases, network=cfg.network, created=created, unguessable=unguessable
    )
    if via_gateway:  # other sites' subnets, through our gateway (as the daemon does)
        routes = {**vxlan.state.routes, **via_gateway}
        vxlan = replace(vxlan, state=replace(vxlan.state, routes=routes))
    return NodePlan(vxlan, wireguard, tuple(sorted(refused.items())))


def wireguard_json(plan: WireGuardPlan) -> dict[str, Any]:
    """The WireGuard side for ``overlayctl plan -o json`` (no pre-shared key: a secret)."""
    return {
        "peers": [
            {
                "subnet": str(subnet),
                "public_key": peer.public_key.base64,
                "endpoint": None if peer.endpoint is None else str(peer.endpoint),
                "allowed_ips": [str(a) for a in peer.allowed_ips],
            }
            for subnet, peer in plan.peers.items()
        ],
        "routes": [{"dst": str(r.dst), "via": str(r.via)} for r in plan.routes.values()],
    }


def wireguard_lines(plan: WireGuardPlan) -> list[str]:
    """The WireGuard side for ``overlayctl plan``, one line per peer and per route."""
    lines = []
    for subnet, peer in plan.peers.items():
        endpoint = "(learned from its handshake)" if peer.endpoint is None else peer.endpoint
        allowed = ",".join(str(a) for a in peer.allowed_ips)
        lines.append(
            f"wireguard peer {subnet} key {peer.public_key.base64} endpoint {endpoint} "
            f"allowed-ips {allowed}"
        )
    lines += [f"wireguard route {r.dst} via {r.via} onlink" for r in plan.routes.values()]
    return lines
