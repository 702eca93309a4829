"""``plan_node``: one node's whole plan, as the daemon applies it and ``overlayctl plan``
prints it, for every backend and topology; the incremental path equals a full plan."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from overlayd.cli.planview import plan_json, plan_lines
from overlayd.planning.node import NodePlan, PlanMemo, plan_node
from overlayd.values.config import VXLAN, VXLAN_WIREGUARD, WIREGUARD, NetworkConfig
from overlayd.values.gateway_state import GatewayClaim
from overlayd.values.kernel_state import RouteEntry
from overlayd.values.lease import LeaseRecord
from tests.builders import config, record, wg_key

PSK = base64.b64encode(bytes(range(1, 33))).decode()
SITES = {1: "a", 2: "a", 3: "b", 4: "b", 5: "lab"}


def cfg(backend: str, **extra: Any) -> NetworkConfig:
    wireguard = {"PSK": PSK, "PersistentKeepaliveInterval": 25} if backend != VXLAN else {}
    return config(Network="10.244.0.0/16", Backend={"Type": backend, **wireguard}, **extra)


def net(n: int) -> IPv4Network:
    return IPv4Network(f"10.244.{n}.0/24")


def lease(n: int, backend: str) -> LeaseRecord:
    """Node ``n`` of site ``SITES[n]``; site b's hosts publish a public address."""
    public = (IPv4Address(f"203.0.113.{n}"),) if SITES[n] == "b" else ()
    return record(
        str(net(n)), f"node{n}", f"id{n}", n, site=SITES[n], backend_type=backend,
        public_ips=public, public_key=wg_key(n),
        wireguard_port=51820,
    )  # fmt: skip


def leases(backend: str, hosts: tuple[int, ...] = (1, 2, 3, 4)) -> dict[IPv4Network, LeaseRecord]:
    return {net(n): lease(n, backend) for n in hosts}


def out_of_scope(found: LeaseRecord) -> LeaseRecord:
    """``found`` with an underlay address inside the overlay network: refused."""
    return dataclasses.replace(found, private_ips=(IPv4Address("10.244.200.1"),))


def rendered(plan: NodePlan, backend: str = VXLAN) -> tuple[str, str]:
    return json.dumps(plan_json("node1", net(1), plan)), "\n".join(
        plan_lines("node1", net(1), backend, plan)
    )


CLAIMS = {
    "a": GatewayClaim("a", "node2", "id2", net(2)),
    "b": GatewayClaim("b", "node3", "id3", net(3)),
}


def test_vxlan_programs_every_peer_over_vxlan() -> None:
    records = leases(VXLAN)
    found = plan_node(cfg(VXLAN), records[net(1)], records)
    state = found.vxlan.state
    assert sorted(state.routes) == [net(2), net(3), net(4)]
    assert state.routes[net(3)] == RouteEntry(net(3), net(3).network_address)
    assert len(state.neighs) == len(state.fdbs) == 3
    assert found.wireguard.peers == {} and found.role is None and found.skipped == []
    shown = json.loads(rendered(found)[0])
    assert shown["role"] is None and shown["entry_point"] is False
    assert [r["dst"] for r in shown["routes"]] == [
        "10.244.2.0/24",
        "10.244.3.0/24",
        "10.244.4.0/24",
    ]


def test_wireguard_has_no_vxlan_entry_and_never_shows_the_psk() -> None:
    records = leases(WIREGUARD)
    found = plan_node(cfg(WIREGUARD), records[net(1)], records)
    assert found.vxlan.state.size() == 0 and list(found.wireguard.peers) == [net(2), net(3), net(4)]
    peer = found.wireguard.peers[net(3)]
    assert peer.preshared_key is not None and peer.persistent_keepalive == 25
    text, lines = rendered(found, WIREGUARD)
    shown = json.loads(text)
    assert [p["keepalive"] for p in shown["wireguard"]["peers"]] == [25, 25, 25]
    assert shown["wireguard"]["peers"][1]["endpoint"] == "203.0.113.3:51820"
    assert shown["wireguard"]["peers"][0]["endpoint"] == "10.0.0.2:51820"  # same site: LAN
    raw = base64.b64decode(PSK)
    for out in (text, lines):
        assert PSK not in out and raw.hex() not in out and "preshared" not in out.lower()


def test_vxlan_wireguard_splits_by_site() -> None:
    records = leases(VXLAN_WIREGUARD)
    found = plan_node(cfg(VXLAN_WIREGUARD), records[net(1)], records)
    assert sorted(found.vxlan.state.routes) == [net(2)]
    assert list(found.wireguard.peers) == [net(3), net(4)]
    assert sorted(found.wireguard.routes) == [net(3), net(4)]
    assert found.peers == 3 and found.role is None


