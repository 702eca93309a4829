"""Path choice: order, hysteresis, failover, move-back hold, determinism; reflexive addresses."""

from __future__ import annotations

import random
from collections.abc import Mapping
from ipaddress import IPv4Address
from typing import Any

import pytest

from overlayd.planning.path_choice import (
    ChooseParams,
    Observation,
    PathStats,
    ReflexiveParams,
    choose_path,
    confirmed_public,
    probe_targets,
)
from overlayd.values.paths import PeerCandidates, PeerPath

A = IPv4Address
PRIV1, PRIV2 = A("10.0.0.5"), A("10.0.1.5")
PUB1, PUB2 = A("203.0.113.5"), A("198.51.100.5")
SAME = PeerCandidates("aws", (PRIV1, PRIV2), (PUB1, PUB2), PUB1)
OTHER = PeerCandidates("gcp", (PRIV1,), (PUB1, PUB2), PUB1)
P = ChooseParams(hold=10.0)


def chosen(
    me_site: str,
    peer: PeerCandidates,
    stats: Mapping[IPv4Address, PathStats],
    current: PeerPath | None,
    now: float,
    params: ChooseParams,
) -> PeerPath:
    """``choose_path`` for a peer that has candidates: it always chooses one."""
    path = choose_path(me_site, peer, stats, current, now, params)
    assert path is not None
    return path


def ok(since: float = 0.0, downs: int = 0) -> PathStats:
    return PathStats(
        sent=5, received=5, last_success=since, rtt=0.001, verified_since=since, downs=downs
    )


def dead(downs: int = 1) -> PathStats:
    return PathStats(sent=8, received=5, losses=3, last_success=0.0, downs=downs)


def test_nothing_verified_guesses_by_site() -> None:
    p = chosen("aws", SAME, {}, None, 100.0, P)
    assert (p.address, p.kind) == (PRIV1, "private")
    assert "no verified path" in p.reason
    p = chosen("aws", OTHER, {}, None, 100.0, P)
    assert (p.address, p.kind) == (PUB1, "public")


def test_verified_same_site_private_first() -> None:
    stats = {PUB1: ok(), PRIV2: ok()}
    p = chosen("aws", SAME, stats, None, 100.0, P)
    assert (p.address, p.kind) == (PRIV2, "private")
    assert p.reason == "verified private address, same site"


def test_other_site_private_address_is_never_chosen_even_if_verified() -> None:
    stats = {PRIV1: ok(), PUB2: ok()}
    p = chosen("aws", OTHER, stats, None, 100.0, P)
    assert (p.address, p.kind) == (PUB2, "public")
    assert probe_targets("aws", OTHER) == (PUB1, PUB2)
    assert probe_targets("aws", SAME) == (PRIV1, PRIV2, PUB1, PUB2)


def test_verified_public_when_private_does_not_answer() -> None:
    stats = {PRIV1: PathStats(sent=3, losses=3), PUB1: ok()}
    p = chosen("aws", SAME, stats, None, 100.0, P)
    assert (p.address, p.kind) == (PUB1, "public")


def test_verified_fallback_only_when_nothing_better() -> None:
    # a host with a public address on its interface and no --public-ip: its lease lists
    # that address as private and as PublicIP
    direct = A("192.0.2.5")
    peer = PeerCandidates("gcp", (direct,), (), direct)
    assert probe_targets("aws", peer) == (direct,)
    p = chosen("aws", peer, {direct: ok()}, None, 100.0, P)
    assert (p.address, p.kind) == (direct, "private")
    assert "lease PublicIP" in p.reason


@pytest.mark.parametrize("private", ["10.0.0.5", "172.20.1.5", "192.168.7.5", "100.64.3.5"])
def test_another_sites_site_local_address_is_neither_probed_nor_guessed(private: str) -> None:
    """A node with no public address publishes its private one as PublicIP: from another
    site that address is a host of our own LAN (colliding ranges) or nobody. No probe, no
    guess, no path -- even if something there answers."""
    peer = PeerCandidates("gcp", (A(private),), (), A(private))
    assert probe_targets("aws", peer) == ()
    assert choose_path("aws", peer, {A(private): ok()}, None, 100.0, P) is None
    # in our own site it is the peer's private address as usual
    mine = PeerCandidates("aws", (A(private),), (), A(private))
    assert probe_targets("aws", mine) == (A(private),)
    assert chosen("aws", mine, {}, None, 100.0, P).address == A(private)


def test_same_rank_is_sticky() -> None:
    """A faster path of the same rank does not move traffic."""
    stats = {PRIV1: ok(), PRIV2: ok()}
    current = PeerPath(PRIV2, "private", "x")
    p = chosen("aws", SAME, stats, current, 100.0, P)
    assert p.address == PRIV2


def test_fresh_better_path_is_taken_at_once() -> None:
    """Start-up: public answered first; the private path, never failed, wins immediately."""
    stats = {PUB1: ok(since=1.0), PRIV1: ok(since=1.2)}
    current = PeerPath(PUB1, "public", "verified public address")
    p = chosen("aws", SAME, stats, current, 1.3, P)
    assert p.address == PRIV1
    assert p.reason.startswith("moved to better path")


def test_failover_is_immediate() -> None:
    current = PeerPath(PRIV1, "private", "verified private address, same site")
    stats = {PRIV1: dead(), PRIV2: PathStats(losses=4), PUB1: ok(since=50.0)}
    p = chosen("aws", SAME, stats, current, 100.0, P)
    assert (p.address, p.kind) == (PUB1, "public")
    assert p.reason.startswith(f"failover from {PRIV1}")


