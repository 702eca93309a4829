"""The WireGuard planner: peers, endpoints, routes, the VXLAN/WireGuard split, skips."""

from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlayd.planning.vxlan import Planner
from overlayd.planning.wireguard import WireGuardPlan, plan_wireguard
from overlayd.values.config import VXLAN, VXLAN_WIREGUARD, WIREGUARD, BackendConfig
from overlayd.values.kernel_state import RouteEntry
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import PUNCHED, PeerPath
from overlayd.values.wireguard import Endpoint, PresharedKey, WgPeerState, diff_peers
from tests.builders import node_lease
from tests.builders import wg_key as key

NOW = 1_000.0  # UNIX seconds for diff_peers: no handshake in these tests is fresh

WG = BackendConfig(type=WIREGUARD)
MIXED = BackendConfig(type=VXLAN_WIREGUARD)


def rec(
    n: int,
    *,
    site: str = "a",
    private: tuple[str, ...] | None = None,
    public: tuple[str, ...] = (),
    public_ip: str | None = None,
    key_n: int | None = None,
    has_key: bool = True,
    wg_port: int | None = 51820,
    backend: str = WIREGUARD,
    vni: int = 1,
    subnet: str | None = None,
    node: str | None = None,
) -> LeaseRecord:
    """Node ``n``: subnet 10.244.n.0/24, private address 10.0.0.n, key from ``n``."""
    priv = (f"10.0.0.{n}",) if private is None else private
    return node_lease(
        n,
        public_ip or (public[0] if public else priv[0]),
        node=node or f"node{n}",
        subnet=subnet or None,
        vni=vni,
        site=site,
        private_ips=priv,
        public_ips=public,
        backend_type=backend,
        public_key=key(n if key_n is None else key_n) if has_key else None,
        wireguard_port=wg_port,
    )


ME = rec(1, site="a", public=("203.0.113.1",))


def net(n: int) -> IPv4Network:
    return IPv4Network(f"10.244.{n}.0/24")


def leases(*records: LeaseRecord) -> dict[IPv4Network, LeaseRecord]:
    return {r.subnet: r for r in (ME, *records)}


def endpoint(address: str, port: int = 51820) -> Endpoint:
    return Endpoint(IPv4Address(address), port)


def with_backend(*records: LeaseRecord, backend: str) -> dict[IPv4Network, LeaseRecord]:
    me = dataclasses.replace(ME, backend_type=backend)
    return {
        r.subnet: r for r in (me, *(dataclasses.replace(r, backend_type=backend) for r in records))
    }


# -- full WireGuard -------------------------------------------------------------------


def test_full_wireguard_every_peer_over_wireguard() -> None:
    a2 = rec(2, site="a")
    b3 = rec(3, site="b", public=("198.51.100.3",))
    plan = plan_wireguard(ME, leases(a2, b3), WG)
    assert list(plan.peers) == [net(2), net(3)]
    assert plan.vxlan_leases == {}
    p2, p3 = plan.peers[net(2)], plan.peers[net(3)]
    assert p2.public_key == PublicKey.from_base64(key(2))
    assert p2.allowed_ips == (net(2),)
    assert p2.endpoint == endpoint("10.0.0.2")  # same site: the private address
    assert p3.endpoint == endpoint("198.51.100.3")  # other site: the public one
    assert p2.persistent_keepalive == p3.persistent_keepalive == 25
    assert p2.preshared_key is None
    assert plan.routes == {
        net(2): RouteEntry(net(2), IPv4Address("10.244.2.0")),
        net(3): RouteEntry(net(3), IPv4Address("10.244.3.0")),
    }
    assert plan.paths[net(2)].address == IPv4Address("10.0.0.2")
    assert plan.paths[net(3)].address == IPv4Address("198.51.100.3")
    assert plan.dial_in == () and plan.skipped == ()


def test_allowed_ips_hold_the_overlay_address() -> None:
    plan = plan_wireguard(ME, leases(rec(2)), WG)
    (allowed,) = plan.peers[net(2)].allowed_ips
    assert plan.routes[net(2)].via in allowed


def test_keepalive_psk_and_port_from_config_and_lease() -> None:
    psk = PresharedKey(bytes(range(32)))
    backend = BackendConfig(type=WIREGUARD, persistent_keepalive=0, psk=psk)
    plan = plan_wireguard(ME, leases(rec(2, wg_port=40000)), backend)
    peer = plan.peers[net(2)]
    assert peer.persistent_keepalive == 0
    assert peer.preshared_key == psk
    assert peer.endpoint == endpoint("10.0.0.2", 40000)  # the peer's port, not ours


