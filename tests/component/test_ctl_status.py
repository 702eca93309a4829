"""``overlayctl status`` and ``overlayctl graph`` against the in-memory store: an empty
network, one node, many (sites, a gateway, stale, missing and unleased reports,
unreachable pairs), malformed reports, and no Graphviz."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from overlayd.store.api import StoreKeys
from overlayd.values.gateway_state import GatewayClaim
from tests.builders import record
from tests.component.ctl import NOW, Ctl, sync
from tests.reports import node_report

SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")


def svg_titles(svg: str) -> set[str]:
    """The titles of the SVG's nodes and edges (dot names each element by its id)."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return {t.text or "" for t in root.iter(f"{SVG}title")}


def node(ctl: Ctl, n: int, name: str, site: str = "default") -> IPv4Network:
    subnet = IPv4Network(f"10.244.{n}.0/24")
    ctl.lease(record(str(subnet), node=name, node_id=f"id{n}", n=n, site=site))
    return subnet


def report(ctl: Ctl, name: str, subnet: IPv4Network, **fields: object) -> None:
    fields.setdefault("written_at", NOW - 3)
    lease_id = sync(ctl.store.grant(20))
    sync(ctl.store.put_status_report(node_report(name, subnet=subnet, **fields), lease_id))


def test_an_empty_network_shows_headers() -> None:
    ctl = Ctl()
    ctl.init()
    out = ctl("status").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "SITE", "SUBNET", "ROLE", "PEERS", "PATHS",
                                "UNREACHABLE", "REPORT"]  # fmt: skip
    assert ["SITE", "MODE", "GATEWAY", "NODES"] in [line.split() for line in lines]
    assert "0 nodes in 0 sites, 0 gateways; 0 unreachable pairs" in out
    doc = json.loads(ctl("status", "-o", "json").stdout)
    assert doc == {"nodes": [], "sites": [], "unreachable": [], "unreachable_unnamed": 0,
                   "malformed": []}  # fmt: skip
    assert ctl("graph").stdout.startswith("digraph overlay {")


def test_no_config_is_an_error_with_a_hint() -> None:
    result = Ctl()("status", code=1)
    assert result.stderr.startswith("error: no network config") and "hint:" in result.stderr


def test_one_node() -> None:
    ctl = Ctl()
    ctl.init()
    subnet = node(ctl, 1, "a1")
    report(ctl, "a1", subnet)
    out = ctl("status").stdout
    row = next(line for line in out.splitlines() if line.startswith("a1 "))
    assert row.split() == ["a1", "default", str(subnet), "mesh", "2", "private", "2", "0",
                           "3s", "ago"]  # fmt: skip
    assert "1 nodes in 1 sites" in out and "reports: 1 ok, 0 stale, 0 missing" in out
    doc = json.loads(ctl("status", "-o", "json").stdout)
    assert doc["nodes"][0]["report"]["paths"] == {"private": 2}
    assert doc["nodes"][0]["health"] == "ok"
    dot = ctl("graph", "-o", "dot").stdout
    assert '"a1" [label="a1"];' in dot and '"a1" -> "site:default"' in dot


def many(ctl: Ctl) -> None:
    """Three sites: east (a gateway, a stale report), west (a missing report and one that
    cannot reach two peers and counts 40 more), and a report of a node without a lease."""
    ctl.init("--topology", "gateway")
    a1, a2 = node(ctl, 1, "a1", "east"), node(ctl, 2, "a2", "east")
    w1 = node(ctl, 3, "w1", "west")
    node(ctl, 4, "w2", "west")
    gw = GatewayClaim("east", "a1", "id1", a1)
    assert sync(ctl.store.claim_gateway("east", gw, sync(ctl.store.grant(20))))
    report(ctl, "a1", a1, site="east", role="gateway",
           paths=(("private", 1), ("public", 2)), site_rtts=(("east", 0.3), ("west", 21.0)),
           site_paths=(("east", (("private", 1),)), ("west", (("public", 2),))))  # fmt: skip
    report(ctl, "a2", a2, site="east", written_at=NOW - 3600)
    report(ctl, "w1", w1, site="west", paths=(("none", 1), ("unverified", 41)),
           site_paths=(("east", (("none", 1), ("unverified", 41))),),
           unreachable=("a1", "a2"), unreachable_total=42)  # fmt: skip
    report(ctl, "ghost", IPv4Network("10.244.9.0/24"), site="west")


