"""Every overlayctl command against the in-memory store: zero, one and many rows, JSON
output, malformed records, and the errors a person can cause (exit codes 1 and 2)."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from overlayd.values.config import parse_config
from overlayd.values.errors import ConfigMissingError
from overlayd.values.gateway_state import GatewayClaim, HealthReport
from tests.builders import node_lease, record
from tests.component.ctl import Ctl, sync

LEASES_HEADER = ["SUBNET", "NODE", "SITE", "PUBLIC/UNDERLAY", "BACKEND", "TTL"]


@pytest.fixture
def ctl() -> Ctl:
    return Ctl()


def table(text: str) -> list[list[str]]:
    """A printed table as rows of cells (cells hold no spaces in these tests)."""
    return [line.split() for line in text.splitlines()]


def three_nodes(ctl: Ctl) -> None:
    ctl.lease(record("10.244.3.0/24", "c", "ic", 3, site="eu"))
    ctl.lease(record("10.244.1.0/24", "a", "ia", 1, site="eu"))
    ctl.lease(record("10.244.2.0/24", "b", "ib", 2, site="us"), ttl=30)


# -- network --------------------------------------------------------------------------


def test_network_init_then_show(ctl: Ctl) -> None:
    out = ctl("network", "init", "--network", "10.50.0.0/16").stdout
    assert json.loads(out)["Network"] == "10.50.0.0/16"
    cfg = sync(ctl.store.get_config())
    assert cfg.network == IPv4Network("10.50.0.0/16")
    assert json.loads(ctl("network", "show").stdout) == json.loads(out)


def test_network_init_refuses_to_replace_without_force(ctl: Ctl) -> None:
    ctl.init()
    again = ctl("network", "init", "--network", "10.60.0.0/16", code=2)
    assert "already exists" in again.stderr and "--force" in again.stderr
    ctl("network", "init", "--network", "10.60.0.0/16", "--force")
    assert sync(ctl.store.get_config()).network == IPv4Network("10.60.0.0/16")


@pytest.mark.parametrize(
    "args",
    [
        ["--network", "10.50.0.0/33"],
        ["--network", "not-a-net"],
        ["--network", "10.50.0.0/16", "--backend", "bogus"],
        ["--network", "10.50.0.0/16", "--subnet-len", "8"],
        ["--network", "10.50.0.0/16", "--backend", "vxlan", "--topology", "gateway"],
        ["--network", "10.50.0.0/16", "--site-mode", "eu=bogus"],
        ["--network", "10.50.0.0/16", "--vni", "-1"],
    ],
)
def test_network_init_invalid_is_a_config_error(ctl: Ctl, args: list[str]) -> None:
    result = ctl("network", "init", *args, code=2)
    assert result.stderr.startswith("error: ")
    with pytest.raises(ConfigMissingError):
        sync(ctl.store.get_config())


def test_network_init_over_a_malformed_config_needs_force(ctl: Ctl) -> None:
    ctl.store.put_raw(f"{ctl.store.prefix}/config", "{not json")
    assert "already exists" in ctl("network", "init", "--network", "10.60.0.0/16", code=2).stderr
    ctl("network", "init", "--network", "10.60.0.0/16", "--force")
    assert sync(ctl.store.get_config()).network == IPv4Network("10.60.0.0/16")


def test_network_show_missing_and_malformed_config(ctl: Ctl) -> None:
    missing = ctl("network", "show", code=1)
    assert "no network config" in missing.stderr and "network init" in missing.stderr
    ctl.store.put_raw(f"{ctl.store.prefix}/config", "{not json")
    bad = ctl("network", "show", code=2)
    assert bad.stderr.startswith("error: ") and "JSON" in bad.stderr


# -- leases list / show -----------------------------------------------------------------


def test_leases_list_empty_prints_the_header(ctl: Ctl) -> None:
    ctl.init()
    assert table(ctl("leases", "list").stdout) == [LEASES_HEADER]
    assert json.loads(ctl("leases", "list", "-o", "json").stdout) == []


def test_leases_list_one(ctl: Ctl) -> None:
    ctl.lease(record("10.244.1.0/24", "a", "ia", 1))
    assert table(ctl("leases", "list").stdout) == [
        LEASES_HEADER,
        ["10.244.1.0/24", "a", "default", "10.0.0.1", "vxlan", "60s"],
    ]
    (only,) = json.loads(ctl("leases", "list", "-o", "json").stdout)
    assert only["node"] == "a" and only["ttl"] == 60 and only["private_ips"] == ["10.0.0.1"]


def test_leases_list_many_sorted_with_ttl_left(ctl: Ctl) -> None:
    three_nodes(ctl)
    ctl.clock.advance(10)
    rows = table(ctl("leases", "list").stdout)
    assert rows[0] == LEASES_HEADER
    assert [(r[0], r[1], r[2], r[5]) for r in rows[1:]] == [
        ("10.244.1.0/24", "a", "eu", "50s"),
        ("10.244.2.0/24", "b", "us", "20s"),
        ("10.244.3.0/24", "c", "eu", "50s"),
    ]
    out = json.loads(ctl("leases", "list", "-o", "json").stdout)
    assert [(d["subnet"], d["ttl"]) for d in out] == [
        ("10.244.1.0/24", 50),
        ("10.244.2.0/24", 20),
        ("10.244.3.0/24", 50),
    ]


def test_leases_list_shows_malformed_records_with_one_line_each(ctl: Ctl) -> None:
    ctl.lease(record("10.244.1.0/24", "a", "ia", 1))
    ctl.store.put_raw(f"{ctl.store.prefix}/subnets/10.244.5.0-24", "{garbage" + "x" * 5000)
    ctl.store.put_raw(f"{ctl.store.prefix}/subnets/10.244.6.0-24", '{"PublicIP": 7}')
    ctl.store.put_raw(f"{ctl.store.prefix}/subnets/not-a-subnet", "{}")  # not a lease key
    result = ctl("leases", "list")
    rows = table(result.stdout)
    assert [r[:2] for r in rows[1:]] == [
        ["10.244.1.0/24", "a"],
        ["10.244.5.0/24", "(malformed)"],
        ["10.244.6.0/24", "(malformed)"],
    ]
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: lease 10.244.") for w in warnings)
    assert all(len(w) < 250 for w in warnings)  # outside values are cut short
    out = json.loads(ctl("leases", "list", "-o", "json").stdout)
    assert [d.get("error") is not None for d in out] == [False, True, True]


def test_leases_show_by_subnet_or_node(ctl: Ctl) -> None:
    three_nodes(ctl)
    assert json.loads(ctl("leases", "show", "b").stdout)["subnet"] == "10.244.2.0/24"
    assert json.loads(ctl("leases", "show", "10.244.3.0/24").stdout)["node"] == "c"
    assert json.loads(ctl("leases", "show", "10.244.3.0-24").stdout)["node"] == "c"
    missing = ctl("leases", "show", "nobody", code=1)
    assert "no lease for 'nobody'" in missing.stderr and "leases list" in missing.stderr


def test_leases_show_and_revoke_without_any_lease(ctl: Ctl) -> None:
    for command in ("show", "revoke"):
        result = ctl("leases", command, "10.244.1.0/24", code=1)
        assert result.stderr.startswith("error: no lease for '10.244.1.0/24'")


def test_leases_show_malformed(ctl: Ctl) -> None:
    ctl.store.put_raw(f"{ctl.store.prefix}/subnets/10.244.5.0-24", "[]")
    shown = json.loads(ctl("leases", "show", "10.244.5.0/24").stdout)
    assert shown["ttl"] is None and "JSON object" in shown["error"]


def test_leases_revoke(ctl: Ctl) -> None:
    three_nodes(ctl)
    assert ctl("leases", "revoke", "b").stdout.strip() == "revoked 10.244.2.0/24"
    assert ctl("leases", "revoke", "10.244.3.0/24").stdout.strip() == "revoked 10.244.3.0/24"
    assert [s.record.node for s in sync(ctl.store.list_leases()).leases if s.record] == ["a"]
    ctl("leases", "revoke", "b", code=1)


def test_leases_revoke_malformed(ctl: Ctl) -> None:
    ctl.store.put_raw(f"{ctl.store.prefix}/subnets/10.244.5.0-24", "nope")
    ctl("leases", "revoke", "10.244.5.0/24")
    assert sync(ctl.store.list_leases()).leases == ()


# -- reservations -----------------------------------------------------------------------


def test_reservations_zero_one_many(ctl: Ctl) -> None:
    ctl.init()
    assert table(ctl("leases", "reservations").stdout) == [["SUBNET", "NODE"]]
    assert json.loads(ctl("leases", "reservations", "-o", "json").stdout) == []
    out = ctl("leases", "reserve", "10.244.7.0/24", "--node", "db").stdout
    assert out.strip() == "reserved 10.244.7.0/24 for db"
    assert table(ctl("leases", "reservations").stdout)[1:] == [["10.244.7.0/24", "db"]]
    ctl("leases", "reserve", "10.244.2.0-24", "--node", "web")
    ctl.store.put_raw(f"{ctl.store.prefix}/reservations/10.244.9.0-24", "garbage")  # ignored
    assert table(ctl("leases", "reservations").stdout)[1:] == [
        ["10.244.2.0/24", "web"],
        ["10.244.7.0/24", "db"],
    ]
    assert json.loads(ctl("leases", "reservations", "-o", "json").stdout) == [
        {"subnet": "10.244.2.0/24", "node": "web"},
        {"subnet": "10.244.7.0/24", "node": "db"},
    ]
    assert "removed" in ctl("leases", "unreserve", "10.244.7.0/24").stdout
    assert "no reservation" in ctl("leases", "unreserve", "10.244.7.0/24", code=1).stderr
    assert sync(ctl.store.list_reservations()) == {IPv4Network("10.244.2.0/24"): "web"}


def test_reservations_with_malformed_data(ctl: Ctl) -> None:
    ctl.store.put_raw(f"{ctl.store.prefix}/config", '{"Network": "10.244.0.0/33"}')
    bad = ctl("leases", "reserve", "10.244.7.0/24", "--node", "x", code=2)
    assert bad.stderr.startswith("error: Network '10.244.0.0/33' is not a valid")
    ctl.store.put_raw(f"{ctl.store.prefix}/reservations/10.244.9.0-24", "")  # no node name
    ctl.store.put_raw(f"{ctl.store.prefix}/reservations/junk", "web")  # not a subnet key
    assert json.loads(ctl("leases", "reservations", "-o", "json").stdout) == []
    assert "removed" in ctl("leases", "unreserve", "10.244.9.0/24").stdout  # still removable


def test_reserve_errors(ctl: Ctl) -> None:
    assert "no network config" in ctl("leases", "reserve", "10.244.7.0/24", "--node", "x",
                                      code=1).stderr  # fmt: skip
    ctl.init()
    outside = ctl("leases", "reserve", "10.99.0.0/24", "--node", "x", code=2)
    assert "not an allocatable subnet" in outside.stderr
    usage = ctl("leases", "reserve", "10.244.7.0/99", "--node", "x", code=2)
    assert "is not a subnet" in usage.stderr and "SUBNET" in usage.stderr
    ctl("leases", "unreserve", "junk", code=2)
    assert sync(ctl.store.list_reservations()) == {}


# -- plan -----------------------------------------------------------------------------


def test_plan_zero_one_many_peers(ctl: Ctl) -> None:
    ctl.init("--backend", "vxlan")
    ctl.lease(record("10.244.1.0/24", "a", "ia", 1))
    alone = ctl("plan", "--node", "a").stdout.splitlines()
    assert alone == ["# plan for a (10.244.1.0/24), backend vxlan: 0 peers"]
    doc = json.loads(ctl("plan", "--node", "a", "-o", "json").stdout)
    assert doc["routes"] == [] and doc["neighbours"] == [] and doc["fdb"] == []
    ctl.lease(record("10.244.2.0/24", "b", "ib", 2))
    one = ctl("plan", "--node", "a").stdout.splitlines()
    assert one[0] == "# plan for a (10.244.1.0/24), backend vxlan: 1 peers"
    assert "route 10.244.2.0/24 via 10.244.2.0 onlink" in one
    ctl.lease(record("10.244.3.0/24", "c", "ic", 3))
    doc = json.loads(ctl("plan", "--node", "a", "-o", "json").stdout)
    assert [r["dst"] for r in doc["routes"]] == ["10.244.2.0/24", "10.244.3.0/24"]
    assert len(doc["fdb"]) == 2 and sorted(doc["paths"]) == ["10.244.2.0/24", "10.244.3.0/24"]


def test_plan_with_malformed_records(ctl: Ctl) -> None:
    ctl.init("--backend", "vxlan")
    ctl.lease(record("10.244.1.0/24", "a", "ia", 1))
    ctl.store.put_raw(f"{ctl.store.prefix}/subnets/10.244.5.0-24", "garbage")
    # a malformed peer is left out; the plan for a still prints
    out = ctl("plan", "--node", "a").stdout
    assert out.startswith("# plan for a (10.244.1.0/24), backend vxlan: 0 peers")
    own = ctl("plan", "--node", "10.244.5.0/24", code=1)
    assert "lease of 10.244.5.0/24 (10.244.5.0/24) is malformed" in own.stderr
    assert "leases revoke" in own.stderr
    assert "no lease for 'ghost'" in ctl("plan", "--node", "ghost", code=1).stderr


def test_plan_needs_a_config(ctl: Ctl) -> None:
    ctl.lease(record("10.244.1.0/24", "a", "ia", 1))
    assert "no network config" in ctl("plan", "--node", "a", code=1).stderr
    ctl.store.put_raw(f"{ctl.store.prefix}/config", "[]")
    assert "must be a JSON object" in ctl("plan", "--node", "a", code=2).stderr


def test_plan_with_a_malformed_gateway_claim(ctl: Ctl) -> None:
    """A claim that cannot be read is no claim (one warning line): nobody is the gateway."""
    ctl.init("--topology", "gateway")
    ctl.lease(record("10.244.1.0/24", "a", "ia", 1, site="eu", gateway_candidate=True,
                     backend_type="vxlan+wireguard"))  # fmt: skip
    ctl.store.put_raw(f"{ctl.store.prefix}/gw/site/eu", "{malformed")
    result = ctl("plan", "--node", "a")
    assert result.stdout.splitlines()[1] == "# role waiting (site gateway none)"
    assert json.loads(ctl("plan", "--node", "a", "-o", "json").stdout)["gateway"] is None


# -- gateways -------------------------------------------------------------------------

GW_HEADER = ["SITE", "MODE", "GATEWAY", "CANDIDATES", "HEALTH"]


def test_gateways_on_an_empty_mesh_network(ctl: Ctl) -> None:
    ctl.init()
    assert table(ctl("gateways").stdout) == [GW_HEADER]
    assert json.loads(ctl("gateways", "-o", "json").stdout) == []


def test_gateways_mesh_sites(ctl: Ctl) -> None:
    ctl.init()
    three_nodes(ctl)
    assert table(ctl("gateways").stdout) == [
        GW_HEADER,
        ["eu", "mesh", "-", "-", "-"],
        ["us", "mesh", "-", "-", "-"],
    ]


def test_gateways_one_site_and_a_malformed_lease(ctl: Ctl) -> None:
    ctl.init()
    ctl.lease(record("10.244.1.0/24", "a", "ia", 1, site="eu", gateway_candidate=True))
    ctl.store.put_raw(f"{ctl.store.prefix}/subnets/10.244.5.0-24", "garbage")  # no site: left out
    assert table(ctl("gateways").stdout) == [GW_HEADER, ["eu", "mesh", "-", "a", "-"]]
    assert json.loads(ctl("gateways", "-o", "json").stdout) == [
        {"site": "eu", "mode": "mesh", "gateway": None, "candidates": ["a"], "blamed_by": []}
    ]


def test_gateways_elected_and_blamed(ctl: Ctl) -> None:
    ctl.init("--backend", "vxlan+wireguard", "--topology", "gateway")
    for n, (node, site) in enumerate([("a", "eu"), ("b", "eu"), ("c", "us")], start=1):
        ctl.lease(record(f"10.244.{n}.0/24", node, f"i{node}", n, site=site,
                         gateway_candidate=True))  # fmt: skip
    lease = sync(ctl.store.grant(10))
    claim = GatewayClaim("eu", "a", "ia", IPv4Network("10.244.1.0/24"))
    assert sync(ctl.store.claim_gateway("eu", claim, lease))
    assert table(ctl("gateways").stdout)[1:] == [
        ["eu", "gateway", "a", "a,b", "forwarding"],
        ["us", "gateway", "-", "c", "-"],
    ]
    sync(ctl.store.report_gateway("eu", HealthReport("eu", "ib", "b", "ia"), lease))
    rows = ctl("gateways").stdout.splitlines()
    assert rows[1].split()[:4] == ["eu", "gateway", "a", "a,b"]
    assert rows[1].endswith("blamed by b")
    doc = json.loads(ctl("gateways", "-o", "json").stdout)
    assert doc[0] == {"site": "eu", "mode": "gateway", "gateway": "a",
                      "candidates": ["a", "b"], "blamed_by": ["b"]}  # fmt: skip
    ctl.store.put_raw(f"{ctl.store.prefix}/gw/site/us", "{malformed")
    assert table(ctl("gateways").stdout)[2] == ["us", "gateway", "-", "c", "-"]


def test_gateways_malformed_config(ctl: Ctl) -> None:
    ctl.store.put_raw(f"{ctl.store.prefix}/config", '{"Network": 5}')
    assert ctl("gateways", code=2).stderr.startswith("error: ")


def test_config_written_by_init_is_what_show_parses(ctl: Ctl) -> None:
    ctl.init("--backend", "wireguard", "--listen-port", "51000")
    cfg = parse_config(ctl("network", "show").stdout)
    assert cfg.backend.type == "wireguard" and cfg.backend.listen_port == 51000


def test_plan_default_backend_zero_and_many_peers(ctl: Ctl) -> None:
    ctl.init()  # vxlan+wireguard
    ctl.lease(record("10.244.1.0/24", "a", "ia", 1, site="eu", backend_type="vxlan+wireguard"))
    assert ctl("plan", "--node", "a").stdout.startswith("# plan for a (10.244.1.0/24)")
    json.loads(ctl("plan", "--node", "a", "-o", "json").stdout)
    ctl.lease(record("10.244.2.0/24", "b", "ib", 2, site="eu", backend_type="vxlan+wireguard"))
    ctl.lease(record("10.244.3.0/24", "c", "ic", 3, site="us", backend_type="vxlan+wireguard"))
    out = ctl("plan", "--node", "a").stdout
    assert "route 10.244.2.0/24 via 10.244.2.0 onlink" in out  # same site: VXLAN
    doc = json.loads(ctl("plan", "--node", "a", "-o", "json").stdout)
    assert doc["node"] == "a"


# -- names (overlayctl names; docs/dns.md) --------------------------------------------


def test_names_lists_resolves_and_warns_about_conflicts() -> None:
    ctl = Ctl()
    ctl.init("--dns-zone", "Corp.Internal")
    ctl.lease(node_lease(1, "192.0.2.1", site="aws", dns_names=("web",)))
    ctl.lease(node_lease(2, "192.0.2.2", dns_names=("web",)))
    listing = json.loads(ctl("names", "-o", "json").stdout)
    assert {"name": "web.corp.internal", "address": "10.244.1.0", "kind": "alias",
            "node": "node1"} in listing  # fmt: skip
    assert [row["name"] for row in listing] == sorted(row["name"] for row in listing)
    table = ctl("names")
    assert "node1.aws.corp.internal" in table.stdout
    assert "warning: web.corp.internal is claimed by 'node1' and 'node2'" in table.stderr
    assert ctl("names", "resolve", "node2").stdout == "10.244.2.0\n"
    assert ctl("names", "resolve", "node1.aws.corp.internal.").stdout == "10.244.1.0\n"
    assert ctl("names", "resolve", "10.244.2.0").stdout == "node2.corp.internal\n"
    missing = ctl("names", "resolve", "nobody", code=1)
    assert "NXDOMAIN" in missing.stderr and "hint:" in missing.stderr


def test_names_of_an_empty_network_and_a_bad_zone() -> None:
    ctl = Ctl()
    ctl.init()
    assert json.loads(ctl("names", "-o", "json").stdout) == []
    assert "NAME" in ctl("names").stdout
    bad = Ctl()
    out = bad("network", "init", "--network", "10.244.0.0/16", "--dns-zone", "a..b", code=2)
    assert "DNSZone" in out.stderr or "DNSZone" in out.stdout


def test_names_cleanup_removes_only_our_block(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n# BEGIN overlayd overlay.internal\n"
                     "10.244.1.0 a\n# END overlayd overlay.internal\n::1 localhost6\n")  # fmt: skip
    out = Ctl()("names", "cleanup", "--hosts-file", str(hosts))
    assert out.stdout.startswith("removed")
    assert hosts.read_text() == "127.0.0.1 localhost\n::1 localhost6\n"
    assert Ctl()("names", "cleanup", "--hosts-file", str(hosts)).stdout.startswith("no block")