def test_me_is_not_a_peer() -> None:
    # by subnet, and by identity under another subnet (a lease of ours not yet expired)
    old_me = dataclasses.replace(ME, subnet=net(9))
    plan = plan_wireguard(ME, leases(old_me, rec(2)), WG)
    assert list(plan.peers) == [net(2)]
    assert plan.skipped == ()


# -- endpoints ------------------------------------------------------------------------


def test_peer_without_reachable_address_dials_in() -> None:
    # another site, no public address: its lease PublicIP is its private address
    masq = rec(4, site="c", private=("192.168.7.4",))
    plan = plan_wireguard(ME, leases(masq), WG)
    peer = plan.peers[net(4)]
    assert peer.endpoint is None
    assert peer.persistent_keepalive == 25
    assert plan.dial_in == (net(4),)
    assert net(4) not in plan.paths
    assert plan.routes[net(4)] == RouteEntry(net(4), IPv4Address("10.244.4.0"))


def test_unverified_path_to_another_sites_private_address_dials_in() -> None:
    # the daemon's choice falls back to the lease PublicIP when nothing is verified; in
    # another site that address is nobody's (or, in overlapping ranges, somebody else's)
    masq = rec(4, site="c", private=("192.168.7.4",))
    guess = PeerPath(IPv4Address("192.168.7.4"), "public", "no verified path; guess")
    plan = plan_wireguard(ME, leases(masq), WG, {net(4): guess})
    assert plan.peers[net(4)].endpoint is None
    assert plan.dial_in == (net(4),)


def test_verified_path_gives_an_endpoint() -> None:
    # a host with a public address on its interface and no --public-ip: only its lease
    # PublicIP (listed as private) -- once probes verify it, we dial it
    direct = rec(5, site="d", private=("192.0.2.5",))
    path = PeerPath(IPv4Address("192.0.2.5"), "private", "verified lease PublicIP (private)")
    plan = plan_wireguard(ME, leases(direct), WG, {net(5): path}, verified={net(5)})
    assert plan.peers[net(5)].endpoint == endpoint("192.0.2.5")
    assert plan.paths == {net(5): path}
    assert plan.dial_in == ()


def test_endpoint_follows_the_chosen_path() -> None:
    b3 = rec(3, site="b", public=("198.51.100.3", "198.51.100.33"))
    a2 = rec(2, site="a", private=("10.0.0.2", "10.1.0.2"), public=("203.0.113.2",))
    paths = {
        net(3): PeerPath(IPv4Address("198.51.100.33"), "public", "verified public address"),
        net(2): PeerPath(IPv4Address("10.1.0.2"), "private", "verified private, same site"),
    }
    plan = plan_wireguard(ME, leases(a2, b3), WG, paths)
    assert plan.peers[net(3)].endpoint == endpoint("198.51.100.33")
    assert plan.peers[net(2)].endpoint == endpoint("10.1.0.2")
    assert plan.paths == paths
    # and moves when the choice moves (failover to the other public address)
    moved = {**paths, net(3): PeerPath(IPv4Address("198.51.100.3"), "public", "failover")}
    again = plan_wireguard(ME, leases(a2, b3), WG, moved)
    assert again.peers[net(3)].endpoint == endpoint("198.51.100.3")
    assert again.peers[net(2)] == plan.peers[net(2)]


def test_punched_path_goes_to_the_nat_mapping_or_dials_in() -> None:
    # b4 behind masquerade: its NAT maps its WireGuard port 51820 to 40000 towards us
    b4 = rec(4, site="b", private=("10.0.2.4",))
    nat = IPv4Address("203.0.113.2")
    punched = PeerPath(nat, PUNCHED, "verified punched path through NAT", 40000)
    plan = plan_wireguard(ME, leases(b4), WG, {net(4): punched}, verified={net(4)})
    assert plan.peers[net(4)].endpoint == endpoint("203.0.113.2", 40000)
    # we are reachable ourselves: no WireGuard port chosen, it dials in (WireGuard learns
    # the port its NAT chose from its handshake, and we never overwrite it)
    reachable = PeerPath(nat, PUNCHED, "verified punched path through NAT")
    plan = plan_wireguard(ME, leases(b4), WG, {net(4): reachable}, verified={net(4)})
    assert plan.peers[net(4)].endpoint is None and plan.dial_in == (net(4),)


