"""The observed network (overlayd/planning/observed.py): leases, reports and gateway
claims folded into one value."""

from __future__ import annotations

from ipaddress import IPv4Network

from overlayd.planning.observed import MISSING, OK, STALE, UNLEASED, Pair, observe_network
from overlayd.planning.report import ReportParams
from overlayd.values.lease import LeaseRecord
from tests.builders import record
from tests.reports import node_report

NOW = 1_700_000_000.0
P = ReportParams(refresh=100.0)


def lease(n: int, name: str, site: str = "east") -> LeaseRecord:
    return record(f"10.244.{n}.0/24", node=name, node_id=f"id{n}", n=n, site=site)


def test_nothing_observed() -> None:
    net = observe_network([], [], {}, lambda _s: "mesh", NOW, P)
    assert net.nodes == () and net.sites == () and net.unreachable == () and net.more == 0


def test_nodes_are_matched_to_their_reports_by_name() -> None:
    leases = [lease(1, "a1"), lease(2, "a2"), lease(3, "w1", "west"), lease(4, "a1")]
    reports = [
        node_report("a1", written_at=NOW - 10),
        node_report("a2", written_at=NOW - 301),
        node_report("ghost", site="west", written_at=NOW),
        node_report("w1", unreachable=("a1", "a2"), unreachable_total=5, written_at=NOW),
    ]
    net = observe_network(
        leases,
        reports,
        {"east": "a1", "north": "n1"},
        lambda s: {"east": "gateway"}.get(s, "mesh"),
        NOW,
        P,
    )
    by = {n.node: n for n in net.nodes}
    assert [n.node for n in net.nodes] == ["a1", "a2", "ghost", "w1"]
    assert by["a1"].subnet == IPv4Network("10.244.1.0/24")  # two leases of a1: the lower
    assert (by["a1"].health, by["a2"].health, by["ghost"].health) == (OK, STALE, UNLEASED)
    assert by["ghost"].subnet is None and by["a1"].gateway and not by["a2"].gateway
    assert [(s.site, s.mode, s.gateway, s.nodes) for s in net.sites] == [
        ("east", "gateway", "a1", ("a1", "a2")),
        ("north", "mesh", "n1", ()),  # a claim without leases still shows
        ("west", "mesh", None, ("ghost", "w1")),
    ]
    assert net.unreachable == (Pair("w1", "a1"), Pair("w1", "a2")) and net.more == 3
    assert net.count(OK) == 2


def test_a_lease_without_a_report_is_missing() -> None:
    net = observe_network([lease(1, "a1")], [], {}, lambda _s: "mesh", NOW, P)
    assert net.nodes[0].health == MISSING and net.nodes[0].report is None
