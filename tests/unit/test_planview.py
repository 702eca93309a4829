"""``overlayctl plan``'s planning (pure): the backend and topology decide what goes where."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from typing import Any

from overlayd.cli.planview import wireguard_json, wireguard_lines
from overlayd.planning.node import plan_node
from overlayd.values.config import VXLAN, VXLAN_WIREGUARD, WIREGUARD, NetworkConfig, parse_config
from overlayd.values.gateway_state import GatewayClaim
from overlayd.values.kernel_state import RouteEntry
from overlayd.values.lease import LeaseRecord
from tests.builders import site_lease as lease


def config(backend: str, **extra: Any) -> NetworkConfig:
    return parse_config(
        json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": backend}, **extra})
    )


def records(backend: str) -> dict[IPv4Network, LeaseRecord]:
    found = (lease(1, "a", backend), lease(2, "a", backend), lease(3, "b", backend, "203.0.113.3"),
             lease(4, "b", backend, "203.0.113.4"))  # fmt: skip
    return {r.subnet: r for r in found}


def net(n: int) -> IPv4Network:
    return IPv4Network(f"10.244.{n}.0/24")


def test_vxlan_programs_everyone_over_vxlan() -> None:
    leases = records(VXLAN)
    found = plan_node(config(VXLAN), leases[net(1)], leases)
    assert sorted(found.vxlan.paths) == [net(2), net(3), net(4)]
    assert found.wireguard.peers == {} and wireguard_lines(found.wireguard) == []
    assert found.peers == 3 and found.skipped == []


PSK = "RmlmdHlUd29CeXRlc09mQVByZVNoYXJlZEtleUhlcmU="  # 32 bytes of base64


def test_vxlan_wireguard_splits_by_site() -> None:
    leases = records(VXLAN_WIREGUARD)
    cfg = parse_config(json.dumps({
        "Network": "10.244.0.0/16", "Backend": {"Type": VXLAN_WIREGUARD, "PSK": PSK},
    }))  # fmt: skip
    found = plan_node(cfg, leases[net(1)], leases)
    assert sorted(found.vxlan.paths) == [net(2)]
    assert list(found.wireguard.peers) == [net(3), net(4)]
    assert found.peers == 3
    shown = wireguard_json(found.wireguard)
    assert [p["endpoint"] for p in shown["peers"]] == ["203.0.113.3:51820", "203.0.113.4:51820"]
    text = json.dumps(shown) + "\n".join(wireguard_lines(found.wireguard))
    assert PSK not in text and "preshared" not in text.lower()  # the key is never shown
    assert (
        wireguard_lines(found.wireguard)[-1]
        == "wireguard route 10.244.4.0/24 via 10.244.4.0 onlink"
    )


def test_wireguard_has_no_vxlan_peer() -> None:
    leases = records(WIREGUARD)
    found = plan_node(config(WIREGUARD), leases[net(1)], leases)
    assert found.vxlan.paths == {} and list(found.wireguard.peers) == [net(2), net(3), net(4)]


def test_gateway_member_routes_other_sites_through_its_gateway() -> None:
    leases = records(VXLAN_WIREGUARD)
    cfg = config(VXLAN_WIREGUARD, Topology={"Mode": "gateway"})
    claims = {
        "a": GatewayClaim("a", "node2", "id2", net(2)),
        "b": GatewayClaim("b", "node3", "id3", net(3)),
    }
    found = plan_node(cfg, leases[net(1)], leases, claims=claims)
    assert found.wireguard.peers == {}  # a member holds no WireGuard peer
    routes = found.vxlan.state.routes
    gateway = leases[net(2)].overlay_ip
    assert routes[net(3)] == RouteEntry(net(3), gateway) and routes[net(4)].via == gateway
    assert sorted(found.vxlan.paths) == [net(2)]
