"""Conflicts between leases (the older lease wins) and etcd endpoints never guessed as paths."""

from __future__ import annotations

import itertools
import time
from ipaddress import IPv4Address, IPv4Network

from overlayd.planning.path_choice import PathStats, choose_path
from overlayd.planning.vxlan import Planner, conflict_order
from overlayd.planning.wireguard import plan_wireguard
from overlayd.values.config import VXLAN_WIREGUARD, WIREGUARD, BackendConfig
from overlayd.values.lease import LeaseRecord
from overlayd.values.paths import NOT_GUESSED, PeerCandidates, PeerPath, guess
from tests.builders import node_lease, wg_key

ETCD = IPv4Address("192.0.2.10")
UNGUESSABLE = frozenset({ETCD})


def rec(
    n: int,
    *,
    mac_n: int | None = None,
    key_n: int | None = None,
    site: str = "b",
    public_ip: str | None = None,
    public: tuple[str, ...] = (),
    private: tuple[str, ...] = (),
    backend: str = "vxlan",
) -> LeaseRecord:
    """Node ``n`` at 10.244.n.0/24 (another site than ``ME`` unless told)."""
    return node_lease(
        n,
        public_ip or f"198.51.100.{n}",
        mac_n=mac_n,
        site=site,
        private_ips=private,
        public_ips=public,
        backend_type=backend,
        public_key=wg_key(n if key_n is None else key_n),
        wireguard_port=51820,
    )


ME = rec(1, site="a")
WG_ME = rec(1, site="a", backend=WIREGUARD)


def as_map(*records: LeaseRecord) -> dict[IPv4Network, LeaseRecord]:
    return {r.subnet: r for r in (ME, *records)}


def net(n: int) -> IPv4Network:
    return IPv4Network(f"10.244.{n}.0/24")


# -- the older lease wins ------------------------------------------------------------------


def test_conflict_order_is_age_then_subnet() -> None:
    created = {net(3): 50, net(7): 10}
    assert conflict_order(net(7), created) < conflict_order(net(3), created)
    assert conflict_order(net(3), None) < conflict_order(net(7), None)  # no ages: by subnet
    assert conflict_order(net(3), {}) < conflict_order(net(7), {})
    same = {net(3): 10, net(7): 10}
    assert conflict_order(net(3), same) < conflict_order(net(7), same)


def test_older_lease_keeps_its_mac_against_a_lower_subnet_newcomer() -> None:
    real, impostor = rec(7), rec(3, mac_n=7)  # the impostor copies node7's MAC
    created = {ME.subnet: 1, real.subnet: 10, impostor.subnet: 99}
    for order in itertools.permutations([real, impostor]):
        plan = Planner().plan(ME, as_map(*order), created=created)
        assert sorted(plan.state.routes) == [real.subnet]
        assert plan.state.fdbs[real.vtep_mac].dst == real.public_ip
        reason = f"node3's {real.vtep_mac} already used by node7 ({real.subnet})"
        assert plan.skipped == ((impostor.subnet, reason),)


def test_equal_age_falls_back_to_the_lower_subnet() -> None:
    a, b = rec(7), rec(3, mac_n=7)
    plan = Planner().plan(ME, as_map(a, b), created={a.subnet: 5, b.subnet: 5})
    assert sorted(plan.state.routes) == [b.subnet]


def test_three_way_conflict_oldest_wins() -> None:
    recs = [rec(3, mac_n=9), rec(5, mac_n=9), rec(9)]
    created = {net(3): 30, net(5): 20, net(9): 40}
    for order in itertools.permutations(recs):
        plan = Planner().plan(ME, as_map(*order), created=created)
        assert sorted(plan.state.routes) == [net(5)]
        assert [s for s, _ in plan.skipped] == [net(3), net(9)]


def test_a_newcomer_taking_our_mac_is_skipped_whatever_its_age() -> None:
    thief = rec(2, mac_n=1)
    plan = Planner().plan(ME, as_map(thief), created={thief.subnet: 0, ME.subnet: 100})
    assert plan.state.size() == 0
    assert plan.skipped[0][1].endswith(f"already used by this node ({ME.subnet})")


