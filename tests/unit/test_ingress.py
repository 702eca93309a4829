"""The VXLAN ingress policy (overlayd/planning/ingress.py): pure, sorted, incremental."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.gateway import plan_gateway
from overlayd.planning.ingress import (
    IngressPlanner,
    IngressPolicy,
    carried_prefixes,
    disjoint,
    peer_ingress,
)
from overlayd.planning.linger import Linger
from overlayd.planning.vxlan import Planner
from overlayd.planning.wireguard import plan_wireguard
from overlayd.values.config import parse_backend, parse_config
from overlayd.values.gateway_state import GatewayClaim
from overlayd.values.keys import PrivateKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PeerPath
from tests.builders import guessed_paths, node_lease

PORT, DEV = 8472, "overlay.1"
N = IPv4Network


def peer(n: int, site: str = "a", *, backend: str = "vxlan") -> LeaseRecord:
    underlay = f"{n // 250}.{n % 250 + 1}"
    return node_lease(
        n,
        f"10.0.{underlay}",
        node=f"h{n}",
        site=site,
        private_ips=(f"10.0.{underlay}",),
        public_ips=(f"198.51.{underlay}",),
        backend_type=backend,
        public_key=PrivateKey.generate().public_key().base64 if backend != "vxlan" else None,
        wireguard_port=51820 if backend != "vxlan" else None,
    )


def paths_of(me: LeaseRecord, leases: dict[N, LeaseRecord]) -> dict[N, PeerPath]:
    return guessed_paths(me, leases)


ME = peer(250)


def test_empty() -> None:
    policy, delta = IngressPlanner().plan(PORT, DEV, {}, {})
    assert policy == IngressPolicy(PORT, DEV)
    assert policy.sorted_sources() == () and policy.sorted_pairs() == ()
    assert not delta and len(delta) == 0


def test_one_peer_all_candidates_and_its_subnet() -> None:
    p = peer(3)
    chosen = PeerPath(IPv4Address("192.0.2.77"), "public", "verified")  # e.g. learned
    policy, delta = IngressPlanner().plan(PORT, DEV, {p.subnet: p}, {p.subnet: chosen})
    want = (IPv4Address("10.0.0.4"), IPv4Address("192.0.2.77"), IPv4Address("198.51.0.4"))
    assert policy.sorted_sources() == want  # PublicIP == PrivateIPs[0]: once
    assert policy.sorted_pairs() == ((p.vtep_mac, p.subnet),)
    assert delta.add_sources == want and delta.add_pairs == ((p.vtep_mac, p.subnet),)
    assert delta.del_sources == () and delta.del_pairs == ()
    assert delta.summary() == "+3/-0 sources, +1/-0 inner prefixes"


def test_many_peers_sorted_and_independent_of_order() -> None:
    records = [peer(n) for n in range(1, 600) if n != 250]  # 250: ME
    results = []
    for seed in (1, 2):
        random.Random(seed).shuffle(records)
        leases = {r.subnet: r for r in records}
        policy, delta = IngressPlanner().plan(PORT, DEV, leases, paths_of(ME, leases))
        results.append((policy.sorted_sources(), policy.sorted_pairs(), delta))
    assert results[0] == results[1]
    sources, pairs, delta = results[0]
    assert list(sources) == sorted(sources) and len(sources) == 2 * 598
    assert [(m.text, int(p.network_address)) for m, p in pairs] == sorted(
        (m.text, int(p.network_address)) for m, p in pairs
    )
    assert delta.add_sources == sources and delta.add_pairs == pairs


def test_replan_of_unchanged_peers_is_no_change() -> None:
    leases = {r.subnet: r for r in (peer(n) for n in range(1, 50))}
    planner = IngressPlanner()
    first, _ = planner.plan(PORT, DEV, leases, paths_of(ME, leases))
    again, delta = planner.plan(PORT, DEV, dict(leases), paths_of(ME, leases))
    assert again is first and not delta


def test_lease_change_gives_small_delta_and_update_equals_full_plan() -> None:
    leases = {r.subnet: r for r in (peer(n) for n in range(1, 100))}
    planner = IngressPlanner()
    planner.plan(PORT, DEV, leases, paths_of(ME, leases))
    # peer 5 moved to another public address, peer 6 left, peer 120 joined
    moved = replace(peer(5), public_ips=(IPv4Address("203.0.113.5"),))
    leases2 = {**leases, moved.subnet: moved}
    del leases2[N("10.244.6.0/24")]
    new = peer(120)
    leases2[new.subnet] = new
    changed = {moved.subnet, N("10.244.6.0/24"), new.subnet}
    out = planner.update(PORT, DEV, leases2, paths_of(ME, leases2), changed)
    assert out is not None
    policy, delta = out
    assert delta.add_sources == tuple(
        sorted({IPv4Address("203.0.113.5"), *new.private_ips, *new.public_ips}, key=int)
    )
    gone = peer(6)
    assert set(delta.del_sources) == {*gone.private_ips, *gone.public_ips, moved.public_ip} - {
        moved.public_ip
    } | {IPv4Address("198.51.0.6")}
    assert delta.add_pairs == ((new.vtep_mac, new.subnet),)
    assert delta.del_pairs == ((peer(6).vtep_mac, N("10.244.6.0/24")),)
    full, _ = IngressPlanner().plan(PORT, DEV, leases2, paths_of(ME, leases2))
    assert policy.sorted_sources() == full.sorted_sources()
    assert policy.sorted_pairs() == full.sorted_pairs()
    assert dict(policy.peers) == dict(full.peers)


def test_shared_address_stays_while_one_peer_publishes_it() -> None:
    a, b = peer(1), peer(2)
    shared = IPv4Address("198.51.100.200")  # e.g. two hosts behind one NAT address
    a, b = replace(a, public_ips=(shared,)), replace(b, public_ips=(shared,))
    planner = IngressPlanner()
    leases = {a.subnet: a, b.subnet: b}
    planner.plan(PORT, DEV, leases, paths_of(ME, leases))
    policy, delta = planner.plan(PORT, DEV, {a.subnet: a}, paths_of(ME, {a.subnet: a}))
    assert shared in policy.sources and shared not in delta.del_sources
    assert delta.del_sources == b.private_ips
    _, delta = planner.plan(PORT, DEV, {}, {})
    assert shared in delta.del_sources


def test_update_declines_without_policy_or_with_other_rules() -> None:
    leases = {peer(1).subnet: peer(1)}
    planner = IngressPlanner()
    assert planner.update(PORT, DEV, leases, paths_of(ME, leases), set(leases)) is None
    planner.plan(PORT, DEV, leases, paths_of(ME, leases))
    assert planner.update(4789, DEV, leases, paths_of(ME, leases), set(leases)) is None
    assert planner.update(PORT, "overlay.2", leases, paths_of(ME, leases), set(leases)) is None
    # another port: a new policy from scratch (the whole table is rewritten)
    policy, delta = planner.plan(4789, DEV, leases, paths_of(ME, leases))
    assert policy.port == 4789 and len(delta.add_pairs) == 1


def test_vxlan_wireguard_keeps_only_same_site_peers() -> None:
    backend = parse_backend({"Type": "vxlan+wireguard"})
    me = peer(250, "a", backend="vxlan+wireguard")
    records = [peer(n, "a" if n % 2 else "b", backend="vxlan+wireguard") for n in range(1, 11)]
    leases = {r.subnet: r for r in [*records, me]}
    wg = plan_wireguard(me, leases, backend)
    vxlan = Planner().plan(me, wg.vxlan_leases)
    policy, _ = IngressPlanner().plan(PORT, DEV, wg.vxlan_leases, vxlan.paths)
    same_site = [r for r in records if r.site == "a"]
    assert {s for s in policy.peers} == {r.subnet for r in same_site}
    other = {a for r in records if r.site == "b" for a in (*r.private_ips, *r.public_ips)}
    assert not other & set(policy.sources)
    # a same-site peer's public address stays: hairpin NAT and failover inside the site
    assert {a for r in same_site for a in r.public_ips} <= set(policy.sources)


def test_gateway_member_lets_its_gateway_carry_the_other_sites() -> None:
    cfg = parse_config(
        '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan+wireguard"},'
        ' "Topology": {"Mode": "gateway"}}'
    )
    site_a = [peer(n, "a", backend="vxlan+wireguard") for n in (1, 2, 3)]
    site_b = [peer(n, "b", backend="vxlan+wireguard") for n in (11, 12)]
    me, gateway = site_a[2], site_a[0]
    leases = {r.subnet: r for r in site_a + site_b}
    claims = {
        "a": GatewayClaim("a", gateway.node, gateway.node_id, gateway.subnet),
        "b": GatewayClaim("b", site_b[0].node, site_b[0].node_id, site_b[0].subnet),
    }
    topo = plan_gateway(cfg, me, leases, claims)
    assert topo.role == "member"
    vxlan = Planner().plan(me, topo.wireguard.vxlan_leases)
    carried = carried_prefixes(topo.via_gateway, leases)
    assert carried == {gateway.subnet: (site_b[0].subnet, site_b[1].subnet)}
    policy, _ = IngressPlanner().plan(PORT, DEV, topo.wireguard.vxlan_leases, vxlan.paths, carried)
    assert policy.sorted_pairs() == (
        (gateway.vtep_mac, gateway.subnet),
        (gateway.vtep_mac, site_b[0].subnet),
        (gateway.vtep_mac, site_b[1].subnet),
        (site_a[1].vtep_mac, site_a[1].subnet),
    )
    # the gateway itself: members carry their own subnets only
    topo_gw = plan_gateway(cfg, gateway, leases, claims)
    assert topo_gw.role == "gateway" and carried_prefixes(topo_gw.via_gateway, leases) == {}
    # incremental updates decline when what the gateway carries changed
    planner = IngressPlanner()
    planner.plan(PORT, DEV, topo.wireguard.vxlan_leases, vxlan.paths, carried)
    assert planner.update(PORT, DEV, leases, vxlan.paths, set(), {}) is None


def test_disjoint_prefixes() -> None:
    nets = [N("10.244.3.0/24"), N("10.244.0.0/16"), N("10.245.1.0/24"), N("10.244.3.0/24")]
    assert disjoint(nets) == (N("10.244.0.0/16"), N("10.245.1.0/24"))
    assert disjoint([]) == ()
    # a lease carrying a prefix inside its own subnet: one element, no overlap for nft
    p = peer(1)
    assert peer_ingress(p, None, [N("10.244.1.128/25")]).prefixes == (p.subnet,)


def test_same_site_peer_public_address_only_while_chosen() -> None:
    """A healthy same-site peer is accepted from its private addresses only (an internet
    forger of its public address fails the outer check); while we reach it over its public
    address (hairpin failover) that address is accepted too. Another site's peer: all."""
    near, far = peer(1, "a"), peer(2, "b")
    leases = {near.subnet: near, far.subnet: far}
    private = PeerPath(near.private_ips[0], "private", "same site")
    public = PeerPath(near.public_ips[0], "public", "failover")
    far_path = PeerPath(far.public_ips[0], "public", "other site")
    policy, _ = IngressPlanner().plan(
        PORT, DEV, leases, {near.subnet: private, far.subnet: far_path}, site="a"
    )
    assert policy.peers[near.subnet].sources == near.private_ips
    assert set(policy.peers[far.subnet].sources) == {*far.private_ips, *far.public_ips}
    planner = IngressPlanner()
    planner.plan(PORT, DEV, leases, {near.subnet: private, far.subnet: far_path}, site="a")
    out = planner.update(
        PORT, DEV, leases, {near.subnet: public, far.subnet: far_path}, {near.subnet}, site="a"
    )
    assert out is not None
    policy, delta = out
    assert set(policy.peers[near.subnet].sources) == {*near.private_ips, *near.public_ips}
    assert delta.add_sources == near.public_ips and delta.del_sources == ()
    # without our site (None) every peer counts as another site's: all its candidates
    policy, _ = IngressPlanner().plan(PORT, DEV, leases, {near.subnet: private})
    assert set(policy.peers[near.subnet].sources) == {*near.private_ips, *near.public_ips}
    assert planner.update(PORT, DEV, leases, {}, set(), site="b") is None  # another site


