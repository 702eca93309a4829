"""Relays: the pure choice (overlayd/planning/relay.py), its place in ``plan_node``, the
published RTTs' hysteresis and the lease fields' validation."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Network
from typing import Any

import pytest

from overlayd.cli.planview import plan_json, plan_lines
from overlayd.planning.node import plan_node
from overlayd.planning.relay import (
    RelayChoice,
    RelayParams,
    RelayPlan,
    choose_relays,
    rtts_to_publish,
)
from overlayd.values.config import WIREGUARD
from overlayd.values.errors import LeaseFormatError
from overlayd.values.gateway_state import GatewayClaim
from overlayd.values.kernel_state import RouteEntry
from overlayd.values.lease import LeaseRecord, decode_lease
from overlayd.values.lease_rules import MAX_RELAY_RTT_MS, MAX_RELAY_RTTS
from tests.builders import config, record, wg_key

# nodes 1, 2: NATed ends in sites a and b; 10..19: relays in site r
SITES = {1: "a", 2: "b", 3: "c"}


def net(n: int) -> IPv4Network:
    return IPv4Network(f"10.244.{n}.0/24")


def node(
    n: int, rtts: dict[int, int] | None = None, *, relay: bool | None = None, site: str = ""
) -> LeaseRecord:
    return record(
        str(net(n)), f"node{n}", f"id{n}", n, site=site or SITES.get(n, "r"),
        backend_type=WIREGUARD, public_key=wg_key(n), wireguard_port=51820, relay=relay,
        relay_rtts=tuple(sorted((net(r), ms) for r, ms in (rtts or {}).items())),
    )  # fmt: skip


def world(
    a: dict[int, int], b: dict[int, int], relays: tuple[int, ...]
) -> dict[IPv4Network, LeaseRecord]:
    out = {net(1): node(1, a), net(2): node(2, b)}
    out.update({net(r): node(r, relay=True) for r in relays})
    return out


def choice(
    records: dict[IPv4Network, LeaseRecord], me: int = 1, peer: int = 2, **kw: Any
) -> RelayPlan:
    return choose_relays(records[net(me)], records, {net(peer)}, **kw)


# -- the choice ------------------------------------------------------------------------------


def test_no_relay_in_the_network_says_why() -> None:
    found = choice(world({}, {}, ()))
    assert found.chosen == {}
    assert "no relay that both this node and node2 reach" in found.none[net(2)]


def test_nothing_stranded_chooses_nothing() -> None:
    records = world({10: 5}, {10: 5}, (10,))
    assert choose_relays(records[net(1)], records, set()) == RelayPlan()


def test_one_relay_both_reach_carries_the_pair() -> None:
    found = choice(world({10: 4}, {10: 6}, (10,)))
    assert found.chosen == {net(2): RelayChoice(net(10), "node10", 10)}
    assert found.none == {}


def test_a_relay_only_one_end_reaches_is_not_used() -> None:
    found = choice(world({10: 4, 11: 1}, {10: 6}, (10, 11)))
    assert found.chosen[net(2)].relay == net(10)
    assert choice(world({11: 1}, {10: 6}, (10, 11))).chosen == {}


def test_lowest_combined_rtt_wins_among_many() -> None:
    # 10: 2 + 50 = 52; 11: 20 + 20 = 40; 12: 30 + 30 = 60
    found = choice(world({10: 2, 11: 20, 12: 30}, {10: 50, 11: 20, 12: 30}, (10, 11, 12)))
    assert found.chosen[net(2)] == RelayChoice(net(11), "node11", 40)


def test_ties_go_to_the_lowest_relay_subnet() -> None:
    found = choice(world({12: 5, 11: 5}, {12: 5, 11: 5}, (11, 12)))
    assert found.chosen[net(2)].relay == net(11)


def test_both_ends_choose_the_same_relay() -> None:
    records = world({10: 3, 11: 9, 12: 1}, {10: 8, 11: 1, 12: 11}, (10, 11, 12))
    a = choose_relays(records[net(1)], records, {net(2)}).chosen[net(2)]
    b = choose_relays(records[net(2)], records, {net(1)}).chosen[net(1)]
    assert a == b


def test_a_lease_that_is_no_relay_is_never_chosen() -> None:
    records = world({10: 1}, {10: 1}, ())
    records[net(10)] = node(10)  # measured by both, but it does not say Relay: true
    assert choice(records).chosen == {}
    records[net(10)] = node(10, relay=False)
    assert choice(records).chosen == {}


def test_a_pair_with_a_relay_at_one_end_is_never_relayed() -> None:
    # the relay end is reachable directly: its peer dials it even when its own probes
    # cannot reach the peer (random-port NAT), so neither end may send through a third
    records = world({10: 1}, {10: 1}, (10,))
    records[net(2)] = node(2, {10: 1}, relay=True)
    found = choice(records)
    assert found == RelayPlan()
    found = choose_relays(records[net(2)], records, {net(1)})
    assert found == RelayPlan()


def test_a_relay_we_do_not_hold_as_peer_is_not_used() -> None:
    records = world({10: 1, 11: 9}, {10: 1, 11: 9}, (10, 11))
    found = choice(records, reachable={net(11)})
    assert found.chosen[net(2)].relay == net(11)


def test_broken_relay_moves_the_pair_to_the_next_one() -> None:
    records = world({10: 1, 11: 9}, {10: 1, 11: 9}, (10, 11))
    found = choice(records, broken={(net(2), net(10))})
    assert found.chosen[net(2)].relay == net(11)


def test_broken_last_relay_leaves_no_path_and_says_which() -> None:
    found = choice(world({10: 1}, {10: 1}, (10,)), broken={(net(2), net(10))})
    assert found.chosen == {}
    assert "relay node10 stopped forwarding for node2" in found.none[net(2)]


def test_a_broken_relay_for_one_peer_still_carries_another() -> None:
    records = world({10: 1}, {10: 1}, (10,))
    records[net(3)] = node(3, {10: 1})
    found = choose_relays(records[net(1)], records, {net(2), net(3)}, {(net(2), net(10))})
    assert set(found.chosen) == {net(3)} and set(found.none) == {net(2)}


def test_churn_a_relay_leaving_moves_the_pair_and_one_joining_far_away_does_not() -> None:
    records = world({10: 5, 11: 6}, {10: 5, 11: 6}, (10, 11))
    assert choice(records).chosen[net(2)].relay == net(10)
    del records[net(10)]  # its lease expired
    assert choice(records).chosen[net(2)].relay == net(11)
    records[net(12)] = node(12, relay=True)  # a new relay, not measured by either end yet
    assert choice(records).chosen[net(2)].relay == net(11)


# -- published RTTs ------------------------------------------------------------------------


def test_rtts_empty_measured_publishes_nothing() -> None:
    assert rtts_to_publish((), {}) == ()
    assert rtts_to_publish(((net(10), 5),), {}) == ()  # no longer verified: dropped


def test_rtts_jitter_within_the_margins_keeps_the_published_value() -> None:
    published = ((net(10), 3),)
    assert rtts_to_publish(published, {net(10): 22.9}) == published  # 20 ms
    assert rtts_to_publish(((net(10), 100),), {net(10): 149.0}) == ((net(10), 100),)  # 50 %
    assert rtts_to_publish(published, {net(10): 24.0}) == ((net(10), 24),)
    assert rtts_to_publish(((net(10), 100),), {net(10): 151.0}) == ((net(10), 151),)


def test_rtts_jitter_never_moves_a_pair() -> None:
    records = world({10: 10, 11: 12}, {10: 10, 11: 12}, (10, 11))
    a = records[net(1)]
    for sample in (3.0, 25.0, 29.5, 9.2):  # 10's RTT jitters around its published 10 ms
        rtts = rtts_to_publish(a.relay_rtts, {net(10): sample, net(11): 12.0})
        records[net(1)] = LeaseRecord(**{**_fields(a), "relay_rtts": rtts})
        assert choice(records).chosen[net(2)].relay == net(10)


def _fields(r: LeaseRecord) -> dict[str, Any]:
    return {f: getattr(r, f) for f in LeaseRecord.__slots__}


def test_rtts_keep_the_nearest_up_to_the_limit_sorted_by_subnet() -> None:
    measured = {net(10 + i): float(100 - i) for i in range(30)}
    out = rtts_to_publish((), measured, RelayParams(limit=3))
    assert out == ((net(37), 73), (net(38), 72), (net(39), 71))


def test_rtts_are_clamped_to_what_a_lease_may_say() -> None:
    out = rtts_to_publish((), {net(10): 1e9, net(11): -3.0})
    assert out == ((net(10), MAX_RELAY_RTT_MS), (net(11), 0))


# -- in plan_node ---------------------------------------------------------------------------


def cfg() -> Any:
    return config(Network="10.244.0.0/16", Backend={"Type": WIREGUARD})


def test_plan_node_routes_a_stranded_peer_through_its_relay() -> None:
    records = world({10: 1}, {10: 1}, (10,))
    plan = plan_node(cfg(), records[net(1)], records, stranded={net(2)})
    wg = plan.wireguard
    # its subnet cannot be the AllowedIPs of two peers; the peer stays, to test the direct path
    assert wg.peers[net(2)].allowed_ips == ()
    assert (
        wg.peers[net(2)].endpoint
        == plan_node(cfg(), records[net(1)], records).wireguard.peers[net(2)].endpoint
    )
    assert wg.peers[net(10)].allowed_ips == (net(2), net(10))
    assert wg.routes[net(2)] == RouteEntry(net(2), net(10).network_address)
    assert plan.relayed == {net(2): "node10"}


def test_plan_node_without_stranded_peers_is_the_direct_plan() -> None:
    records = world({10: 1}, {10: 1}, (10,))
    plan = plan_node(cfg(), records[net(1)], records, stranded=frozenset())
    assert plan.wireguard.peers[net(10)].allowed_ips == (net(10),)
    assert net(2) in plan.wireguard.peers and plan.relayed == {}


def test_offline_plan_says_which_relay_each_peer_would_get_and_applies_none() -> None:
    records = world({10: 1}, {10: 1}, (10,))
    plan = plan_node(cfg(), records[net(1)], records)  # overlayctl plan: stranded unknown
    assert not plan.relays.applied and plan.relays.chosen[net(2)].node == "node10"
    assert plan.relayed == {}
    assert plan.wireguard.peers[net(10)].allowed_ips == (net(10),)


# -- the lease fields -----------------------------------------------------------------------


def raw(**fields: Any) -> str:
    value: dict[str, Any] = {
        "PublicIP": "198.51.100.7",
        "BackendType": "wireguard",
        "BackendData": {"VtepMAC": "0a:1b:2c:3d:4e:5f", "VNI": 1},
        **fields,
    }
    return json.dumps(value)


def test_lease_fields_round_trip() -> None:
    r = node(1, {10: 4, 2: 7}, relay=True)
    back = decode_lease(r.subnet, r.to_json())
    assert back.relay is True and back.relay_rtts == ((net(2), 7), (net(10), 4))
    assert "Relay" not in json.loads(node(1).to_json())


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"Relay": "yes" * 1000}, "Relay must be true or false"),
        ({"RelayRTTs": ["x"] * 1000}, "RelayRTTs must be an object"),
        ({"RelayRTTs": {f"10.244.{i}.0-24": 1 for i in range(MAX_RELAY_RTTS + 1)}}, "at most"),
        ({"RelayRTTs": {"k" * 3000: 1}}, "is not a subnet key"),
        ({"RelayRTTs": {"10.244.1.0/24": 1}}, "is not a subnet key"),
        ({"RelayRTTs": {"10.244.1.0-24": True}}, "whole milliseconds"),
        ({"RelayRTTs": {"10.244.1.0-24": 1.5}}, "whole milliseconds"),
        ({"RelayRTTs": {"10.244.1.0-24": "9" * 3000}}, "whole milliseconds"),
        ({"RelayRTTs": {"10.244.1.0-24": -1}}, "must be 0..60000 ms"),
        ({"RelayRTTs": {"10.244.1.0-24": 10**30}}, "must be 0..60000 ms"),
    ],
)
def test_hostile_relay_fields_refuse_the_record_in_one_short_line(
    fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(LeaseFormatError) as info:
        decode_lease(net(5), raw(**fields))
    text = str(info.value)
    assert match in text and len(text) < 200, text


def test_overlayctl_plan_shows_relays_applied_and_offline() -> None:
    records = world({10: 1}, {10: 2}, (10,))
    daemon = plan_node(cfg(), records[net(1)], records, stranded={net(2)})
    line = "# relay 10.244.2.0/24: via relay node10 (10.244.10.0/24, combined rtt 3 ms)"
    assert line in plan_lines("node1", net(1), WIREGUARD, daemon)
    offline = plan_node(cfg(), records[net(1)], records)
    assert (
        "# relay 10.244.2.0/24: if no direct path verifies: via relay node10 "
        "(10.244.10.0/24, combined rtt 3 ms)"
    ) in plan_lines("node1", net(1), WIREGUARD, offline)
    doc = plan_json("node1", net(1), offline)["relays"]
    assert doc["applied"] is False and doc["via"][0]["relay"] == "node10"
    none = plan_node(
        cfg(), records[net(1)], records, stranded={net(2)}, broken_relays={(net(2), net(10))}
    )
    assert any(
        line.startswith("# relay 10.244.2.0/24: none: ")
        for line in plan_lines("n", net(1), WIREGUARD, none)
    )


def test_gateway_topology_relays_a_remote_gateway_with_its_whole_site() -> None:
    # sites a (node1 gateway, node4 member) and b (node2 gateway, node5 member) in gateway
    # mode; relay node10 alone in site r, in mesh mode: an entry point of its own
    gcfg = config(
        Network="10.244.0.0/16", Backend={"Type": "vxlan+wireguard"},
        Topology={"Mode": "gateway", "Sites": {"r": "mesh"}},
    )  # fmt: skip
    records = world({10: 2}, {10: 3}, (10,))
    records.update({net(4): node(4, site="a"), net(5): node(5, site="b")})
    records = {s: replace(r, backend_type="vxlan+wireguard") for s, r in records.items()}
    claims = {
        "a": GatewayClaim("a", "node1", "id1", net(1)),
        "b": GatewayClaim("b", "node2", "id2", net(2)),
    }
    plan = plan_node(gcfg, records[net(1)], records, claims=claims, stranded={net(2)})
    wg = plan.wireguard
    assert plan.role == "gateway" and plan.relayed == {net(2): "node10"}
    assert wg.peers[net(2)].allowed_ips == ()
    assert wg.peers[net(10)].allowed_ips == (net(2), net(5), net(10))
    assert wg.routes[net(5)] == RouteEntry(net(5), net(10).network_address)
    member = plan_node(gcfg, records[net(4)], records, claims=claims, stranded={net(2)})
    assert member.role == "member" and member.relayed == {} and not member.wireguard.peers
