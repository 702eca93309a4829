"""Issue 14: observed state in etcd, ``overlayctl status`` and ``overlayctl graph`` in the
multi-cloud world (plain VXLAN, no relays).

Every daemon publishes its report under ``status/<node>``; ``overlayctl status`` lists
every node; a path broken with nft (a1 drops everything of b1's public address) shows as
an unreachable pair and a red edge, and heals after restore; ``overlayctl graph -o svg``
parses as SVG and names every node; a killed daemon's report vanishes with its etcd
lease (its subnet lease stays: the node shows as ``missing``).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import BIN, init_network, ns_run, running, wait_until
from tests.lab.world import World, drop_between, multicloud_world

pytestmark = pytest.mark.root
HOSTS = ("a1", "a2", "b1", "b2", "bare")
SVG = "{http://www.w3.org/2000/svg}"


def ctl(world: World, *args: str) -> str:
    """``overlayctl`` from a2's namespace (it reaches etcd), its stdout."""
    argv = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint, *args]
    return ns_run(world.host("a2").ns.name, *argv).stdout


def status(world: World) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ctl(world, "status", "-o", "json"))
    return doc


def nodes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in doc["nodes"]}


def all_reachable(world: World, names: tuple[str, ...]) -> bool:
    """Every node reports, with every other node on a verified path."""
    found = nodes(status(world))
    if set(found) != set(names):
        return False
    for n in found.values():
        report = n["report"]
        if n["health"] != "ok" or report is None:
            return False
        if sum(report["paths"].values()) != len(names) - 1 or report["unreachable_total"]:
            return False
    return True


def pair_unreachable(world: World, a: str, b: str) -> bool:
    return {"from": a, "to": b} in status(world)["unreachable"]


def test_reports_status_graph_and_a_dead_node(prefix: str, tmp_path: Path) -> None:
    with multicloud_world(prefix, workdir=tmp_path) as world:
        init_network(world, "vxlan")
        with running(world, HOSTS, public_ip=False) as daemons:
            took = wait_until(lambda: all_reachable(world, HOSTS), 60, "every report, all ok")
            print(f"every node reported every peer verified {took:.1f}s after ready")
            table = ctl(world, "status")
            rows = {line.split()[0] for line in table.split("\n\n")[0].splitlines()[1:]}
            assert rows == set(HOSTS)
            assert "5 nodes in 3 sites" in table and "0 unreachable pairs" in table

            b1_public = world.host("b1").public
            assert b1_public is not None
            with drop_between(daemons["a1"].host.ns, b1_public):
                took = wait_until(lambda: pair_unreachable(world, "a1", "b1"), 60, "a1 -> b1")
                print(f"a1 reported b1 unreachable {took:.1f}s after the block")
                assert "b1" in ctl(world, "status").split("UNREACHABLE PEER")[1]
                dot = ctl(world, "graph")
                assert '"a1" -> "b1" [color=red' in dot
                root = ET.fromstring(ctl(world, "graph", "-o", "svg"))
                assert root.tag == f"{SVG}svg"
                titles = {t.text for t in root.iter(f"{SVG}title")}
                assert set(HOSTS) <= titles
            took = wait_until(lambda: all_reachable(world, HOSTS), 60, "healed after restore")
            print(f"reports healed {took:.1f}s after restore")

            daemons["b2"].kill9()
            took = wait_until(
                lambda: nodes(status(world))["b2"]["health"] == "missing", 60, "b2's report gone"
            )
            print(f"b2's report vanished {took:.1f}s after kill -9 (its etcd lease expired)")
            assert nodes(status(world))["b2"]["subnet"] is not None  # its subnet lease stays
