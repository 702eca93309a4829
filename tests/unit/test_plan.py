"""The VXLAN planner: leases -> desired kernel state."""

from __future__ import annotations

import dataclasses
import itertools
import random
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from overlayd.planning.vxlan import Plan, Planner
from overlayd.values.kernel_state import FdbEntry, NeighEntry, RouteEntry
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PeerPath, guess_path
from tests.builders import mac, node_lease


def rec(
    subnet: str,
    n: int,
    *,
    node: str | None = None,
    node_id: str | None = None,
    site: str = "default",
    public_ip: str | None = None,
    private: tuple[str, ...] = (),
    public: tuple[str, ...] = (),
    vni: int = 1,
    backend: str = "vxlan",
    mac_n: int | None = None,
) -> LeaseRecord:
    return node_lease(
        n,
        public_ip or f"192.0.2.{n}",
        node=node or f"node{n}",
        node_id=node_id or f"id{n}",
        subnet=subnet,
        mac_n=mac_n,
        vni=vni,
        site=site,
        private_ips=private,
        public_ips=public,
        backend_type=backend,
    )


ME = rec("10.244.1.0/24", 1, node="me", node_id="id-me", site="a", private=("10.0.0.1",))


def as_map(*records: LeaseRecord) -> dict[IPv4Network, LeaseRecord]:
    return {r.subnet: r for r in records}


def programmed(plan: Plan) -> list[IPv4Network]:
    return sorted(plan.state.routes)


# -- entries --------------------------------------------------------------------------


def test_three_entries_per_peer_and_self_skipped() -> None:
    p2 = rec("10.244.2.0/24", 2)
    p3 = rec("10.244.3.0/24", 3, public_ip="198.51.100.3")
    plan = Planner().plan(ME, as_map(ME, p2, p3))
    assert plan.state.size() == 6
    assert programmed(plan) == [p2.subnet, p3.subnet]
    r = plan.state.routes[p3.subnet]
    assert r == RouteEntry(IPv4Network("10.244.3.0/24"), IPv4Address("10.244.3.0"))
    n = plan.state.neighs[IPv4Address("10.244.3.0")]
    assert n == NeighEntry(IPv4Address("10.244.3.0"), mac(3))
    f = plan.state.fdbs[mac(3)]
    assert f == FdbEntry(mac(3), IPv4Address("198.51.100.3"))
    # nothing about ourselves
    assert ME.vtep_mac not in plan.state.fdbs
    assert ME.overlay_ip not in plan.state.neighs
    assert plan.skipped == ()
    assert set(plan.paths) == {p2.subnet, p3.subnet}


def test_our_old_lease_on_another_subnet_is_skipped() -> None:
    # same node (name + id) on another subnet, e.g. a stale lease before rebind
    stale = dataclasses.replace(ME, subnet=IPv4Network("10.244.9.0/24"))
    plan = Planner().plan(ME, as_map(ME, stale, rec("10.244.2.0/24", 2)))
    assert programmed(plan) == [IPv4Network("10.244.2.0/24")]


def test_empty_leases() -> None:
    plan = Planner().plan(ME, {})
    assert plan.state.size() == 0 and plan.skipped == () and plan.paths == {}


# -- guess_path -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer_kwargs", "expected"),
    [
        (
            {"site": "a", "private": ("10.0.0.2", "10.0.1.2"), "public": ("203.0.113.2",)},
            PeerPath(IPv4Address("10.0.0.2"), "private", "same site"),
        ),
        (
            {"site": "b", "private": ("10.0.0.2",), "public": ("203.0.113.2", "203.0.113.3")},
            PeerPath(IPv4Address("203.0.113.2"), "public", "other site"),
        ),
        (
            {"site": "a", "private": (), "public": ("203.0.113.2",)},
            PeerPath(IPv4Address("198.51.100.2"), "public", "lease PublicIP"),
        ),
        (
            {"site": "b", "private": ("10.0.0.2",), "public": ()},
            PeerPath(IPv4Address("198.51.100.2"), "public", "lease PublicIP"),
        ),
    ],
)
def test_guess_path(peer_kwargs: dict[str, Any], expected: PeerPath) -> None:
    peer = rec("10.244.2.0/24", 2, public_ip="198.51.100.2", **peer_kwargs)
    assert guess_path(ME, peer) == expected
    plan = Planner().plan(ME, as_map(peer))
    assert plan.paths[peer.subnet] == expected
    assert plan.state.fdbs[peer.vtep_mac].dst == expected.address