def test_many_nodes_sites_and_problems() -> None:
    ctl = Ctl()
    many(ctl)
    out = ctl("status").stdout
    nodes, sites = out.split("\n\n")[:2]
    rows = {line.split()[0]: line for line in nodes.splitlines()[1:]}
    assert list(rows) == ["a1", "a2", "ghost", "w1", "w2"]
    assert "gateway" in rows["a1"] and "private 1, public 2" in rows["a1"]
    assert rows["a2"].endswith("stale (3600s ago)")
    assert rows["w2"].split()[1:] == ["west", "10.244.4.0/24", "-", "-", "-", "-", "missing"]
    assert "42 (a1,a2,…)" in rows["w1"]
    assert rows["ghost"].endswith("unleased (3s ago)") and " - " in rows["ghost"]  # no subnet
    assert [line.split() for line in sites.splitlines()[1:]] == [
        ["east", "gateway", "a1", "2"],
        ["west", "gateway", "-", "3"],
    ]
    assert "(and 40 more unreachable pairs" in out
    assert "5 nodes in 2 sites, 1 gateways; 42 unreachable pairs" in out
    assert "reports: 2 ok, 1 stale, 1 missing, 1 without a lease" in out
    doc = json.loads(ctl("status", "-o", "json").stdout)
    assert doc["unreachable"] == [{"from": "w1", "to": "a1"}, {"from": "w1", "to": "a2"}]
    assert [s["gateway"] for s in doc["sites"]] == ["a1", None]
    assert [n["health"] for n in doc["nodes"]] == ["ok", "stale", "unleased", "ok", "missing"]


def test_the_unreachable_pairs_are_listed_under_their_header() -> None:
    ctl = Ctl()
    many(ctl)
    lines = ctl("status").stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split() == ["FROM", "UNREACHABLE", "PEER"])
    assert [line.split() for line in lines[at + 1 : at + 3]] == [["w1", "a1"], ["w1", "a2"]]


def test_malformed_reports_are_named_not_drawn() -> None:
    ctl = Ctl()
    many(ctl)
    prefix = StoreKeys(ctl.store.prefix).statuses
    ctl.store.put_raw(prefix + "evil", '{"Node": "evil", "Site": "x\\"];evil"}')
    ctl.store.put_raw(prefix + "huge", "x" * 100_000)
    items = json.dumps({"Node": "long", "Unreachable": [f"n{i}" for i in range(200_000)]})
    ctl.store.put_raw(prefix + "long", items)
    ctl.store.put_raw(prefix + "typed", node_report("typed").to_json().replace('"mesh"', "7"))
    out = ctl("status").stdout
    assert "4 malformed" in out
    lines = [line for line in out.splitlines() if line.startswith("malformed report")]
    assert len(lines) == 4 and all(len(line) < 300 for line in lines)
    assert "Role 7 is not a DNS label" in out
    assert "evil" not in ctl("graph").stdout


@needs_dot
def test_the_svg_names_every_node_and_marks_broken_paths() -> None:
    ctl = Ctl()
    many(ctl)
    dot = ctl("graph").stdout
    assert '"w1" -> "a1" [color=red' in dot  # a broken path, red
    assert '"w1" -> "site:east" [color=red, style=dashed' in dot  # no peer of east reached
    assert '"a1" -> "site:west" [color=blue' in dot  # public, blue
    assert "peripheries=2" in dot.split('"a1" [')[1].split("\n")[0]  # the gateway
    titles = svg_titles(ctl("graph", "-o", "svg").stdout)
    assert {"a1", "a2", "w1", "w2", "ghost", "site:east", "site:west"} <= titles


def test_graph_without_dot_is_an_error_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ctl = Ctl()
    ctl.init()
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on it
    result = ctl("graph", "-o", "svg", code=1)
    assert result.stderr.startswith("error: Graphviz's dot is not installed")
    assert "hint: install it ('apt-get install graphviz')" in result.stderr
    assert ctl("graph").stdout.startswith("digraph")  # the DOT text needs no dot


def test_a_large_network_is_drawn_by_site_unless_told() -> None:
    ctl = Ctl()
    ctl.init()
    for n in range(1, 53):  # 52 nodes: more than AUTO_NODES
        report(ctl, f"n{n}", node(ctl, n, f"n{n}", "east" if n % 2 else "west"))
    dot = ctl("graph").stdout
    assert '"site:east" [label="site east (mesh)\\n26 nodes"];' in dot and '"n1"' not in dot
    assert '"n1" [label="n1"];' in ctl("graph", "--level", "nodes").stdout
    small = Ctl()
    small.init()
    report(small, "a1", node(small, 1, "a1"))
    assert "cluster_0" not in small("graph", "--level", "sites").stdout