def test_two_hosts_behind_nat_guess_nothing() -> None:
    # both PublicIPs site-local: b5's public address is its NAT's, reached only punched
    me = rec(1, site="a", public=("198.51.100.2",), public_ip="10.0.0.1")
    b5 = rec(5, site="b", public=("203.0.113.2",), public_ip="10.0.2.5")
    plan = plan_wireguard(me, leases(b5), WG)
    assert plan.peers[net(5)].endpoint is None and plan.dial_in == (net(5),)


def test_same_site_peer_always_has_an_endpoint() -> None:
    # same LAN: whatever address was chosen reaches it, verified or not
    a2 = rec(2, site="a", private=(), public_ip="10.9.9.2")
    plan = plan_wireguard(ME, leases(a2), WG)
    assert plan.peers[net(2)].endpoint == endpoint("10.9.9.2")


def test_without_paths_the_guess_is_used() -> None:
    b3 = rec(3, site="b", public=("198.51.100.3",))
    plan = plan_wireguard(ME, leases(b3), WG)
    assert plan.paths[net(3)].reason == "other site"


# -- mixed mode -----------------------------------------------------------------------


def world() -> dict[IPv4Network, LeaseRecord]:
    return with_backend(
        rec(2, site="a"),
        rec(3, site="a"),
        rec(4, site="b", public=("198.51.100.4",)),
        rec(5, site="b", public=("198.51.100.5",)),
        rec(6, site="c", private=("192.168.0.6",)),  # masquerade only
        backend=VXLAN_WIREGUARD,
    )


def test_mixed_splits_by_site() -> None:
    all_leases = world()
    me = all_leases[ME.subnet]
    plan = plan_wireguard(me, all_leases, MIXED)
    assert set(plan.vxlan_leases) == {net(1), net(2), net(3)}  # our site, me included
    assert list(plan.peers) == [net(4), net(5), net(6)]
    assert list(plan.routes) == [net(4), net(5), net(6)]
    assert plan.dial_in == (net(6),)
    assert plan.skipped == ()
    # the existing VXLAN planner takes the VXLAN share as it is
    vx = Planner().plan(me, plan.vxlan_leases)
    assert sorted(vx.state.routes) == [net(2), net(3)]
    assert vx.skipped == ()
    # every peer is on exactly one data plane
    assert set(vx.state.routes) | set(plan.routes) == set(all_leases) - {me.subnet}
    assert not set(vx.state.routes) & set(plan.routes)


def test_mixed_same_site_peer_needs_no_wireguard() -> None:
    # a same-site peer without key or port is VXLAN's business: not skipped here
    bare = rec(2, site="a", has_key=False, wg_port=None, backend=VXLAN_WIREGUARD)
    me = dataclasses.replace(ME, backend_type=VXLAN_WIREGUARD)
    plan = plan_wireguard(me, {me.subnet: me, bare.subnet: bare}, MIXED)
    assert plan.skipped == ()
    assert plan.peers == {}
    assert net(2) in plan.vxlan_leases


def test_mixed_all_in_one_site_is_plain_vxlan() -> None:
    records = with_backend(rec(2), rec(3), backend=VXLAN_WIREGUARD)
    plan = plan_wireguard(records[ME.subnet], records, MIXED)
    assert plan.peers == {} and plan.routes == {}
    assert plan.vxlan_leases == records


def test_vxlan_backend_leaves_everything_to_vxlan() -> None:
    records = with_backend(rec(2), rec(3, site="b"), backend=VXLAN)
    plan = plan_wireguard(records[ME.subnet], records, BackendConfig(type=VXLAN))
    assert plan == WireGuardPlan({}, {}, {}, (), records, ())
    assert plan.vxlan_leases is records


# -- skipped --------------------------------------------------------------------------


def test_skipped_with_reasons() -> None:
    records = leases(
        rec(2, has_key=False),
        rec(3, site="b", wg_port=None),
        rec(4, backend=VXLAN),
        rec(5, vni=2),
        rec(6, subnet="10.244.0.0/16"),  # overlaps ours
        rec(7, subnet="10.245.7.0/24"),  # outside the network
        rec(8, subnet="10.244.8.0/25"),
        rec(9),
    )
    plan = plan_wireguard(ME, records, WG, network=IPv4Network("10.244.0.0/16"))
    assert list(plan.peers) == [net(9)]
    reasons = dict(plan.skipped)
    assert [s for s, _ in plan.skipped] == sorted(reasons)
    assert "no public key" in reasons[net(2)]
    assert "no WireGuardPort" in reasons[net(3)]
    assert "backend 'vxlan' differs" in reasons[net(4)]
    assert "VNI 2 differs" in reasons[net(5)]
    assert "overlaps this node's subnet" in reasons[IPv4Network("10.244.0.0/16")]
    assert "outside the network" in reasons[IPv4Network("10.245.7.0/24")]
    assert "subnet length /25" in reasons[IPv4Network("10.244.8.0/25")]


