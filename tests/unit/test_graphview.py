"""The DOT text of ``overlayctl graph`` (overlayd/cli/graphview.py): names cannot break
out of their strings, and the graph says what the observed network says."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from ipaddress import IPv4Network

import pytest

from overlayd.cli.graphview import SITES, dot_id, graph_dot
from overlayd.planning.observed import MISSING, OK, NodeState, ObservedNetwork, Pair, SiteState
from tests.reports import node_report

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = ['a"b', "back\\slash", "x\\N\\G\\l", 'evil"]; "pwn" [label="pwned', "line\nbreak"]


def test_dot_id_escapes_quotes_backslashes_and_line_breaks() -> None:
    assert dot_id("a1") == '"a1"'
    assert dot_id('a"b') == '"a\\"b"'
    assert dot_id("x\\N") == '"x\\\\N"'
    assert dot_id("line\nbreak") == '"line break"'
    assert dot_id("y" * 500) == '"' + "y" * 64 + '"'


def hostile_network() -> ObservedNetwork:
    site = 'si"te\\'
    nodes = tuple(
        NodeState(name, site, IPv4Network(f"10.244.{i}.0/24"), i == 0, None, MISSING)
        for i, name in enumerate(HOSTILE)
    )
    sites = (SiteState(site, "mesh", HOSTILE[0], tuple(HOSTILE)),)
    return ObservedNetwork(nodes, sites, (), 0)


def as_drawn(name: str) -> str:
    """A name as dot titles its SVG element: a DOT ID undoes only the quote's escape
    (labels undo the backslash's too), and line breaks were flattened."""
    return " ".join(name.splitlines()).replace("\\", "\\\\")


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_hostile_names_render_as_themselves() -> None:
    dot = graph_dot(hostile_network())
    done = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    root = ET.fromstring(done.stdout)
    titles = {t.text for t in root.iter(f"{SVG}title")}
    names = {as_drawn(n) for n in HOSTILE}
    assert names <= titles and "pwn" not in titles
    # every node drawn is one of ours (or the site's anchor): nothing was injected
    drawn = {g.findtext(f"{SVG}title") for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    assert drawn == names | {as_drawn('site:si"te\\')}
    texts = {t.text for t in root.iter(f"{SVG}text")}  # labels show the names themselves
    assert {'a"b', "back\\slash", "x\\N\\G\\l", "line break"} <= texts


def test_an_empty_network_is_a_graph_of_nothing() -> None:
    dot = graph_dot(ObservedNetwork((), (), (), 0))
    assert dot.startswith("digraph overlay {") and dot.endswith("}\n")
    assert "->" not in dot and "cluster" not in dot


def test_edges_follow_the_reports() -> None:
    a1 = node_report(
        "a1", site="east",
        site_paths=(("east", (("private", 2),)), ("west", (("none", 1), ("public", 3)))),
        site_rtts=(("east", 0.25), ("west", 30.0)), unreachable=("w9",), unreachable_total=1,
    )  # fmt: skip
    net = ObservedNetwork(
        (NodeState("a1", "east", IPv4Network("10.244.1.0/24"), False, a1, OK),),
        (SiteState("east", "mesh", None, ("a1",)), SiteState("west", "mesh", None, ())),
        (Pair("a1", "w9"),),
        0,
    )
    dot = graph_dot(net)
    assert '"a1" -> "site:east" [color=forestgreen, style=solid, label="2 private, 0.25 ms"]' in dot
    assert (
        '"a1" -> "site:west" [color=blue, style=solid, label="3 public, 1 unreachable, 30 ms"]'
        in dot
    )
    assert '"a1" -> "w9" [color=red, penwidth=2, label="no path"];' in dot


def test_the_site_level_sums_the_reports_of_each_site() -> None:
    a1 = node_report(
        "a1", site="east", site_paths=(("east", (("private", 1),)), ("west", (("public", 2),))),
        site_rtts=(("east", 0.2), ("west", 30.0)),
    )  # fmt: skip
    a2 = node_report(
        "a2", site="east",
        site_paths=(("east", (("private", 1),)), ("west", (("none", 1), ("public", 1)))),
        site_rtts=(("east", 0.4), ("west", 40.0)),
    )  # fmt: skip
    w1 = node_report("w1", site="west", site_paths=(("east", (("none", 2),)),), site_rtts=())
    net = ObservedNetwork(
        (
            NodeState("a1", "east", IPv4Network("10.244.1.0/24"), True, a1, OK),
            NodeState("a2", "east", IPv4Network("10.244.2.0/24"), False, a2, OK),
            NodeState("w1", "west", IPv4Network("10.244.3.0/24"), False, w1, OK),
            NodeState("w2", "west", IPv4Network("10.244.4.0/24"), False, None, MISSING),
        ),
        (
            SiteState("east", "mesh", "a1", ("a1", "a2")),
            SiteState("west", "mesh", None, ("w1", "w2")),
        ),
        (Pair("a2", "w2"), Pair("w1", "a1"), Pair("w1", "a2")),
        0,
    )
    dot = graph_dot(net, SITES)
    assert '"site:east" [label="site east (mesh)\\n2 nodes\\ngateway a1"];' in dot
    assert '"site:west" [label="site west (mesh)\\n2 nodes\\n1 without a fresh report"];' in dot
    assert (
        '"site:east" -> "site:east" [color=forestgreen, style=solid, label="2 private, 0.3 ms"]'
        in dot
    )
    east_west = '"site:east" -> "site:west" [color=blue, style=solid, label='
    assert east_west + '"3 public, 1 unreachable, 35 ms"]' in dot
    assert '"site:west" -> "site:east" [color=red, style=dashed, label="2 unreachable"]' in dot
    assert '"a1"' not in dot and "cluster" not in dot  # no node boxes at this level