def test_failover_without_alternative_falls_back_to_guess() -> None:
    current = PeerPath(PUB1, "public", "verified public address")
    p = chosen("aws", OTHER, {PUB1: dead(), PUB2: PathStats(losses=9)}, current, 5.0, P)
    assert p.address == PUB1
    assert "stopped answering" in p.reason


def test_move_back_waits_for_hold() -> None:
    current = PeerPath(PUB1, "public", "failover")
    recovered_at = 200.0
    stats = {PRIV1: ok(since=recovered_at, downs=1), PUB1: ok(since=0.0)}
    for now in (recovered_at, recovered_at + 5.0, recovered_at + 9.9):
        assert chosen("aws", SAME, stats, current, now, P).address == PUB1
    p = chosen("aws", SAME, stats, current, recovered_at + 10.0, P)
    assert p.address == PRIV1
    assert p.reason == "moved to better path: verified private address, same site"


def test_flapping_better_path_never_wins() -> None:
    """A path that keeps failing restarts its hold each time it comes back."""
    current = PeerPath(PUB1, "public", "x")
    now = 0.0
    for cycle in range(1, 6):
        now += 8.0
        stats = {PRIV1: ok(since=now - 7.0, downs=cycle), PUB1: ok()}
        assert chosen("aws", SAME, stats, current, now, P).address == PUB1
        stats = {PRIV1: dead(downs=cycle), PUB1: ok()}
        assert chosen("aws", SAME, stats, current, now + 1, P).address == PUB1


def test_failover_timeline_within_budget() -> None:
    """Simulated prober: probes every 0.4 s, 3 losses unverify -> failover < 3 s."""
    interval, threshold = 0.4, 3
    current = PeerPath(PRIV1, "private", "verified private address, same site")
    losses, t, broke = 0, 0.0, 10.05
    while True:
        t = round(t + interval, 3)
        if t > broke:
            losses += 1
        priv = dead() if losses >= threshold else ok()
        stats = {PRIV1: priv, PUB1: ok()}
        current = chosen("aws", SAME, stats, current, t + 0.6, P)
        if current.address == PUB1:
            break
    assert t + 0.6 - broke < 3.0


def test_current_address_no_longer_a_candidate() -> None:
    current = PeerPath(A("10.9.9.9"), "private", "old lease")
    p = chosen("aws", SAME, {PUB1: ok()}, current, 1.0, P)
    assert p.address == PUB1
    assert p.reason == "verified public address"


def test_deterministic_for_any_dict_order() -> None:
    base = {PRIV1: dead(), PRIV2: ok(since=3.0, downs=2), PUB1: ok(), PUB2: ok(since=9.0)}
    current = PeerPath(PUB2, "public", "x")
    expected = choose_path("aws", SAME, base, current, 20.0, P)
    rng = random.Random(7)
    for _ in range(20):
        items = list(base.items())
        rng.shuffle(items)
        assert choose_path("aws", SAME, dict(items), current, 20.0, P) == expected


# -- reflexive addresses -------------------------------------------------------------


def obs(
    addr: str, observer: str, site: str, count: int = 1, port: int = 8473, last: float = 100.0
) -> Observation[str]:
    return Observation(A(addr), port, observer, site, count, 0.0, last)


def confirm(*observations: Observation[str], **kw: Any) -> tuple[A, ...]:
    return confirmed_public(
        "aws",
        observations,
        exclude={A("10.0.0.1")},
        probe_port=8473,
        now=100.0,
        params=ReflexiveParams(**kw),
    )


def test_reflexive_needs_two_observations_from_another_site() -> None:
    assert confirm(obs("203.0.113.9", "b", "gcp")) == ()
    assert confirm(obs("203.0.113.9", "b", "gcp", count=2)) == (A("203.0.113.9"),)
    assert confirm(obs("203.0.113.9", "b", "gcp"), obs("203.0.113.9", "c", "metal")) == (
        A("203.0.113.9"),
    )
    assert confirm(obs("203.0.113.9", "b", "gcp"), min_observations=1) == (A("203.0.113.9"),)


def test_reflexive_ignores_same_site_own_private_rewritten_port_and_old() -> None:
    assert confirm(obs("10.0.0.77", "b", "aws", count=5)) == ()
    assert confirm(obs("10.0.0.1", "b", "gcp", count=5)) == ()
    assert confirm(obs("203.0.113.9", "b", "gcp", count=5, port=40001)) == ()
    assert confirm(obs("203.0.113.9", "b", "gcp", count=5, last=-250.0)) == ()


def test_reflexive_order_and_limit() -> None:
    got = confirm(
        obs("203.0.113.1", "b", "gcp", count=9),
        obs("203.0.113.2", "b", "gcp", count=2),
        obs("203.0.113.2", "c", "gcp", count=2),
        obs("203.0.113.3", "b", "gcp", count=2),
        limit=2,
    )
    assert got == (A("203.0.113.2"), A("203.0.113.1"))


@pytest.mark.parametrize("seed", range(3))
def test_reflexive_deterministic(seed: int) -> None:
    items = [obs(f"203.0.113.{i}", f"p{i % 3}", "gcp", count=2) for i in range(8)]
    expected = confirm(*items)
    random.Random(seed).shuffle(items)
    assert confirm(*items) == expected
    assert len(expected) == 4