def test_incremental_update_declines_on_a_conflict_and_the_full_plan_keeps_the_older() -> None:
    planner = Planner()
    real = rec(7)
    leases = as_map(real)
    created = {ME.subnet: 1, real.subnet: 10}
    planner.plan(ME, leases, created=created)
    impostor = rec(3, mac_n=7)
    leases[impostor.subnet] = impostor
    created[impostor.subnet] = 99
    assert planner.update(ME, leases, {impostor.subnet}) is None  # a new conflict
    plan = planner.plan(ME, leases, created=created)
    assert sorted(plan.state.routes) == [real.subnet]
    # the impostor changes again: still skipped, so the update declines again
    assert planner.update(ME, leases, {impostor.subnet}) is None
    # the impostor leaves: the winner is contested, a full plan settles it
    del leases[impostor.subnet]
    assert planner.update(ME, leases, {impostor.subnet}) is None
    plan = planner.plan(ME, leases, created=created)
    assert sorted(plan.state.routes) == [real.subnet] and plan.skipped == ()
    # an unrelated peer joins: the incremental update applies, same as a full plan
    other = rec(20)
    leases[other.subnet] = other
    done = planner.update(ME, leases, {other.subnet})
    assert done is not None
    assert done[0].state == Planner().plan(ME, leases, created=created).state


def test_the_real_peer_leaving_lets_the_newcomer_in() -> None:
    real, impostor = rec(7), rec(3, mac_n=7)
    created = {real.subnet: 10, impostor.subnet: 99}
    planner = Planner()
    planner.plan(ME, as_map(real, impostor), created=created)
    leases = as_map(impostor)
    assert planner.update(ME, leases, {real.subnet}) is None
    assert sorted(planner.plan(ME, leases, created=created).state.routes) == [impostor.subnet]


def test_wireguard_older_lease_keeps_its_key_against_a_lower_subnet() -> None:
    real = rec(7, backend=WIREGUARD, public=("198.51.100.7",))
    impostor = rec(3, key_n=7, backend=WIREGUARD, public=("192.0.2.66",))
    created = {real.subnet: 10, impostor.subnet: 99}
    backend = BackendConfig(type=WIREGUARD)
    for order in itertools.permutations([real, impostor]):
        leases = {r.subnet: r for r in (WG_ME, *order)}
        plan = plan_wireguard(WG_ME, leases, backend, created=created)
        assert list(plan.peers) == [real.subnet]
        assert list(plan.routes) == [real.subnet]
        assert list(plan.paths) == [real.subnet]
        ((subnet, reason),) = plan.skipped
        assert subnet == impostor.subnet
        assert reason.startswith("node3's public key") and "used by node7" in reason
    # without ages: the lower subnet (as before)
    plan = plan_wireguard(WG_ME, {r.subnet: r for r in (WG_ME, real, impostor)}, backend)
    assert list(plan.peers) == [impostor.subnet]


def test_wireguard_evicted_holder_leaves_dial_in_and_skips_stay_sorted() -> None:
    # node3 (newest, no reachable address: dial-in) holds node9's key until node9 comes
    newest = rec(3, key_n=9, backend=WIREGUARD, private=("10.9.9.9",), public_ip="10.9.9.9")
    oldest = rec(9, backend=WIREGUARD, public=("198.51.100.9",))
    other = rec(5, key_n=5, backend=WIREGUARD, public=("198.51.100.5",))
    bad = rec(2, backend="vxlan")
    leases = {r.subnet: r for r in (WG_ME, newest, oldest, other, bad)}
    created = {net(3): 90, net(9): 10, net(5): 50, net(2): 1}
    plan = plan_wireguard(WG_ME, leases, BackendConfig(type=WIREGUARD), created=created)
    assert list(plan.peers) == [net(5), net(9)]
    assert plan.dial_in == ()
    assert [s for s, _ in plan.skipped] == [net(2), net(3)]


