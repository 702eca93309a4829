"""The web console over a MemStore: pages for zero, one and many nodes, hostile etcd values
escaped, the management forms (refused input shown in the form, confirmation, the write),
the token, CSRF and Host checks, and ``overlayctl console``'s refusals."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from markupsafe import escape

from overlayd.cli.ctl_status import render_svg
from overlayd.cli.graphview import graph_dot
from overlayd.console.matrix import NODE_MATRIX_MAX
from overlayd.console.security import COOKIE
from overlayd.planning.observed import ObservedNetwork
from overlayd.store.memory import MemStore
from overlayd.values.errors import ConfigError, ToolError
from overlayd.values.network_init import InitRequest, init_config
from overlayd.values.report import NodeReport
from tests.builders import node_lease
from tests.component.console_client import (
    CSRF,
    TOKEN,
    Client,
    claim,
    confirmed,
    page,
    post,
    publish,
    rows,
    run_console,
)
from tests.component.ctl import NOW, Ctl, sync
from tests.reports import node_report

PAGES = ("/", "/sites", "/nodes", "/leases", "/network")
HOSTILE = '<script>alert("x")</script>'


def network(ctl: Ctl, *args: str) -> None:
    ctl.init(*args)


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
    network(ctl)
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
    network(ctl, "--topology", "gateway")
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
    network(ctl)
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


def test_create_the_network_bad_input_shows_the_error_in_the_form() -> None:
    store = MemStore()
    wanted = ""
    try:
        init_config(InitRequest("10.244.0.0/33"))
    except ConfigError as exc:
        wanted = str(exc)

    async def body(client: Client) -> None:
        html = await post(client, "/actions/network-init", 400, network="10.244.0.0/33")
        assert 'id="error"' in html and str(escape(wanted)) in html
        assert 'value="10.244.0.0/33"' in html  # what was typed stays in the form
        html = await post(client, "/actions/network-init", 400, network="10.0.0.0/8", vni="x1")
        assert "vni must be a whole number" in html
        html = await post(
            client, "/actions/network-init", 400, network="10.0.0.0/8", backend="vxlan",
            topology="gateway",
        )  # fmt: skip
        assert "gateway mode needs Backend.Type" in html
        await post(client, "/actions/network-init", 400, network=HOSTILE)
        assert store.get_raw(f"{store.prefix}/config") is None

    run_console(store, body)


def test_create_the_network_asks_first_then_writes() -> None:
    store = MemStore()

    async def body(client: Client) -> None:
        ask = await post(
            client, "/actions/network-init", network="10.250.0.0/16", subnet_len="26",
            site_modes="a=gateway", backend="vxlan+wireguard",
        )  # fmt: skip
        assert "Create the network 10.250.0.0/16?" in ask
        assert store.get_raw(f"{store.prefix}/config") is None  # not before confirming
        await post(
            client, "/actions/network-init", network="10.250.0.0/16", subnet_len="26",
            site_modes="a=gateway", backend="vxlan+wireguard", confirm="yes",
        )  # fmt: skip
        cfg = await store.get_config()
        assert str(cfg.network) == "10.250.0.0/16" and cfg.subnet_len == 26
        assert cfg.topology.mode_of("a") == "gateway"
        again = await post(
            client, "/actions/network-init", 400, network="10.1.0.0/16", confirm="yes"
        )
        assert "a network config already exists" in again
        await confirmed(client, "/actions/network-init", network="10.1.0.0/16", force="yes")
        assert str((await store.get_config()).network) == "10.1.0.0/16"

    run_console(store, body)


def test_reserve_and_unreserve() -> None:
    ctl = Ctl()
    network(ctl)

    async def body(client: Client) -> None:
        html = await post(client, "/actions/reserve", 400, subnet="banana", node="n1")
        assert "&#39;banana&#39; is not a subnet" in html and 'value="banana"' in html
        html = await post(client, "/actions/reserve", 400, subnet="10.9.0.0/24", node="n1")
        assert "is not an allocatable subnet of 10.244.0.0/16" in html
        await post(client, "/actions/reserve", 400, subnet="10.244.7.0/24", node=" ")
        ask = await post(client, "/actions/reserve", subnet="10.244.7.0/24", node="n7")
        assert "Reserve 10.244.7.0/24 for node &#39;n7&#39;?" in ask
        assert await ctl.store.list_reservations() == {}
        await confirmed(client, "/actions/reserve", subnet="10.244.7.0/24", node="n7")
        await confirmed(client, "/actions/reserve", subnet="10.244.8.0-24", node="n8")
        table = rows(await page(client, "/leases"), "reservations")[1:]
        assert [r[:2] for r in table] == [["10.244.7.0/24", "n7"], ["10.244.8.0/24", "n8"]]
        await confirmed(client, "/actions/unreserve", subnet="10.244.7.0/24")
        assert [str(s) for s in await ctl.store.list_reservations()] == ["10.244.8.0/24"]
        await post(client, "/actions/unreserve", 404, subnet="10.244.7.0/24")

    run_console(ctl.store, body)


def test_reserve_without_a_network_says_so() -> None:
    async def body(client: Client) -> None:
        html = await post(client, "/actions/reserve", 400, subnet="10.244.7.0/24", node="n")
        assert "overlayctl network init" in html

    run_console(MemStore(), body)


def test_revoke_a_lease() -> None:
    ctl = Ctl()
    network(ctl)
    ctl.lease(node_lease(1, "192.0.2.1"))
    ctl.lease(node_lease(2, "192.0.2.2"))

    async def body(client: Client) -> None:
        ask = await post(client, "/actions/revoke", subnet="10.244.2.0/24")
        assert "node &#39;node2&#39;" in ask
        await post(client, "/actions/revoke", subnet="10.244.2.0/24", confirm="yes")
        left = (await ctl.store.list_leases()).leases
        assert [str(s.subnet) for s in left] == ["10.244.1.0/24"]
        await post(client, "/actions/revoke", 404, subnet="10.244.2.0/24")
        await post(client, "/actions/revoke", 404, subnet="10.244.2.0/24", confirm="yes")

    run_console(ctl.store, body)


def test_set_a_site_mode() -> None:
    ctl = Ctl()
    network(ctl)
    ctl.lease(node_lease(1, "192.0.2.1", site="a"))

    async def body(client: Client) -> None:
        await confirmed(client, "/actions/site-mode", site="a", mode="gateway")
        assert (await ctl.store.get_config()).topology.mode_of("a") == "gateway"
        assert rows(await page(client, "/sites"), "sites")[1][1] == "gateway"
        html = await post(client, "/actions/site-mode", 400, site="a", mode="star")
        assert "mode must be one of mesh, gateway" in html

    run_console(ctl.store, body)


def test_gateway_mode_is_refused_on_a_vxlan_network() -> None:
    ctl = Ctl()
    network(ctl, "--backend", "vxlan")

    async def body(client: Client) -> None:
        html = await post(client, "/actions/site-mode", 400, site="a", mode="gateway")
        assert "gateway mode needs Backend.Type" in html
        assert (await ctl.store.get_config()).topology.mode_of("a") == "mesh"

    run_console(ctl.store, body)


def test_a_post_without_the_csrf_token_is_refused() -> None:
    ctl = Ctl()
    network(ctl)

    async def body(client: Client) -> None:
        for csrf in ("", "wrong", CSRF[:-1]):
            form = {"subnet": "10.244.7.0/24", "node": "n", "confirm": "yes", "csrf": csrf}
            resp = await client.post("/actions/reserve", data=form)
            assert resp.status == 403
        resp = await client.post(
            "/actions/reserve", data={"subnet": "10.244.7.0/24", "node": "n", "confirm": "yes"}
        )
        assert resp.status == 403
        assert await ctl.store.list_reservations() == {}

    run_console(ctl.store, body)


def test_the_token_is_needed_for_every_request() -> None:
    ctl = Ctl()
    network(ctl)

    async def body(client: Client) -> None:
        for path in PAGES:
            html = await page(client, path, 401)
            assert 'id="login"' in html and "10.244.0.0/16" not in html
        await page(client, "/", 401, headers={"Authorization": "Bearer wrong"})
        await page(client, "/", 401, headers={"Authorization": TOKEN})  # no "Bearer "
        await page(client, "/", headers={"Authorization": f"Bearer {TOKEN}"})
        form = {"csrf": CSRF, "subnet": "10.244.7.0/24", "node": "n", "confirm": "yes"}
        assert (await client.post("/actions/reserve", data=form)).status == 401
        assert (await client.post("/login", data={"token": "nope"})).status == 401
        await page(client, "/", 401)
        resp = await client.post("/login", data={"token": TOKEN}, allow_redirects=False)
        assert resp.status == 303 and "HttpOnly" in resp.headers["Set-Cookie"]
        assert "SameSite=Strict" in resp.headers["Set-Cookie"]
        assert "Log in" not in await page(client, "/")  # the cookie now
        assert (await client.post("/actions/reserve", data=form)).status == 200
        assert [str(s) for s in await ctl.store.list_reservations()] == ["10.244.7.0/24"]
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies({COOKIE: "forged"})
        await page(client, "/", 401)

    run_console(ctl.store, body, token=TOKEN)


def test_another_host_name_is_refused() -> None:
    async def body(client: Client) -> None:
        await page(client, "/", 403, headers={"Host": "rebound.example:8080"})
        await page(client, "/", headers={"Host": "localhost:8080"})

    run_console(MemStore(), body)


def test_a_request_over_the_size_limit_is_refused() -> None:
    ctl = Ctl()
    network(ctl)

    async def body(client: Client) -> None:
        resp = await client.post("/actions/reserve", data={"csrf": CSRF, "node": "n" * 70_000})
        assert resp.status == 413
        html = await post(client, "/actions/reserve", 400, subnet="10.244.7.0/24", node="n" * 300)
        assert "longer than 256 characters" in html
        assert await ctl.store.list_reservations() == {}

    run_console(ctl.store, body)


def test_overlayctl_console_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    ctl = Ctl()
    result = ctl("console", "--listen", "0.0.0.0:0", code=2)
    assert "error: the console on 0.0.0.0 would be open to every network" in result.stderr
    assert "hint: give --token-file" in result.stderr
    result = ctl("console", "--listen", "192.0.2.1:8080", code=2)
    assert "error:" in result.stderr
    assert "is not ADDRESS:PORT" in ctl("console", "--listen", "localhost:80", code=2).stderr
    assert "is not ADDRESS:PORT" in ctl("console", "--listen", "127.0.0.1:99999", code=2).stderr
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert "at least 16" in ctl("console", "--token-file", str(short), code=2).stderr
    missing = tmp_path / "missing"
    assert "cannot read --token-file" in ctl("console", "--token-file", str(missing), code=2).stderr


def states(html: str, table: str, attribute: str = "data-state") -> list[list[str]]:
    """Each matrix row's cells' ``attribute``, the header row and column left out."""
    found = re.search(rf'<table id="{table}"(.*?)</table>', html, re.S)
    assert found is not None, f"no table {table}"
    lines = re.findall(r"<tr>(.*?)</tr>", found.group(1), re.S)[1:]
    return [re.findall(rf'{attribute}="(\w*)"', line) for line in lines]


def six_nodes(ctl: Ctl) -> None:
    """node1..node6 in sites a (1, 2), b (3, 4), c (5, 6)."""
    network(ctl)
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
    network(ctl)
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