def test_given_paths_override_the_guess() -> None:
    peer = rec("10.244.2.0/24", 2, site="a", private=("10.0.0.2",))
    verified = PeerPath(IPv4Address("203.0.113.77"), "public", "verified")
    plan = Planner().plan(ME, as_map(peer), {peer.subnet: verified})
    assert plan.paths[peer.subnet] == verified
    assert plan.state.fdbs[peer.vtep_mac].dst == IPv4Address("203.0.113.77")


# -- unusable peers ---------------------------------------------------------------------


def test_peers_with_other_vni_or_backend_are_skipped_with_reason() -> None:
    ok = rec("10.244.2.0/24", 2)
    other_vni = rec("10.244.3.0/24", 3, vni=7)
    other_backend = rec("10.244.4.0/24", 4, backend="wireguard")
    plan = Planner().plan(ME, as_map(ok, other_vni, other_backend))
    assert programmed(plan) == [ok.subnet]
    reasons = dict(plan.skipped)
    assert set(reasons) == {other_vni.subnet, other_backend.subnet}
    assert "VNI 7" in reasons[other_vni.subnet]
    assert "wireguard" in reasons[other_backend.subnet]
    assert other_vni.vtep_mac not in plan.state.fdbs


def test_peer_overlapping_our_subnet_is_skipped() -> None:
    overlap = rec("10.244.1.128/25", 5)
    plan = Planner().plan(ME, as_map(overlap))
    assert plan.state.size() == 0
    assert plan.skipped[0][0] == overlap.subnet
    assert "overlaps" in plan.skipped[0][1]


def test_peer_using_our_mac_is_skipped() -> None:
    thief = rec("10.244.2.0/24", 2, mac_n=1)  # ME's MAC
    plan = Planner().plan(ME, as_map(thief))
    assert plan.state.size() == 0
    assert plan.skipped == (
        (thief.subnet, f"{thief.node}'s {ME.vtep_mac} already used by this node ({ME.subnet})"),
    )


# -- conflicts, order independence ------------------------------------------------------


def check_all_orders(records: list[LeaseRecord]) -> Plan:
    results = []
    for perm in itertools.permutations(records):
        plan = Planner().plan(ME, as_map(*perm))
        results.append(plan)
    first = results[0]
    for other in results[1:]:
        assert other.state == first.state
        assert [s for s, _ in other.skipped] == [s for s, _ in first.skipped]
        assert other.paths == first.paths
    return first


def test_mac_conflict_lowest_subnet_wins_in_any_order() -> None:
    a = rec("10.244.7.0/24", 7, mac_n=50)
    b = rec("10.244.3.0/24", 3, mac_n=50)
    c = rec("10.244.5.0/24", 5, mac_n=50)
    d = rec("10.244.4.0/24", 4)
    plan = check_all_orders([a, b, c, d])
    assert programmed(plan) == [b.subnet, d.subnet]
    assert [s for s, _ in plan.skipped] == [c.subnet, a.subnet]
    assert all(f"already used by {b.node} ({b.subnet})" in why for _, why in plan.skipped)


def test_skip_reasons_name_the_winner_in_any_order() -> None:
    a = rec("10.244.7.0/24", 7, mac_n=50)
    b = rec("10.244.3.0/24", 3, mac_n=50)
    c = rec("10.244.5.0/24", 5, mac_n=50)
    for perm in itertools.permutations([a, b, c]):
        plan = Planner().plan(ME, as_map(*perm))
        assert plan.skipped == (
            (c.subnet, f"{c.node}'s {mac(50)} already used by {b.node} ({b.subnet})"),
            (a.subnet, f"{a.node}'s {mac(50)} already used by {b.node} ({b.subnet})"),
        )


def test_two_mac_conflict_groups_in_any_order() -> None:
    recs = [
        rec("10.244.20.0/24", 20, mac_n=60),
        rec("10.244.10.0/24", 10, mac_n=60),
        rec("10.244.30.0/24", 30, mac_n=61),
        rec("10.244.15.0/24", 15, mac_n=61),
        rec("10.244.40.0/24", 40),
    ]
    plan = check_all_orders(recs)
    assert programmed(plan) == [
        IPv4Network("10.244.10.0/24"),
        IPv4Network("10.244.15.0/24"),
        IPv4Network("10.244.40.0/24"),
    ]


