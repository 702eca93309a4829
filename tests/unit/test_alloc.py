"""Pure subnet allocation: free-subnet choice and claim planning."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Network
from typing import Any

import pytest

from overlayd.planning.alloc import Claim, ClaimKind, choose_free, plan_claims
from overlayd.values.config import NetworkConfig, parse_config
from overlayd.values.lease import LeaseRecord
from tests.builders import lease


def cfg(**fields: Any) -> NetworkConfig:
    fields.setdefault("Network", "10.244.0.0/16")
    return parse_config(json.dumps(fields))


def rec(subnet: str | IPv4Network, node: str = "other", node_id: str = "id-other") -> LeaseRecord:
    return lease(subnet, "192.0.2.1", node=node, node_id=node_id)


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


# -- choose_free ----------------------------------------------------------------------


def test_choose_free_empty_pool_is_random_and_allocatable() -> None:
    c = cfg()
    rng = random.Random(1)
    picks = [choose_free(c, set(), rng) for _ in range(200)]
    assert all(p is not None and c.is_allocatable(p) for p in picks)
    # random: many distinct subnets, not always the first one
    assert len(set(picks)) > 100


def test_choose_free_is_reproducible_with_seed() -> None:
    c = cfg()
    a = [choose_free(c, set(), random.Random(7)) for _ in range(3)]
    b = [choose_free(c, set(), random.Random(7)) for _ in range(3)]
    assert a == b


@pytest.mark.parametrize("taken_share", [0.0, 0.3, 0.49, 0.5, 0.9, 0.99])
def test_choose_free_never_returns_taken(taken_share: float) -> None:
    c = cfg(Network="10.244.0.0/20")  # 15 allocatable /24
    rng = random.Random(3)
    allsubs = [c.subnet_at(i) for i in range(c.subnet_count())]
    for trial in range(50):
        taken = set(rng.sample(allsubs, int(len(allsubs) * taken_share)))
        got = choose_free(c, taken, random.Random(trial))
        assert got is not None
        assert got not in taken
        assert c.is_allocatable(got)


def test_choose_free_exhausted_returns_none() -> None:
    c = cfg(Network="10.244.0.0/22")  # 3 allocatable
    taken = {c.subnet_at(i) for i in range(c.subnet_count())}
    assert choose_free(c, taken, random.Random(0)) is None


def test_choose_free_ignores_taken_outside_the_pool() -> None:
    c = cfg(Network="10.244.0.0/22")  # pool: .1, .2, .3
    taken = {
        net("10.244.0.0/24"),  # skipped first subnet
        net("192.168.1.0/24"),  # elsewhere
        net("10.244.1.0/25"),  # other length
        net("10.244.1.0/24"),
        net("10.244.2.0/24"),
    }
    for seed in range(20):
        assert choose_free(c, taken, random.Random(seed)) == net("10.244.3.0/24")


def test_choose_free_almost_full_uses_enumeration() -> None:
    """With one free subnet among thousands, random probing alone would almost never find it."""
    c = cfg(Network="10.0.0.0/8", SubnetLen=20)  # 4095 allocatable
    count = c.subnet_count()
    assert count == 4095
    free_index = 1234
    taken = {c.subnet_at(i) for i in range(count) if i != free_index}
    for seed in range(5):
        assert choose_free(c, taken, random.Random(seed)) == c.subnet_at(free_index)


def test_choose_free_single_subnet_pool() -> None:
    c = cfg(Network="10.1.0.0/26", SubnetLen=28, SubnetMin="10.1.0.32", SubnetMax="10.1.0.32")
    assert choose_free(c, set(), random.Random(0)) == net("10.1.0.32/28")
    assert choose_free(c, {net("10.1.0.32/28")}, random.Random(0)) is None
    # others' subnets outside SubnetMin..SubnetMax do not matter
    assert choose_free(c, {net("10.1.0.16/28")}, random.Random(0)) == net("10.1.0.32/28")


# -- plan_claims ----------------------------------------------------------------------

ME, MY_ID = "me", "id-me"


def claims(
    c: NetworkConfig,
    leases: dict[IPv4Network, LeaseRecord | None] | None = None,
    reservations: dict[IPv4Network, str] | None = None,
    remembered: IPv4Network | None = None,
    seed: int = 0,
) -> list[Claim]:
    return plan_claims(
        c,
        node=ME,
        node_id=MY_ID,
        leases=leases or {},
        reservations=reservations or {},
        remembered=remembered,
        rng=random.Random(seed),
    )


def test_fresh_node_gets_one_free_claim() -> None:
    c = cfg()
    got = claims(c)
    assert len(got) == 1
    assert got[0].kind is ClaimKind.FREE
    assert c.is_allocatable(got[0].subnet)


def test_own_lease_needs_name_and_id() -> None:
    c = cfg()
    mine = net("10.244.5.0/24")
    same_name_other_id = net("10.244.6.0/24")
    same_id_other_name = net("10.244.7.0/24")
    leases: dict[IPv4Network, LeaseRecord | None] = {
        mine: rec(mine, ME, MY_ID),
        same_name_other_id: rec(same_name_other_id, ME, "id-old"),
        same_id_other_name: rec(same_id_other_name, "renamed", MY_ID),
    }
    assert claims(c, leases) == [Claim(mine, ClaimKind.OWN_LEASE)]


def test_lost_state_dir_is_a_new_node() -> None:
    c = cfg(Network="10.244.0.0/22")  # .1 .2 .3
    old = net("10.244.1.0/24")
    got = claims(c, {old: rec(old, ME, "id-before-reinstall")})
    assert len(got) == 1 and got[0].kind is ClaimKind.FREE
    assert got[0].subnet != old


def test_own_lease_outside_pool_is_not_rebound() -> None:
    c = cfg(SubnetMin="10.244.10.0", SubnetMax="10.244.20.0")
    outside = net("10.244.30.0/24")
    got = claims(c, {outside: rec(outside, ME, MY_ID)})
    assert [k.kind for k in got] == [ClaimKind.FREE]
    assert got[0].subnet != outside


def test_claim_order_own_reserved_remembered() -> None:
    c = cfg()
    own = net("10.244.9.0/24")
    reserved = net("10.244.4.0/24")
    remembered = net("10.244.2.0/24")
    got = claims(c, {own: rec(own, ME, MY_ID)}, {reserved: ME}, remembered)
    assert got == [
        Claim(own, ClaimKind.OWN_LEASE),
        Claim(reserved, ClaimKind.RESERVED),
        Claim(remembered, ClaimKind.REMEMBERED),
    ]


def test_several_own_leases_and_reservations_are_sorted() -> None:
    c = cfg()
    a, b = net("10.244.200.0/24"), net("10.244.3.0/24")
    r1, r2 = net("10.244.150.0/24"), net("10.244.20.0/24")
    got = claims(c, {a: rec(a, ME, MY_ID), b: rec(b, ME, MY_ID)}, {r1: ME, r2: ME})
    assert got == [
        Claim(b, ClaimKind.OWN_LEASE),
        Claim(a, ClaimKind.OWN_LEASE),
        Claim(r2, ClaimKind.RESERVED),
        Claim(r1, ClaimKind.RESERVED),
    ]


def test_reservation_for_us_taken_by_someone_is_skipped() -> None:
    c = cfg(Network="10.244.0.0/22")
    reserved = net("10.244.2.0/24")
    got = claims(c, {reserved: rec(reserved)}, {reserved: ME})
    assert [k.kind for k in got] == [ClaimKind.FREE]
    assert got[0].subnet != reserved


def test_reservations_for_others_are_never_claimed() -> None:
    c = cfg(Network="10.244.0.0/22")  # pool .1 .2 .3
    r_other = net("10.244.1.0/24")
    r_other2 = net("10.244.3.0/24")
    for seed in range(30):
        got = claims(c, reservations={r_other: "alice", r_other2: "bob"}, seed=seed)
        assert got == [Claim(net("10.244.2.0/24"), ClaimKind.FREE)]
    # remembered but now reserved for someone else: not claimed either
    got = claims(c, reservations={r_other: "alice"}, remembered=r_other)
    assert all(k.subnet != r_other for k in got)
    assert [k.kind for k in got] == [ClaimKind.FREE]


def test_remembered_only_if_free_and_allocatable() -> None:
    c = cfg(SubnetMin="10.244.10.0", SubnetMax="10.244.20.0")
    rem = net("10.244.12.0/24")
    assert claims(c, remembered=rem) == [Claim(rem, ClaimKind.REMEMBERED)]
    # taken by someone else -> a free one instead
    got = claims(c, {rem: rec(rem)}, remembered=rem)
    assert [k.kind for k in got] == [ClaimKind.FREE] and got[0].subnet != rem
    # outside SubnetMin..SubnetMax, or another length, or another network
    for bad in ("10.244.30.0/24", "10.244.12.0/25", "192.168.12.0/24"):
        got = claims(c, remembered=net(bad))
        assert [k.kind for k in got] == [ClaimKind.FREE], bad
        assert c.is_allocatable(got[0].subnet)


def test_undecodable_records_still_occupy() -> None:
    c = cfg(Network="10.244.0.0/22")  # pool .1 .2 .3
    broken1, broken2 = net("10.244.1.0/24"), net("10.244.3.0/24")
    leases: dict[IPv4Network, LeaseRecord | None] = {broken1: None, broken2: None}
    for seed in range(30):
        assert claims(c, leases, seed=seed) == [Claim(net("10.244.2.0/24"), ClaimKind.FREE)]
    # remembered subnet held by an undecodable record is not claimed either
    got = claims(c, leases, remembered=broken1)
    assert got == [Claim(net("10.244.2.0/24"), ClaimKind.FREE)]


def test_free_claim_avoids_all_taken() -> None:
    c = cfg(Network="10.244.0.0/20")  # 15 allocatable
    taken = {c.subnet_at(i): rec(c.subnet_at(i)) for i in range(0, 15, 2)}
    reserved_other = {c.subnet_at(1): "x", c.subnet_at(3): "y"}
    for seed in range(50):
        got = claims(c, dict(taken), reserved_other, seed=seed)
        assert len(got) == 1 and got[0].kind is ClaimKind.FREE
        assert got[0].subnet not in taken and got[0].subnet not in reserved_other


def test_exhausted_pool_gives_no_claims() -> None:
    c = cfg(Network="10.244.0.0/22")
    leases: dict[IPv4Network, LeaseRecord | None] = {
        c.subnet_at(0): rec(c.subnet_at(0)),
        c.subnet_at(1): None,
    }
    assert claims(c, leases, {c.subnet_at(2): "someone-else"}) == []
    # but a reservation for us on the last subnet still works
    assert claims(c, leases, {c.subnet_at(2): ME}) == [Claim(c.subnet_at(2), ClaimKind.RESERVED)]


def test_no_free_claim_when_a_better_claim_exists() -> None:
    c = cfg()
    rem = net("10.244.77.0/24")
    got = claims(c, remembered=rem)
    assert [k.kind for k in got] == [ClaimKind.REMEMBERED]
