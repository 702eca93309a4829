"""Hole punching's pure rules (overlayd/planning/punch.py) and how punched endpoints rank
in the path choice (overlayd/planning/path_choice.py, overlayd/values/paths.py)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.planning.path_choice import (
    Observation,
    PathStats,
    choose_path,
    direct_verified,
    probe_targets,
)
from overlayd.planning.punch import (
    PunchParams,
    PunchPhase,
    collect_endpoints,
    give_up_reason,
    next_change,
    phase,
    pick,
    seen_to_publish,
    step,
)
from overlayd.probe.settings import PeerTarget
from overlayd.values.keys import PrivateKey
from overlayd.values.lease import LeaseRecord, NodeEndpoints, SeenEndpoints
from overlayd.values.lease_rules import MAX_ENDPOINTS, MAX_SEEN
from overlayd.values.paths import PUBLIC, PUNCHED, PeerCandidates, behind_nat, guess_path
from overlayd.values.wireguard import Endpoint
from tests.builders import lease

ME = IPv4Network("10.244.1.0/24")
PEER = IPv4Network("10.244.2.0/24")
NAT_A, NAT_B = IPv4Address("198.51.100.2"), IPv4Address("203.0.113.2")
VERIFIED = PathStats(sent=1, received=1, verified_since=1.0)
PARAMS = PunchParams(open=1.0, give_up=4.0, retry=60.0)


def ep(text: str) -> Endpoint:
    return Endpoint.parse(text)


def node(subnet: IPv4Network, site: str, address: str, **fields: Any) -> LeaseRecord:
    fields.setdefault("probe_port", 8473)
    fields.setdefault("wireguard_port", 51820)
    return lease(subnet, address, site=site, private_ips=(address,), **fields)


def me(**fields: Any) -> LeaseRecord:
    return node(ME, "cloud-a", "10.0.1.11", **fields)


def peer(**fields: Any) -> LeaseRecord:
    return node(PEER, "cloud-b", "10.0.2.11", **fields)


# -- what an observer publishes ------------------------------------------------------------


def test_nothing_seen_publishes_nothing() -> None:
    assert seen_to_publish(me(), {PEER: peer()}, {}, {}) == ()


def test_a_peer_behind_nat_is_published_both_sockets() -> None:
    probe, wg = ep("203.0.113.2:8473"), ep("203.0.113.2:40000")
    out = seen_to_publish(me(), {PEER: peer()}, {PEER: probe}, {PEER: wg})
    assert out == (SeenEndpoints(PEER, probe, wg),)


def test_what_the_peer_already_publishes_or_owns_is_no_news() -> None:
    probe, wg = ep("203.0.113.2:8473"), ep("203.0.113.2:51820")
    adopted = peer(endpoints=NodeEndpoints((probe,), (wg,)))
    assert seen_to_publish(me(), {PEER: adopted}, {PEER: probe}, {PEER: wg}) == ()
    public = peer(public_ips=(NAT_B,))  # a 1:1 NAT host: its own address and ports
    assert seen_to_publish(me(), {PEER: public}, {PEER: probe}, {PEER: wg}) == ()


def test_same_site_unknown_and_private_sources_are_not_published() -> None:
    mate = node(PEER, "cloud-a", "10.0.1.12")
    private = ep("10.0.2.11:8473")
    assert seen_to_publish(me(), {PEER: mate}, {PEER: ep("198.51.100.2:1")}, {}) == ()
    assert seen_to_publish(me(), {}, {PEER: ep("203.0.113.2:1")}, {}) == ()
    assert seen_to_publish(me(), {PEER: peer()}, {PEER: private}, {}) == ()


def test_many_seen_are_bounded_in_subnet_order() -> None:
    peers = {IPv4Network(f"10.244.{i}.0/24"): node(IPv4Network(f"10.244.{i}.0/24"), "b",
             "10.0.2.11") for i in range(10, 40)}  # fmt: skip
    sources = {s: ep(f"203.0.113.2:{1000 + i}") for i, s in enumerate(peers)}
    out = seen_to_publish(me(), peers, sources, {})
    assert len(out) == MAX_SEEN
    assert [s.subnet for s in out] == sorted(peers)[:MAX_SEEN]


# -- what a node behind NAT collects -------------------------------------------------------


def observation(address: str, port: int, site: str = "cloud-b") -> Observation[str]:
    return Observation(IPv4Address(address), port, "bare", site, 2, 0.0, 1.0)


def test_collects_from_peers_seen_and_from_probe_replies() -> None:
    wg = ep("198.51.100.2:51820")
    observer = peer(seen=(SeenEndpoints(ME, None, wg),))
    out = collect_endpoints(me(), {PEER: observer}, [observation("198.51.100.2", 8473)])
    assert out == NodeEndpoints((ep("198.51.100.2:8473"),), (wg,))


def test_collects_nothing_from_nobody() -> None:
    assert collect_endpoints(me(), {}, []) == NodeEndpoints()


def test_ignores_other_subnets_same_site_private_and_own_addresses() -> None:
    other = peer(seen=(SeenEndpoints(PEER, ep("198.51.100.2:1"), None),))
    mate = node(PEER, "cloud-a", "10.0.1.12", seen=(SeenEndpoints(ME, ep("198.51.100.2:2")),))
    mine = me(public_ips=(NAT_A,))
    obs = [observation("10.0.1.11", 8473), observation("198.51.100.2", 3, "cloud-a"),
           observation("198.51.100.2", 8473)]  # fmt: skip
    assert collect_endpoints(mine, {PEER: other}, obs) == NodeEndpoints()
    assert collect_endpoints(me(), {PEER: mate}, []) == NodeEndpoints()


def test_new_endpoints_come_first_and_old_ones_stay_within_the_bound() -> None:
    old = tuple(ep(f"198.51.100.2:{2000 + i}") for i in range(MAX_ENDPOINTS))
    out = collect_endpoints(me(endpoints=NodeEndpoints(old)), {}, [observation(
        "198.51.100.2", 1000)])  # fmt: skip
    assert out.probe == (ep("198.51.100.2:1000"), *old[: MAX_ENDPOINTS - 1])
    assert collect_endpoints(me(endpoints=NodeEndpoints(old)), {}, []).probe == old


# -- which endpoint to send to ---------------------------------------------------------------


def test_pick_prefers_what_we_heard_then_the_socket_port_then_the_first() -> None:
    two = (ep("203.0.113.2:40000"), ep("203.0.113.2:8473"))
    assert pick((), 8473, None) == ()
    assert pick(two, 8473, None) == (ep("203.0.113.2:8473"),)
    assert pick(two, 9999, None) == (ep("203.0.113.2:40000"),)
    heard = ep("203.0.113.2:40000")
    assert pick(two, 8473, heard) == (heard,)
    assert pick(two, 8473, ep("192.0.2.9:1")) == (ep("203.0.113.2:8473"),)
    many = (ep("203.0.113.2:1"), ep("198.51.100.2:2"))
    assert pick(many, None, None) == (ep("198.51.100.2:2"), ep("203.0.113.2:1"))


# -- the attempt -----------------------------------------------------------------------------


def test_an_attempt_opens_probes_and_fails_then_retries_on_the_same_grid() -> None:
    a = step(None, "k", False, 100.0, PARAMS)
    assert phase(a, 100.5, PARAMS) is PunchPhase.OPENING
    assert phase(a, 101.0, PARAMS) is PunchPhase.PROBING
    assert phase(a, 105.0, PARAMS) is PunchPhase.FAILED
    assert [next_change(a, t, PARAMS) for t in (100.0, 102.0, 106.0)] == [101.0, 105.0, 160.0]
    assert step(a, "k", False, 130.0, PARAMS) == a
    again = step(a, "k", False, 281.0, PARAMS)
    assert again.started == 280.0 and phase(again, 281.0, PARAMS) is PunchPhase.PROBING


def test_a_verified_attempt_stays_punched_and_a_new_key_starts_over() -> None:
    a = step(step(None, "k", False, 100.0, PARAMS), "k", True, 101.5, PARAMS)
    assert phase(a, 1000.0, PARAMS) is PunchPhase.PUNCHED and next_change(a, 1000.0, PARAMS) is None
    b = step(a, "k2", False, 200.0, PARAMS)
    assert b.started == 200.0 and phase(b, 200.0, PARAMS) is PunchPhase.OPENING


def test_give_up_reason_names_the_endpoints_and_the_relay() -> None:
    why = give_up_reason((ep("203.0.113.2:8473"),), PARAMS)
    assert "203.0.113.2:8473" in why and "relay" in why and "5 s" in why


# -- path choice -----------------------------------------------------------------------------


def test_both_behind_nat_every_address_is_punched_and_nothing_is_guessed() -> None:
    b = peer(public_ips=(NAT_B,), endpoints=NodeEndpoints((ep("203.0.113.2:40000"),)))
    assert behind_nat(me()) and behind_nat(b)
    found = PeerCandidates.between(me(), b)
    assert found.public == () and ep("203.0.113.2:8473") in found.punched
    assert ep("203.0.113.2:51820") in found.punched_wireguard
    assert guess_path(me(), b) is None
    assert probe_targets("cloud-a", found) == ()


def test_a_public_peer_or_plain_vxlan_keeps_its_public_addresses() -> None:
    public = node(PEER, "bare", "192.0.2.31", public_ips=(IPv4Address("192.0.2.31"),))
    assert not behind_nat(public)
    assert PeerCandidates.between(me(), public).public == (IPv4Address("192.0.2.31"),)
    vxlan = peer(public_ips=(NAT_B,), wireguard_port=None)
    assert PeerCandidates.between(me(wireguard_port=None), vxlan).public == (NAT_B,)


def test_a_punched_endpoint_is_chosen_only_verified_and_after_direct_ones() -> None:
    found = PeerCandidates(
        "cloud-b", public=(IPv4Address("192.0.2.9"),), punched=(ep("203.0.113.2:40000"),),
        punched_wireguard=(ep("203.0.113.2:41000"),),
    )  # fmt: skip
    assert choose_path("cloud-a", found, {}, None, 10.0).address != NAT_B  # type: ignore[union-attr]
    punched = choose_path("cloud-a", found, {NAT_B: VERIFIED}, None, 10.0)
    assert punched is not None and punched.kind == PUNCHED and punched.wireguard_port == 41000
    assert not direct_verified("cloud-a", found, {NAT_B: VERIFIED})
    both = {NAT_B: VERIFIED, IPv4Address("192.0.2.9"): VERIFIED}
    assert direct_verified("cloud-a", found, both)
    moved = choose_path("cloud-a", found, both, punched, 10.0)
    assert moved is not None and moved.kind == PUBLIC and moved.reason.startswith("moved")


def test_the_target_probes_a_punched_endpoint_at_its_own_port() -> None:
    key = PrivateKey.generate().public_key()
    target = PeerTarget(key, (IPv4Address("192.0.2.9"),), "b", 8473,
                        (ep("203.0.113.2:40000"), ep("192.0.2.9:1")), 5.0)  # fmt: skip
    assert target.probed() == {NAT_B: (40000, 5.0), IPv4Address("192.0.2.9"): (8473, 0.0)}