def test_gateway_node_peers_with_other_sites_gateways_for_their_whole_site() -> None:
    records = leases(VXLAN_WIREGUARD)
    found = plan_node(
        cfg(VXLAN_WIREGUARD, Topology={"Mode": "gateway"}), records[net(2)], records,
        claims=CLAIMS,
    )  # fmt: skip
    assert found.role == "gateway" and found.entry_point and found.via == {}
    assert list(found.wireguard.peers) == [net(3)]  # site b's gateway only
    assert found.wireguard.peers[net(3)].allowed_ips == (net(3), net(4))
    assert found.wireguard.routes[net(4)] == RouteEntry(net(4), net(3).network_address)
    assert sorted(found.vxlan.state.routes) == [net(1)]  # its own site over VXLAN


def test_gateway_member_routes_other_sites_through_its_gateway() -> None:
    records = leases(VXLAN_WIREGUARD)
    found = plan_node(
        cfg(VXLAN_WIREGUARD, Topology={"Mode": "gateway"}), records[net(1)], records,
        claims=CLAIMS,
    )  # fmt: skip
    assert found.role == "member" and not found.entry_point and found.wireguard.peers == {}
    gateway = net(2).network_address
    assert found.vxlan.state.routes[net(3)] == RouteEntry(net(3), gateway)
    assert found.via == {net(3): "node2", net(4): "node2"}
    assert sorted(found.vxlan.paths) == [net(2)]
    shown = json.loads(rendered(found, VXLAN_WIREGUARD)[0])
    assert shown["role"] == "member" and shown["gateway"] == "node2"
    assert "# role member (site gateway node2)" in rendered(found, VXLAN_WIREGUARD)[1]


def test_mesh_override_site_is_an_entry_point_for_every_host() -> None:
    records = leases(VXLAN_WIREGUARD, (1, 2, 3, 4, 5))
    topology = {"Mode": "gateway", "Sites": {"lab": "mesh"}}
    found = plan_node(
        cfg(VXLAN_WIREGUARD, Topology=topology), records[net(5)], records, claims=CLAIMS
    )
    assert found.role == "mesh" and found.entry_point and found.gateway is None
    assert list(found.wireguard.peers) == [net(2), net(3)]  # the two sites' gateways
    assert found.wireguard.peers[net(2)].allowed_ips == (net(1), net(2))
    # a gateway site's gateway peers with every host of the mesh site
    gateway = plan_node(
        cfg(VXLAN_WIREGUARD, Topology=topology), records[net(2)], records, claims=CLAIMS
    )
    assert list(gateway.wireguard.peers) == [net(3), net(5)]


def test_out_of_scope_records_are_refused_and_listed() -> None:
    records = leases(VXLAN)
    bad = out_of_scope(record(str(net(9)), "node9", "id9", 9))
    records[net(9)] = bad
    found = plan_node(cfg(VXLAN), records[net(1)], records)
    assert net(9) not in found.vxlan.state.routes
    assert [s for s, _ in found.refused] == [net(9)] and found.skipped == list(found.refused)
    assert "inside the overlay network" in found.refused[0][1]


@pytest.mark.parametrize("backend", [VXLAN, WIREGUARD, VXLAN_WIREGUARD, "gateway"])
def test_output_is_deterministic_whatever_the_record_order(backend: str) -> None:
    extra = {"Topology": {"Mode": "gateway"}} if backend == "gateway" else {}
    kind = VXLAN_WIREGUARD if backend == "gateway" else backend
    network = cfg(kind, **extra)
    records = leases(kind, (1, 2, 3, 4, 5))
    first = rendered(plan_node(network, records[net(1)], records, claims=CLAIMS), kind)
    items = list(records.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        again = dict(items)
        assert rendered(plan_node(network, again[net(1)], again, claims=CLAIMS), kind) == first
    json.loads(first[0])


def test_incremental_plan_equals_a_full_plan() -> None:
    """The daemon's fast path (``memo`` + ``changed``) gives what a full plan gives."""
    network = cfg(VXLAN)
    me = lease(1, VXLAN)
    records: dict[IPv4Network, LeaseRecord] = {me.subnet: me}
    memo = PlanMemo()
    plan_node(network, me, records, memo=memo)
    rng = random.Random(7)
    patched = 0
    for step in range(60):
        n = rng.randrange(2, 40)
        subnet = IPv4Network(f"10.244.{n}.0/24")
        fresh = record(
            str(subnet), f"n{n}", f"i{n}", n, public_ips=(IPv4Address(f"198.51.100.{step}"),)
        )
        if subnet in records and rng.random() < 0.3:
            del records[subnet]
        elif n < 4 and rng.random() < 0.5:  # out of scope: refused, settled by a full plan
            records[subnet] = out_of_scope(fresh)
        elif n == 4:  # node 5's VTEP MAC: a conflict, settled by a full plan
            records[subnet] = dataclasses.replace(fresh, vtep_mac=lease(5, VXLAN).vtep_mac)
        else:
            records[subnet] = fresh
        found = plan_node(network, me, records, memo=memo, changed={subnet})
        full = plan_node(network, me, records)
        patched += found.touched is not None
        assert found.vxlan.state == full.vxlan.state, step
        assert found.vxlan.paths == full.vxlan.paths and found.skipped == full.skipped, step
    assert 20 < patched < 60  # both the fast path and full plans were taken
