"""The gateway topology's pure parts: config, stored state, and the planner."""

from __future__ import annotations

import itertools

import pytest

from overlayd.planning.gateway import entry_points, plan_gateway
from overlayd.values.config import parse_config
from overlayd.values.errors import ConfigError
from overlayd.values.gateway_state import GatewayClaim, GatewayState, HealthReport
from overlayd.values.kernel_state import RouteEntry
from overlayd.values.keys import PrivateKey
from overlayd.values.lease import LeaseRecord
from tests.builders import node_lease

BASE = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan+wireguard"}'
CFG = parse_config(BASE + ', "Topology": {"Mode": "gateway", "Sites": {"lab": "mesh"}}}')


def host(n: int, site: str) -> LeaseRecord:
    return node_lease(
        n,
        f"198.51.100.{n}",
        node=f"h{n}",
        site=site,
        private_ips=(f"10.0.0.{n}",),
        public_ips=(f"198.51.100.{n}",),
        backend_type="vxlan+wireguard",
        public_key=PrivateKey.generate().public_key().base64,
        probe_port=8473,
        wireguard_port=51820,
    )


A = [host(1, "a"), host(2, "a"), host(3, "a")]
B = [host(11, "b"), host(12, "b")]
LAB = [host(21, "lab"), host(22, "lab")]
LEASES = {r.subnet: r for r in A + B + LAB}
CLAIMS = {
    "a": GatewayClaim("a", "h1", "id1", A[0].subnet),
    "b": GatewayClaim("b", "h12", "id12", B[1].subnet),
}


def test_topology_config() -> None:
    assert CFG.topology.mode_of("a") == "gateway" and CFG.topology.mode_of("lab") == "mesh"
    assert parse_config(CFG.to_json()) == CFG
    assert not parse_config(BASE + "}").topology.uses_gateways


@pytest.mark.parametrize(
    ("topology", "backend", "match"),
    [
        ('{"Mode": "star"}', "vxlan+wireguard", "Topology.Mode must be one of"),
        ('{"Sites": {"a": 3}}', "vxlan+wireguard", "Topology.Sites.a"),
        ('"gateway"', "vxlan+wireguard", "Topology must be an object"),
        ('{"Mode": "gateway"}', "wireguard", "needs Backend.Type 'vxlan\\+wireguard'"),
        ('{"Mode": "mesh", "Sites": {"a": "gateway"}}', "vxlan", "needs Backend.Type"),
    ],
)
def test_topology_config_errors(topology: str, backend: str, match: str) -> None:
    network = '"Network": "10.244.0.0/16"'
    text = f'{{{network}, "Backend": {{"Type": "{backend}"}}, "Topology": {topology}}}'
    with pytest.raises(ConfigError, match=match):
        parse_config(text)


def test_gateway_state_absorbs_claims_reports_and_ignores_garbage() -> None:
    state = GatewayState()
    state.absorb("site/a", CLAIMS["a"].to_json().encode())
    report = HealthReport("a", "id2", "h2", "id1")
    state.absorb("health/a/id2", report.to_json().encode())
    state.absorb("site/b", b"{not json")
    state.absorb("health/a/id3", b'{"Site": "a"}')
    assert state.claims == {"a": CLAIMS["a"]}
    assert state.blame("a", "id1") == [report]
    assert state.blame("a", "id2") == []
    state.absorb("health/a/id2", None)
    state.absorb("site/a", None)
    assert state.claims == {} and state.blame("a", "id1") == []


def test_entry_points() -> None:
    assert [r.node for r in entry_points(CFG, LEASES, CLAIMS, "a")] == ["h1"]
    assert sorted(r.node for r in entry_points(CFG, LEASES, CLAIMS, "lab")) == ["h21", "h22"]
    assert entry_points(CFG, LEASES, {}, "a") == []  # no gateway elected yet
    stale = {"a": GatewayClaim("a", "h1", "other-id", A[0].subnet)}
    assert entry_points(CFG, LEASES, stale, "a") == []  # the claim is not this lease's node


def test_gateway_peers_with_entry_points_and_carries_site_subnets() -> None:
    plan = plan_gateway(CFG, A[0], LEASES, CLAIMS)
    assert plan.role == "gateway"
    wg = plan.wireguard
    assert sorted(wg.peers) == sorted([B[1].subnet, LAB[0].subnet, LAB[1].subnet])
    assert wg.peers[B[1].subnet].allowed_ips == tuple(sorted(r.subnet for r in B))
    assert wg.peers[LAB[0].subnet].allowed_ips == (LAB[0].subnet,)
    assert wg.routes[B[0].subnet] == RouteEntry(B[0].subnet, B[1].overlay_ip)
    assert set(wg.vxlan_leases) == {r.subnet for r in A}
    assert plan.via_gateway == {}


def test_member_holds_no_wireguard_peers_and_routes_via_its_gateway() -> None:
    plan = plan_gateway(CFG, A[1], LEASES, CLAIMS)
    assert plan.role == "member" and plan.gateway == CLAIMS["a"]
    assert plan.wireguard.peers == {} and plan.wireguard.routes == {}
    remote = {r.subnet for r in B + LAB}
    assert set(plan.via_gateway) == remote
    assert {e.via for e in plan.via_gateway.values()} == {A[0].overlay_ip}


def test_mesh_site_host_peers_with_gateways_and_mesh_hosts() -> None:
    plan = plan_gateway(CFG, LAB[0], LEASES, CLAIMS)
    assert plan.role == "mesh"
    assert sorted(plan.wireguard.peers) == sorted([A[0].subnet, B[1].subnet])
    assert set(plan.wireguard.vxlan_leases) == {LAB[0].subnet, LAB[1].subnet}


def test_waiting_without_gateway() -> None:
    plan = plan_gateway(CFG, A[1], LEASES, {"b": CLAIMS["b"]})
    assert plan.role == "waiting"
    assert plan.wireguard.peers == {} and plan.via_gateway == {}


def test_plan_is_the_same_for_any_lease_order() -> None:
    ref = plan_gateway(CFG, A[0], LEASES, CLAIMS)
    for perm in itertools.islice(itertools.permutations(LEASES.values()), 50):
        plan = plan_gateway(CFG, A[0], {r.subnet: r for r in perm}, CLAIMS)
        assert plan.wireguard.peers == ref.wireguard.peers
        assert plan.wireguard.routes == ref.wireguard.routes
