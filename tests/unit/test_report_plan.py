"""The report planner (overlayd/planning/report.py): peers → ``NodeReport``, path kinds,
caps, and when a new report is due."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overlayd.planning.report import (
    Reporter,
    ReportParams,
    differs,
    due,
    is_stale,
    node_report,
    path_kind,
)
from overlayd.values.paths import PRIVATE, PUBLIC, PUNCHED, PeerPath
from overlayd.values.report import MAX_REPORT_BYTES, MAX_SITES, MAX_UNREACHABLE, decode_report

ME = Reporter("a1", "id-a1", "east", IPv4Network("10.244.1.0/24"), "mesh", (("overlayd", "0.1.0"),))
ADDR = IPv4Address("192.0.2.10")
NOW = 1_700_000_000.0
VERIFIED = PeerPath(ADDR, PRIVATE, "verified")


@dataclass(frozen=True)
class Peer:
    """A peer as the path keeper reports it (the fields a report reads)."""

    node: str
    site: str = "east"
    path: PeerPath | None = VERIFIED
    rtt_ms: float | None = 1.0
    verified: tuple[IPv4Address, ...] = (ADDR,)
    via: str | None = None
    relay: str | None = None


def kind_of(**fields: Any) -> str:
    return path_kind(replace(Peer("p"), **fields))


def test_path_kinds() -> None:
    assert kind_of() == PRIVATE
    assert kind_of(path=PeerPath(ADDR, PUBLIC, "verified")) == PUBLIC
    assert kind_of(path=PeerPath(ADDR, PUNCHED, "verified")) == PUNCHED
    assert kind_of(verified=()) == "unverified"  # a guess
    assert kind_of(verified=(IPv4Address("192.0.2.99"),)) == "unverified"  # another address
    assert kind_of(path=None, verified=()) == "none"
    assert kind_of(via="gw-east") == "gateway"
    assert kind_of(relay="r1", via="gw-east") == "relay"


def test_no_peers_gives_an_empty_report() -> None:
    report = node_report(ME, [], None, NOW)
    assert report.paths == () and report.site_rtts == () and report.unreachable == ()
    assert report.unreachable_total == 0 and report.peers == 0 and report.written_at == NOW
    assert (report.node, report.site, report.role) == ("a1", "east", "mesh")


def test_one_peer() -> None:
    report = node_report(ME, [Peer("b2", rtt_ms=0.4)], NOW - 1, NOW)
    assert report.paths == (("private", 1),) and report.site_rtts == (("east", 0.4),)
    assert report.last_reconcile == NOW - 1


def test_many_peers_counts_medians_and_the_unreachable() -> None:
    peers = [
        Peer("b1", rtt_ms=1.0),
        Peer("b2", rtt_ms=3.0),
        Peer("b3", rtt_ms=2.0),
        Peer("w1", site="west", path=PeerPath(ADDR, PUBLIC, "v"), rtt_ms=40.0),
        Peer("w2", site="west", verified=(), rtt_ms=999.0),  # unverified: no RTT counted
        Peer("w3", site="west", path=None, verified=(), rtt_ms=None),
        Peer("n1", site="north", via="gw", rtt_ms=None),
    ]
    report = node_report(ME, peers, None, NOW)
    assert report.paths == (
        ("gateway", 1), ("none", 1), ("private", 3), ("public", 1), ("unverified", 1),
    )  # fmt: skip
    assert report.site_rtts == (("east", 2.0), ("west", 40.0))
    assert report.site_paths == (
        ("east", (("private", 3),)),
        ("north", (("gateway", 1),)),
        ("west", (("none", 1), ("public", 1), ("unverified", 1))),
    )
    assert report.unreachable == ("w2", "w3") and report.unreachable_total == 2


def test_the_unreachable_list_and_the_sites_are_capped_and_the_size_bounded() -> None:
    small = node_report(ME, [Peer(f"b{i}") for i in range(10)], NOW, NOW)
    peers = [Peer(f"n{i:05d}", site=f"s{i % 200:03d}", rtt_ms=float(i % 50)) for i in range(5000)]
    peers += [Peer(f"x{i:05d}", site="zz", path=None, verified=()) for i in range(3000)]
    big = node_report(ME, peers, NOW, NOW)
    assert big.unreachable_total == 3000 and len(big.unreachable) == MAX_UNREACHABLE
    assert big.unreachable == tuple(f"x{i:05d}" for i in range(MAX_UNREACHABLE))
    assert len(big.site_rtts) == MAX_SITES and big.site_rtts[0][0] == "s000"
    assert [s for s, _ in big.site_paths] == [s for s, _ in big.site_rtts]  # "zz" left out
    assert big.count("none") == 3000  # still counted
    assert len(big.to_json()) < MAX_REPORT_BYTES
    assert decode_report("a1", big.to_json()) == big
    assert len(small.to_json()) < 400


@given(st.randoms(use_true_random=False))
def test_the_same_peers_in_any_order_give_the_same_report(rng: random.Random) -> None:
    peers = [Peer(f"n{i}", site=f"s{i % 3}", rtt_ms=float(i)) for i in range(30)]
    peers += [Peer(f"u{i}", verified=()) for i in range(20)]
    shuffled = list(peers)
    rng.shuffle(shuffled)
    assert node_report(ME, shuffled, NOW, NOW) == node_report(ME, peers, NOW, NOW)


P = ReportParams(min_interval=5.0, refresh=120.0)


def test_only_changes_beyond_the_tolerance_differ() -> None:
    base = node_report(ME, [Peer("b1", rtt_ms=10.0), Peer("w1", site="west", rtt_ms=0.2)], 1, NOW)
    assert not differs(base, replace(base, written_at=NOW + 60, last_reconcile=NOW + 50), P)
    wobble = replace(base, site_rtts=(("east", 11.5), ("west", 1.1)))  # < 20 %, < 1 ms
    assert not differs(base, wobble, P)
    assert differs(base, replace(base, site_rtts=(("east", 12.5), ("west", 0.2))), P)
    assert differs(base, replace(base, site_rtts=(("east", 10.0),)), P)  # a site went
    assert differs(base, replace(base, paths=(("private", 1), ("none", 1))), P)
    assert differs(base, replace(base, role="gateway"), P)


def test_due_on_change_at_most_every_min_interval_and_at_each_refresh() -> None:
    old = node_report(ME, [Peer("b1")], 1, NOW)
    changed = node_report(ME, [Peer("b1", verified=())], 1, NOW)
    assert due(None, 0.0, old, 0.0, P)  # nothing written yet
    assert not due(old, 100.0, changed, 104.9, P)  # too soon after the last write
    assert due(old, 100.0, changed, 105.0, P)
    assert not due(old, 100.0, old, 219.0, P)  # unchanged, not yet refreshed
    assert due(old, 100.0, old, 220.0, P)


def test_a_report_is_stale_after_three_refreshes() -> None:
    report = node_report(ME, [], None, NOW)
    assert not is_stale(report, NOW + 3 * P.refresh, P)
    assert is_stale(report, NOW + 3 * P.refresh + 1, P)