# -- etcd endpoints are never guessed ------------------------------------------------------


def test_guess_skips_etcd_endpoints() -> None:
    only_etcd = PeerCandidates("b", public=(ETCD,), fallback=ETCD)
    assert guess("a", only_etcd) == PeerPath(ETCD, "public", "other site")
    assert guess("a", only_etcd, UNGUESSABLE) is None
    other = IPv4Address("198.51.100.9")
    two = PeerCandidates("b", public=(ETCD, other), fallback=ETCD)
    assert guess("a", two, UNGUESSABLE) == PeerPath(other, "public", "other site")
    fallback = PeerCandidates("b", public=(ETCD,), fallback=other)
    assert guess("a", fallback, UNGUESSABLE) == PeerPath(other, "public", "lease PublicIP")
    same_site = PeerCandidates("a", private=(ETCD,), fallback=ETCD)
    assert guess("a", same_site, UNGUESSABLE) is None


def test_a_verified_etcd_address_is_used() -> None:
    """A real node on the etcd host: used once its probes verify the path."""
    peer = PeerCandidates("b", public=(ETCD,), fallback=ETCD)
    now = time.monotonic()
    assert choose_path("a", peer, {}, None, now, unguessable=UNGUESSABLE) is None
    stats = {ETCD: PathStats(sent=3, received=3, verified_since=now - 1)}
    path = choose_path("a", peer, stats, None, now, unguessable=UNGUESSABLE)
    assert path is not None and path.address == ETCD
    assert path.reason == "verified public address"
    # verified, then it stops answering: no guess at the etcd host
    down = {ETCD: PathStats(sent=6, received=3, losses=3, downs=1)}
    assert choose_path("a", peer, down, path, now, unguessable=UNGUESSABLE) is None


def test_vxlan_planner_does_not_guess_an_etcd_endpoint() -> None:
    colocated = rec(5, public_ip=str(ETCD))
    leases = as_map(colocated)
    planner = Planner()
    plan = planner.plan(ME, leases, unguessable=UNGUESSABLE)
    assert plan.state.size() == 0
    assert plan.skipped == ((colocated.subnet, NOT_GUESSED),)
    verified = PeerPath(ETCD, "public", "verified public address")
    assert planner.update(ME, leases, {colocated.subnet}, unguessable=UNGUESSABLE) is None
    plan = planner.plan(ME, leases, {colocated.subnet: verified}, unguessable=UNGUESSABLE)
    assert plan.state.fdbs[colocated.vtep_mac].dst == ETCD
    assert planner.plan(ME, leases).state.fdbs[colocated.vtep_mac].dst == ETCD  # the old rule


def test_incremental_update_declines_when_only_an_etcd_address_is_left() -> None:
    planner = Planner()
    leases = as_map(rec(5))
    planner.plan(ME, leases, unguessable=UNGUESSABLE)
    leases[net(6)] = rec(6, public_ip=str(ETCD))
    assert planner.update(ME, leases, {net(6)}, unguessable=UNGUESSABLE) is None
    assert planner.update(ME, leases, {net(6)}) is None  # another unguessable set: full plan


def test_wireguard_peer_at_an_etcd_address_dials_in() -> None:
    colocated = rec(5, backend=WIREGUARD, public=(str(ETCD),), public_ip=str(ETCD))
    leases = {r.subnet: r for r in (WG_ME, colocated)}
    backend = BackendConfig(type=VXLAN_WIREGUARD)
    plan = plan_wireguard(WG_ME, leases, backend, unguessable=UNGUESSABLE)
    assert plan.dial_in == (colocated.subnet,)
    assert plan.peers[colocated.subnet].endpoint is None
    verified = {colocated.subnet: PeerPath(ETCD, "public", "verified public address")}
    plan = plan_wireguard(
        WG_ME, leases, backend, verified, verified={colocated.subnet}, unguessable=UNGUESSABLE
    )
    endpoint = plan.peers[colocated.subnet].endpoint
    assert endpoint is not None and endpoint.address == ETCD