def test_peer_with_our_key_is_skipped() -> None:
    plan = plan_wireguard(ME, leases(rec(2, key_n=1)), WG)
    assert plan.peers == {}
    assert plan.skipped == ((net(2), "its public key is this node's own"),)


def test_duplicate_key_lower_subnet_wins_whatever_the_order() -> None:
    a, b = rec(7, key_n=50), rec(3, key_n=50)
    for order in ((a, b), (b, a)):
        plan = plan_wireguard(ME, leases(*order), WG)
        assert list(plan.peers) == [net(3)]
        assert list(plan.routes) == [net(3)]
        ((subnet, reason),) = plan.skipped
        assert subnet == net(7)
        assert reason.endswith("already used by node3 (10.244.3.0/24)")


def test_invalid_key_is_skipped() -> None:
    # decode_lease refuses such keys; a record built in code is checked again
    bad = dataclasses.replace(rec(2), public_key="c2hvcnQ=")
    plan = plan_wireguard(ME, leases(bad, rec(3)), WG)
    assert list(plan.peers) == [net(3)]
    ((subnet, reason),) = plan.skipped
    assert subnet == net(2) and reason.startswith("invalid public key")


# -- determinism and the per-peer diff ------------------------------------------------


def big_world(n: int) -> dict[IPv4Network, LeaseRecord]:
    out = {}
    for i in range(2, n + 2):
        site = "abc"[i % 3]
        subnet = f"10.{244 + (i >> 8)}.{i & 0xFF}.0/24"
        public = (f"198.51.{i >> 8}.{i & 0xFF}",) if i % 5 else ()
        r = dataclasses.replace(
            rec(i & 0xFF, site=site, public=public, key_n=i, subnet=subnet, node=f"n{i}"),
            node_id=f"id-{i}",
            private_ips=(IPv4Address(f"10.{i >> 8}.0.{i & 0xFF}"),),
            public_ip=IPv4Address(public[0] if public else f"10.{i >> 8}.0.{i & 0xFF}"),
        )
        out[r.subnet] = r
    out[ME.subnet] = ME
    return out


@pytest.mark.parametrize("backend", [WG, MIXED])
def test_deterministic_across_input_orders(backend: BackendConfig) -> None:
    records = big_world(600)
    if backend is MIXED:
        records = {
            s: dataclasses.replace(r, backend_type=VXLAN_WIREGUARD) for s, r in records.items()
        }
    me = records[ME.subnet]
    rng = random.Random(7)
    paths = {
        s: PeerPath(r.public_ips[0], "public", "verified")
        for s, r in records.items()
        if r.public_ips and rng.random() < 0.3
    }
    verified = frozenset(paths)
    first = plan_wireguard(me, records, backend, paths, verified=verified)
    items = list(records.items())
    for _ in range(5):
        rng.shuffle(items)
        again = plan_wireguard(
            me, dict(items), backend, dict(reversed(paths.items())), verified=verified
        )
        assert list(again.peers.items()) == list(first.peers.items())
        assert list(again.routes.items()) == list(first.routes.items())
        assert list(again.paths.items()) == list(first.paths.items())
        assert again.dial_in == first.dial_in and again.skipped == first.skipped
        assert again.vxlan_leases == first.vxlan_leases
    order = [int(s.network_address) for s in first.peers]
    assert order == sorted(order)
    assert first.dial_in  # the world has hosts without public addresses in other sites


def test_plan_feeds_the_per_peer_diff() -> None:
    records = big_world(300)
    plan = plan_wireguard(ME, records, WG)
    # no key twice, so diff_peers accepts it; applied, nothing is left to do
    changes = diff_peers(plan.peers.values(), {}, now=NOW)
    assert len(changes.add) == len(plan.peers)
    actual = {p.public_key: WgPeerState(p) for p in plan.peers.values()}
    assert len(diff_peers(plan.peers.values(), actual, now=NOW)) == 0
    # a new node is one addition; nobody else is touched
    newcomer = rec(250, site="b", public=("198.51.200.1",), key_n=9999, subnet="10.250.0.0/24")
    grown = plan_wireguard(ME, {**records, newcomer.subnet: newcomer}, WG)
    changes = diff_peers(grown.peers.values(), actual, now=NOW)
    assert [p.public_key for p in changes.add] == [PublicKey.from_base64(key(9999))]
    assert changes.update == () and changes.remove == ()