def test_chained_conflicts_in_any_order() -> None:
    a = rec("10.244.2.0/24", 2, mac_n=70)
    b = rec("10.244.3.0/24", 3, mac_n=70)  # loses its MAC to a
    c = rec("10.244.3.0/25", 4)  # same overlay address 10.244.3.0 as b, b < c
    plan = check_all_orders([a, b, c])
    # b is out (lower subnet a holds its MAC); c is out for its length, whatever the order
    assert programmed(plan) == [a.subnet]
    assert dict(plan.skipped)[c.subnet] == "subnet length /25 differs from the network's"
    assert dict(plan.skipped)[b.subnet].endswith(f"already used by {a.node} ({a.subnet})")


def test_random_conflicts_are_deterministic() -> None:
    rng = random.Random(11)
    recs = [rec(f"10.244.{n}.0/24", n, mac_n=rng.randrange(2, 12)) for n in range(2, 40)]
    ref = Planner().plan(ME, as_map(*recs))
    for _ in range(20):
        rng.shuffle(recs)
        plan = Planner().plan(ME, as_map(*recs))
        assert plan.state == ref.state
        assert [s for s, _ in plan.skipped] == [s for s, _ in ref.skipped]
    # each MAC is programmed once, by the lowest subnet using it
    for m, fdb in ref.state.fdbs.items():
        lowest = min(r.subnet for r in recs if r.vtep_mac == m)
        assert ref.state.neighs[lowest.network_address].mac == m
        assert fdb.mac == m


# -- memo -----------------------------------------------------------------------------


def test_memo_reuses_objects_for_unchanged_records() -> None:
    planner = Planner()
    p2, p3 = rec("10.244.2.0/24", 2), rec("10.244.3.0/24", 3)
    first = planner.plan(ME, as_map(p2, p3))
    second = planner.plan(ME, as_map(p2, p3))
    assert second.state == first.state
    for subnet in (p2.subnet, p3.subnet):
        assert second.state.routes[subnet] is first.state.routes[subnet]
    assert second.state.fdbs[p2.vtep_mac] is first.state.fdbs[p2.vtep_mac]
    assert second.state.neighs[p3.overlay_ip] is first.state.neighs[p3.overlay_ip]


def test_memo_gives_new_objects_for_a_changed_record() -> None:
    planner = Planner()
    p2 = rec("10.244.2.0/24", 2)
    first = planner.plan(ME, as_map(p2))
    # an equal but new record object (a new etcd revision) -> new entries
    again = dataclasses.replace(p2)
    second = planner.plan(ME, as_map(again))
    assert second.state == first.state
    assert second.state.routes[p2.subnet] is not first.state.routes[p2.subnet]
    # a really changed record -> new values
    moved = dataclasses.replace(p2, public_ip=IPv4Address("203.0.113.2"))
    third = planner.plan(ME, as_map(moved))
    assert third.state.fdbs[p2.vtep_mac].dst == IPv4Address("203.0.113.2")
    # the same record object with another path -> new entries too
    path = PeerPath(IPv4Address("198.51.100.200"), "public", "verified")
    fourth = planner.plan(ME, as_map(moved), {p2.subnet: path})
    assert fourth.state.fdbs[p2.vtep_mac].dst == path.address


def test_memo_forgets_removed_peers() -> None:
    planner = Planner()
    p2 = rec("10.244.2.0/24", 2)
    first = planner.plan(ME, as_map(p2))
    assert planner.plan(ME, {}).state.size() == 0
    back = planner.plan(ME, as_map(p2))
    assert back.state == first.state
    assert back.state.routes[p2.subnet] is not first.state.routes[p2.subnet]


def test_plan_is_deterministic_across_planners() -> None:
    recs = [
        rec(f"10.244.{n}.0/24", n, site="ab"[n % 2], private=(f"10.0.0.{n}",)) for n in range(2, 30)
    ]
    a = Planner().plan(ME, as_map(*recs))
    b = Planner().plan(ME, as_map(*reversed(recs)))
    assert a == b
    assert len(a.state.routes) == len(recs)
