"""The web console's pages over a MemStore: zero, one and many nodes, hostile etcd values
escaped, the PSK never shown, the matrices from the nodes' reports, the topology picture
(the forms and the access checks: test_console_forms.py)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from overlayd.cli.ctl_status import render_svg
from overlayd.cli.graphview import graph_dot
from overlayd.console.matrix import NODE_MATRIX_MAX
from overlayd.planning.observed import ObservedNetwork
from overlayd.store.memory import MemStore
from overlayd.values.errors import ToolError
from overlayd.values.report import NodeReport
from tests.builders import node_lease
from tests.component.console_client import (
    Client,
    claim,
    page,
    publish,
    rows,
    run_console,
)
from tests.component.ctl import NOW, Ctl, sync
from tests.reports import node_report

PAGES = ("/", "/sites", "/nodes", "/leases", "/network")
HOSTILE = '<script>alert("x")</script>'


def test_empty_store_every_page_renders_with_its_headers() -> None:
    store = MemStore()

    async def body(client: Client) -> None:
        for path in PAGES:
            resp = await client.get(path)
            assert resp.status == 200, path
            assert "script-src" not in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Frame-Options"] == "DENY"
        overview = await page(client, "/")
        assert "no network config: create the network" in overview
        assert rows(overview, "nodes") == [["node", "site", "subnet", "role"]]
        assert rows(await page(client, "/sites"), "sites")[1:] == []
        assert rows(await page(client, "/leases"), "reservations")[1:] == []
        await page(client, "/nodes/10.244.9.0-24", 404)
        await page(client, "/nodes/garbage", 404)
        await page(client, "/nope", 404)

    run_console(store, body)


def test_one_node() -> None:
    ctl = Ctl()
    ctl.init()
    ctl.lease(node_lease(1, "192.0.2.1", site="cloud-a", private_ips=("10.0.0.1",)))
    publish(ctl.store, node_report("node1", site="cloud-a", written_at=NOW - 3))

    async def body(client: Client) -> None:
        overview = await page(client, "/")
        assert rows(overview, "nodes")[1:] == [["node1", "cloud-a", "10.244.1.0/24", "member"]]
        assert 'id="health" class="ok"' in overview
        assert "10.244.0.0/16" in overview  # the config
        nodes = rows(await page(client, "/nodes"), "nodes")
        assert nodes[1][:4] == ["node1", "cloud-a", "10.244.1.0/24", "10.0.0.1"]
        assert nodes[1][6:] == ["private 2", "3 s"]
        sites = rows(await page(client, "/sites"), "sites")
        assert sites[1][:4] == ["cloud-a", "mesh", "-", "node1"]
        detail = rows(await page(client, "/nodes/10.244.1.0-24"), "lease")
        assert ["node", "node1"] in detail and ["lease TTL left", "60 s"] in detail
        report = rows(await page(client, "/nodes/10.244.1.0-24"), "report")
        assert ["peers by path", "private 2"] in report and ["unreachable", "none"] in report
        matrix = await page(client, "/matrix")
        assert rows(matrix, "site-matrix") == [["from \\ to", "cloud-a"], ["cloud-a", ""]]
        assert rows(matrix, "node-matrix") == [["from \\ to", "node1"], ["node1", ""]]

    run_console(ctl.store, body)


def test_many_nodes_sorted_with_sites_and_gateways() -> None:
    ctl = Ctl()
    ctl.init("--topology", "gateway")
    for n in range(40, 0, -1):
        ctl.lease(node_lease(n, f"192.0.2.{n}", site=f"site-{n % 4}"))
    sync(
        ctl.store.claim_gateway(
            "site-1", claim("site-1", "node1", "id1"), sync(ctl.store.grant(60))
        )
    )

    async def body(client: Client) -> None:
        nodes = rows(await page(client, "/nodes"), "nodes")[1:]
        assert [r[0] for r in nodes] == [f"node{n}" for n in range(1, 41)]
        assert nodes[0][5] == "gateway" and nodes[1][5] == "member"
        sites = rows(await page(client, "/sites"), "sites")[1:]
        assert [s[0] for s in sites] == ["site-0", "site-1", "site-2", "site-3"]
        assert sites[1][2] == "node1"
        assert len(sites[0][3].split(", ")) == 10
        overview = await page(client, "/")
        for site in ("site-0", "site-2", "site-3"):  # gateway mode, nobody elected
            assert f"site &#39;{site}&#39; is in gateway mode and has no gateway" in overview
        assert ["nodes", "40"] in rows(overview, "counts")

    run_console(ctl.store, body)


def test_hostile_etcd_values_are_escaped() -> None:
    ctl = Ctl()
    ctl.init()
    store = ctl.store
    store.put_raw(f"{store.prefix}/subnets/10.244.5.0-24", json.dumps({"Node": HOSTILE}))
    store.put_raw(f"{store.prefix}/reservations/10.244.6.0-24", json.dumps({"Node": HOSTILE}))
    site = "<b onmouseover=alert(1)>"  # a site is a key's last part: no "/"
    sync(store.claim_gateway(site, claim(site, HOSTILE, HOSTILE), sync(store.grant(60))))

    async def body(client: Client) -> None:
        for path in (*PAGES, "/nodes/10.244.5.0-24"):
            html = await page(client, path)
            assert "<script" not in html and "<b " not in html, path
        leases = await page(client, "/leases")
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in leases  # the reservation
        assert "(malformed)" in await page(client, "/nodes")
        sites = await page(client, "/sites")
        assert "&lt;b onmouseover=alert(1)&gt;" in sites and "&lt;script&gt;" in sites

    run_console(store, body)


def test_a_malformed_config_is_shown_escaped_and_counts_as_unhealthy() -> None:
    store = MemStore()
    store.put_raw(f"{store.prefix}/config", json.dumps({"Network": HOSTILE}))

    async def body(client: Client) -> None:
        html = await page(client, "/")
        assert "the network config is invalid" in html and "<script" not in html

    run_console(store, body)


def test_the_psk_is_never_shown() -> None:
    ctl = Ctl()
    psk = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8s="
    ctl.store.put_raw(
        f"{ctl.store.prefix}/config",
        json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard", "PSK": psk}}),
    )

    async def body(client: Client) -> None:
        for path in PAGES:
            html = await page(client, path)
            assert psk not in html and psk[:20] not in html
        assert "(redacted)" in await page(client, "/")

    run_console(ctl.store, body)


def states(html: str, table: str, attribute: str = "data-state") -> list[list[str]]:
    """Each matrix row's cells' ``attribute``, the header row and column left out."""
    found = re.search(rf'<table id="{table}"(.*?)</table>', html, re.S)
    assert found is not None, f"no table {table}"
    lines = re.findall(r"<tr>(.*?)</tr>", found.group(1), re.S)[1:]
    return [re.findall(rf'{attribute}="(\w*)"', line) for line in lines]


def six_nodes(ctl: Ctl) -> None:
    """node1..node6 in sites a (1, 2), b (3, 4), c (5, 6)."""
    ctl.init()
    for n in range(1, 7):
        ctl.lease(node_lease(n, f"192.0.2.{n}", site="abc"[(n - 1) // 2]))


def test_matrix_every_pair_green_then_a_broken_pair_red() -> None:
    ctl = Ctl()
    six_nodes(ctl)

    def report(n: int, **fields: object) -> NodeReport:
        rtts = (("a", 0.5), ("b", 20.0), ("c", 40.0))
        paths: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
            ("a", (("private", 1),)),
            ("b", (("public", 2),)),
            ("c", (("gateway", 2), ("public", 1))),  # mostly through the gateway
        )
        site = "abc"[(n - 1) // 2]
        return node_report(
            f"node{n}", site=site, site_rtts=rtts, site_paths=paths, written_at=NOW - 1, **fields
        )

    for n in range(1, 7):
        publish(ctl.store, report(n))

    async def body(client: Client) -> None:
        html = await page(client, "/matrix")
        assert states(html, "site-matrix") == [["ok"] * 3] * 3
        assert rows(html, "site-matrix")[1][1:] == ["0.5 ms", "20.0 ms", "40.0 ms"]
        assert states(html, "site-matrix", "data-kind")[0] == ["private", "public", "gateway"]
        assert states(html, "node-matrix", "data-kind")[0][4:] == ["gateway", "gateway"]
        cells = states(html, "node-matrix")
        assert [row.count("ok") for row in cells] == [5] * 6
        assert [row.index("self") for row in cells] == list(range(6))
        assert 'id="health" class="ok"' in await page(client, "/")
        broken = report(1, unreachable=("node4",), unreachable_total=1)
        await ctl.store.put_status_report(broken, await ctl.store.grant(20))
        html = await page(client, "/matrix")
        assert states(html, "site-matrix")[0] == ["ok", "broken", "ok"]
        assert states(html, "site-matrix")[1] == ["ok", "ok", "ok"]  # b still reaches a
        assert states(html, "node-matrix")[0] == ["self", "ok", "ok", "broken", "ok", "ok"]
        assert "1 peer path(s) reported unreachable" in await page(client, "/")
        detail = rows(await page(client, "/nodes/10.244.1.0-24"), "report")
        assert ["unreachable", "node4"] in detail

    run_console(ctl.store, body)


def test_matrix_without_stale_or_cut_reports_is_unknown() -> None:
    ctl = Ctl()
    six_nodes(ctl)
    publish(ctl.store, node_report("node1", site="a", written_at=NOW - 1))
    many = tuple(f"peer{i}" for i in range(16))
    publish(ctl.store, node_report("node3", site="b", unreachable=many, unreachable_total=40))
    ctl.store.put_raw(f"{ctl.store.prefix}/status/node5", HOSTILE)

    async def body(client: Client) -> None:
        html = await page(client, "/matrix")
        sites = states(html, "site-matrix")
        assert sites[0] == ["ok", "ok", "ok"]  # node1 reports none unreachable
        assert sites[1] == ["unknown"] * 3  # node3's report is stale (and cut short)
        assert sites[2] == ["unknown"] * 3  # node5's is malformed, node6 has none
        overview = await page(client, "/")
        assert "4 node(s) without a report" in overview
        assert "1 stale report(s)" in overview and "1 malformed report(s)" in overview
        assert "<script" not in overview
        nodes = rows(await page(client, "/nodes"), "nodes")
        assert nodes[3][7].startswith("stale (")

    run_console(ctl.store, body)


def test_the_node_matrix_is_left_out_for_large_networks() -> None:
    ctl = Ctl()
    ctl.init()
    for n in range(1, NODE_MATRIX_MAX + 2):
        ctl.lease(node_lease(n, "192.0.2.1", site=f"s{n % 3}"))

    async def body(client: Client) -> None:
        html = await page(client, "/matrix")
        assert 'id="node-matrix"' not in html and len(states(html, "site-matrix")) == 3

    run_console(ctl.store, body)


def svg_of_graph(net: ObservedNetwork) -> str:
    return render_svg(graph_dot(net))


def refuse_to_draw(_net: ObservedNetwork) -> str:
    raise ToolError("Graphviz's dot is not installed: cannot render SVG")


def test_the_topology_picture_names_every_node() -> None:
    ctl = Ctl()
    six_nodes(ctl)
    publish(ctl.store, node_report("node1", site="a", written_at=NOW - 1))

    async def body(client: Client) -> None:
        assert 'src="/topology.svg"' in await page(client, "/topology")
        resp = await client.get("/topology.svg")
        assert resp.status == 200 and resp.content_type == "image/svg+xml"
        root = ET.fromstring(await resp.text())
        titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
        assert {f"node{n}" for n in range(1, 7)} <= titles

    run_console(ctl.store, body, draw=svg_of_graph)


def test_the_topology_without_dot_says_so_and_without_a_drawer_is_not_there() -> None:
    async def broken(client: Client) -> None:
        assert "dot is not installed" in await page(client, "/topology.svg", 503)

    run_console(MemStore(), broken, draw=refuse_to_draw)

    async def absent(client: Client) -> None:
        await page(client, "/topology.svg", 404)

    run_console(MemStore(), absent)
