"""The status report's JSON codec (overlayd/values/report.py): round trips, and hostile
values refused with one short message."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from typing import Any

import pytest

from overlayd.values.errors import ReportFormatError
from overlayd.values.report import (
    MAX_REPORT_BYTES,
    MAX_SITES,
    MAX_UNREACHABLE,
    PATH_KINDS,
    NodeReport,
    decode_report,
)
from tests.reports import node_report


def full() -> NodeReport:
    """A report with every list at its limit."""
    return node_report(
        "a1",
        role="gateway",
        versions=(("overlayd", "0.1.0"), ("wireguard-go", "0.0.20230223")),
        paths=(("gateway", 40), ("private", 3), ("public", 1000), ("unverified", 7)),
        site_rtts=tuple((f"site-{i:02d}", 10.0 + i) for i in range(MAX_SITES)),
        site_paths=tuple((f"site-{i:02d}", (("public", 30),)) for i in range(MAX_SITES)),
        unreachable=tuple(f"node-{i:05d}" for i in range(MAX_UNREACHABLE)),
        unreachable_total=4000,
    )


def test_a_report_round_trips_byte_for_byte() -> None:
    for report in (node_report(), full(), node_report(last_reconcile=None, paths=())):
        text = report.to_json()
        assert decode_report(report.node, text) == report
        assert decode_report(report.node, text.encode()).to_json() == text


def test_a_full_report_fits_the_limit_and_counts_its_peers() -> None:
    report = full()
    assert len(report.to_json()) < MAX_REPORT_BYTES
    assert report.peers == 1050 and report.count("public") == 1000 and report.count("relay") == 0


def test_the_largest_report_the_rules_allow_the_planner_fits_the_limit() -> None:
    long = "x" * 62
    worst = node_report(
        long[:-1] + "a",
        node_id="f" * 64,
        site=long + "b",
        role=long + "c",
        versions=tuple((f"{long}{i}", "9" * 64) for i in range(8)),
        last_reconcile=1e12,
        paths=tuple((k, 1_000_000) for k in sorted(PATH_KINDS)),
        site_rtts=tuple(
            (f"{long}{i % 10}"[:-2] + f"{i:02d}", 599_999.99) for i in range(MAX_SITES)
        ),
        site_paths=tuple(
            (f"{long}"[:-1] + f"{i:02d}", tuple((k, 1_000_000) for k in sorted(PATH_KINDS)))
            for i in range(MAX_SITES)
        ),
        unreachable=tuple(f"{long}"[:-1] + f"{i:02d}" for i in range(MAX_UNREACHABLE)),
        unreachable_total=1_000_000,
        written_at=1e12,
    )
    text = worst.to_json()
    assert decode_report(worst.node, text) == worst
    assert 10_000 < len(text) < MAX_REPORT_BYTES


def test_the_value_keys_are_the_documented_ones() -> None:
    assert sorted(json.loads(node_report().to_json())) == [
        "LastReconcile", "Node", "NodeID", "Paths", "Role", "Site", "SitePaths", "SiteRTTs",
        "Subnet", "Unreachable", "UnreachableTotal", "Versions", "WrittenAt",
    ]  # fmt: skip


def hostile(**fields: Any) -> str:
    raw = json.loads(node_report().to_json())
    raw.update(fields)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{", "is not JSON"),
        ("[]", "must be a JSON object"),
        ("[" * 5000, "is not JSON"),
        (hostile(Node="a1.evil"), "Node 'a1.evil' is not a DNS label"),
        (hostile(Node="b2"), "names node 'b2'"),
        (hostile(Site=7), "Site 7"),
        (hostile(Role="x" * 5000), "Role 'xxxxx"),
        (hostile(NodeID="id with spaces"), "NodeID"),
        (hostile(Subnet="10.244.3.0/24"), "Subnet"),
        (hostile(Subnet="10.244.3.7-24"), "Subnet"),
        (hostile(Paths={"private": -1}), "not a count"),
        (hostile(Paths={"private": True}), "not a count"),
        (hostile(Paths={"private": 1.5}), "not a count"),
        (hostile(Paths={"private": 10**7}), "not a count"),
        (hostile(Paths={"a b": 1}), "Paths key"),
        (hostile(Paths=[1, 2]), "Paths [1, 2] is not an object"),
        (hostile(SiteRTTs={"west": "fast"}), "not a round trip"),
        (hostile(SiteRTTs={"west": -1}), "not a round trip"),
        (hostile(SiteRTTs={f"s{i}": 1 for i in range(MAX_SITES + 1)}), "at most 32 entries"),
        (
            hostile(SitePaths={"west": {"private": -3}}),
            "SitePaths['west']['private'] -3 is not a count",
        ),
        (hostile(SitePaths={"west": [1]}), "SitePaths['west'] [1] is not an object"),
        (hostile(SitePaths={"west": {f"k{i}": 1 for i in range(17)}}), "at most 16 entries"),
        (hostile(Unreachable=[f"n{i}" for i in range(MAX_UNREACHABLE + 1)]), "at most 16"),
        (hostile(Unreachable=["ok", {"x": 1}]), "Unreachable {'x': 1}"),
        (hostile(Unreachable=["n1", "n2"], UnreachableTotal=1), "below the 2 names"),
        (hostile(UnreachableTotal="many"), "UnreachableTotal"),
        (hostile(Versions={"overlayd": "1.0; rm -rf /"}), "not a version"),
        (hostile(Versions={f"c{i}": "1" for i in range(9)}), "at most 8 entries"),
        (hostile(WrittenAt=None), "WrittenAt None is not a time"),
        (hostile(WrittenAt=1e300), "WrittenAt"),
        (hostile(LastReconcile="yesterday"), "LastReconcile"),
        (hostile(LastReconcile=-5), "LastReconcile"),
    ],
)
def test_hostile_values_are_refused_with_one_short_line(value: str, says: str) -> None:
    with pytest.raises(ReportFormatError) as caught:
        decode_report("a1", value)
    message = str(caught.value)
    assert says in message and len(message) < 300 and "\n" not in message


def test_nan_and_infinity_are_not_numbers() -> None:
    for bad in ("NaN", "Infinity", "-Infinity"):
        text = node_report().to_json().replace('"WrittenAt":1700000000.0', f'"WrittenAt":{bad}')
        with pytest.raises(ReportFormatError, match="WrittenAt"):
            decode_report("a1", text)


def test_an_oversize_value_is_refused_before_it_is_parsed() -> None:
    value = hostile(Role="r", Padding="x" * MAX_REPORT_BYTES)
    with pytest.raises(ReportFormatError, match=f"bytes, at most {MAX_REPORT_BYTES}"):
        decode_report("a1", value)


def test_a_200000_item_list_is_refused_in_one_short_line() -> None:
    for field in ("Unreachable", "Paths", "SiteRTTs"):
        items: Any = [f"n{i}" for i in range(200_000)]
        if field != "Unreachable":
            items = {f"n{i}": 1 for i in range(200_000)}
        with pytest.raises(ReportFormatError) as caught:
            decode_report("a1", hostile(**{field: items}).encode())
        assert len(str(caught.value)) < 300  # the size check: it was never parsed


def test_missing_optional_fields_default_and_subnet_parses() -> None:
    raw = json.loads(node_report().to_json())
    for key in ("Paths", "SiteRTTs", "Unreachable", "UnreachableTotal", "Versions", "NodeID"):
        del raw[key]
    report = decode_report("a1", json.dumps(raw))
    assert report.paths == () and report.unreachable_total == 0 and report.node_id == ""
    assert report.subnet == IPv4Network("10.244.3.0/24")