def test_same_site_public_address_lingers_after_the_move_back_then_goes() -> None:
    """Back on the private path, we still accept the peer's public address for a while: the
    peer moves back on its own schedule and sends from its public address until then. Once
    the linger expires (the subnet is among the changed ones) it is refused again; an
    incremental update and a full plan agree all along."""
    near = peer(1, "a")
    leases = {near.subnet: near}
    private = {near.subnet: PeerPath(near.private_ips[0], "private", "same site")}
    public = {near.subnet: PeerPath(near.public_ips[0], "public", "failover")}
    linger = Linger(12.0)
    planner = IngressPlanner()
    planner.plan(PORT, DEV, leases, public, site="a")
    assert linger.left(near.subnet, near.public_ips[0], near.private_ips[0], near.public_ips, 0)
    out = planner.update(
        PORT, DEV, leases, private, {near.subnet}, site="a", lingering=linger.addresses
    )
    assert out is not None
    policy, delta = out
    assert set(policy.peers[near.subnet].sources) == {*near.private_ips, *near.public_ips}
    assert len(delta) == 0  # nothing to write: the public address simply stays
    full, _ = IngressPlanner().plan(
        PORT, DEV, leases, private, site="a", lingering=linger.addresses
    )
    assert full.peers == policy.peers
    assert linger.expire({near.subnet}, 11.9) == set()
    gone = linger.expire({near.subnet}, 12.0)
    assert gone == {near.subnet}
    out = planner.update(PORT, DEV, leases, private, gone, site="a", lingering=linger.addresses)
    assert out is not None
    policy, delta = out
    assert policy.peers[near.subnet].sources == near.private_ips
    assert delta.del_sources == near.public_ips
