"""What ``overlayctl plan`` shows: a node's ``plan_node`` result, as text or JSON.

The plan is ``overlayd.planning.node.plan_node``'s, the daemon's own, from what etcd holds;
only the probes' verdicts are missing, so paths are the guesses by site
(``paths.guess_path``) and a cross-site WireGuard endpoint is set only for a peer's
published public address, as the daemon does before its probes have verified anything.
The pre-shared key is a secret: nothing here renders it.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

from overlayd.planning.node import NodePlan
from overlayd.planning.relay import RelayPlan
from overlayd.planning.wireguard import WireGuardPlan


def plan_json(node: str, subnet: IPv4Network, plan: NodePlan) -> dict[str, Any]:
    """``overlayctl plan -o json``: every list sorted, no pre-shared key."""
    state = plan.vxlan.state
    return {
        "node": node,
        "subnet": str(subnet),
        "role": plan.role,
        "gateway": plan.gateway.node if plan.gateway else None,
        "entry_point": plan.entry_point,
        "routes": [
            {"dst": str(r.dst), "via": str(r.via), "onlink": True}
            for r in sorted(state.routes.values())
        ],
        "neighbours": [{"ip": str(n.ip), "mac": str(n.mac)} for n in sorted(state.neighs.values())],
        "fdb": [{"mac": str(f.mac), "dst": str(f.dst)} for f in sorted(state.fdbs.values())],
        "paths": {
            str(k): {"address": str(p.address), "kind": p.kind, "reason": p.reason}
            for k, p in sorted(plan.vxlan.paths.items())
        },
        "wireguard": wireguard_json(plan.wireguard),
        "relays": relays_json(plan.relays),
        "skipped": [{"subnet": str(s), "reason": r} for s, r in plan.skipped],
    }


def plan_lines(node: str, subnet: IPv4Network, backend: str, plan: NodePlan) -> list[str]:
    """``overlayctl plan``: a header, then one line per entry, peer and skipped peer."""
    state = plan.vxlan.state
    lines = [f"# plan for {node} ({subnet}), backend {backend}: {plan.peers} peers"]
    if plan.role is not None:
        gateway = plan.gateway.node if plan.gateway else "none"
        lines.append(f"# role {plan.role} (site gateway {gateway})")
    lines += [f"route {r.dst} via {r.via} onlink" for r in sorted(state.routes.values())]
    lines += [f"neigh {n.ip} lladdr {n.mac} permanent" for n in sorted(state.neighs.values())]
    lines += [f"fdb {f.mac} dst {f.dst} self permanent" for f in sorted(state.fdbs.values())]
    lines += wireguard_lines(plan.wireguard)
    lines += relay_lines(plan.relays)
    lines += [f"# skipped {s}: {reason}" for s, reason in plan.skipped]
    return lines


def _subnet_order(item: tuple[IPv4Network, Any]) -> tuple[int, int]:
    return int(item[0].network_address), item[0].prefixlen


def wireguard_json(plan: WireGuardPlan) -> dict[str, Any]:
    """The WireGuard side for ``overlayctl plan -o json`` (no pre-shared key: a secret)."""
    return {
        "peers": [
            {
                "subnet": str(subnet),
                "public_key": peer.public_key.base64,
                "endpoint": None if peer.endpoint is None else str(peer.endpoint),
                "allowed_ips": [str(a) for a in peer.allowed_ips],
                "keepalive": peer.persistent_keepalive,
            }
            for subnet, peer in sorted(plan.peers.items(), key=_subnet_order)
        ],
        "routes": [{"dst": str(r.dst), "via": str(r.via)} for r in sorted(plan.routes.values())],
    }


def wireguard_lines(plan: WireGuardPlan) -> list[str]:
    """The WireGuard side for ``overlayctl plan``, one line per peer and per route."""
    lines = []
    for subnet, peer in sorted(plan.peers.items(), key=_subnet_order):
        endpoint = "(learned from its handshake)" if peer.endpoint is None else peer.endpoint
        allowed = ",".join(str(a) for a in peer.allowed_ips)
        keepalive = f" keepalive {peer.persistent_keepalive}" if peer.persistent_keepalive else ""
        lines.append(
            f"wireguard peer {subnet} key {peer.public_key.base64} endpoint {endpoint} "
            f"allowed-ips {allowed}{keepalive}"
        )
    lines += [f"wireguard route {r.dst} via {r.via} onlink" for r in sorted(plan.routes.values())]
    return lines


def relays_json(plan: RelayPlan) -> dict[str, Any]:
    """The relays for ``overlayctl plan -o json``: ``applied`` false offline, where the
    plan says which relay a peer would get if no direct path to it verifies."""
    return {
        "applied": plan.applied,
        "via": [
            {"subnet": str(s), "relay": c.node, "relay_subnet": str(c.relay), "rtt_ms": c.rtt_ms}
            for s, c in sorted(plan.chosen.items(), key=_subnet_order)
        ],
        "none": [{"subnet": str(s), "reason": r} for s, r in sorted(plan.none.items())],
    }


def relay_lines(plan: RelayPlan) -> list[str]:
    """The relays for ``overlayctl plan``, one line per relayed (or relayable) peer."""
    when = "" if plan.applied else "if no direct path verifies: "
    lines = [
        f"# relay {s}: {when}via relay {c.node} ({c.relay}, combined rtt {c.rtt_ms} ms)"
        for s, c in sorted(plan.chosen.items(), key=_subnet_order)
    ]
    return lines + [f"# relay {s}: none: {r}" for s, r in sorted(plan.none.items())]
