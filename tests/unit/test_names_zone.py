"""The DNS zone from the leases (overlayd/planning/names.py): names, conflicts, answers."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlayd.planning.names import Kind, Rcode, RType, Zone, resolve, reverse_origin
from overlayd.planning.zone_builder import ZoneBuilder, build_zone
from overlayd.values.lease import LeaseRecord
from overlayd.values.names import ContainerName
from tests.builders import node_lease

NET = IPv4Network("10.244.0.0/16")
ZONE = "overlay.internal"


def zone_of(
    *records: LeaseRecord, containers: tuple[ContainerName, ...] = (), ns: str = "node1"
) -> Zone:
    leases = {r.subnet: r for r in records}
    created = {r.subnet: i + 1 for i, r in enumerate(records)}  # in the order given
    return build_zone(ZONE, NET, ns, leases, created, containers)


def a(zone: Zone, name: str) -> str | None:
    answer = resolve(zone, name, RType.A)
    return answer.answer[0].data if answer.answer else None


def test_an_empty_zone_answers_its_apex_and_nothing_else() -> None:
    zone = zone_of()
    assert zone.entries == () and zone.conflicts == ()
    assert resolve(zone, ZONE, RType.SOA).rcode is Rcode.NOERROR
    assert resolve(zone, ZONE, RType.NS).answer[0].data == "node1.overlay.internal."
    nx = resolve(zone, "node1.overlay.internal", RType.A)
    assert nx.rcode is Rcode.NXDOMAIN and nx.authority[0].rtype is RType.SOA


def test_one_node_has_its_name_its_site_name_and_a_ptr() -> None:
    zone = zone_of(node_lease(1, "192.0.2.1", site="aws"))
    assert a(zone, "node1.overlay.internal") == "10.244.1.0"
    assert a(zone, "NODE1.Overlay.Internal.") == "10.244.1.0"  # any case, trailing dot
    assert a(zone, "node1.aws.overlay.internal") == "10.244.1.0"
    ptr = resolve(zone, "0.1.244.10.in-addr.arpa", RType.PTR)
    assert ptr.answer[0].data == "node1.overlay.internal."
    # the site is an empty non-terminal: it exists (NODATA), unlike an unknown name
    assert resolve(zone, "aws.overlay.internal", RType.A).rcode is Rcode.NOERROR
    assert resolve(zone, "gcp.overlay.internal", RType.A).rcode is Rcode.NXDOMAIN
    # a type the zone has none of: NODATA, with the SOA for the negative TTL
    nodata = resolve(zone, "node1.overlay.internal", None)
    assert nodata.rcode is Rcode.NOERROR and not nodata.answer and nodata.authority


def test_many_nodes_every_name_sorted() -> None:
    records = [node_lease(n, f"192.0.2.{n}", site=f"s{n % 3}") for n in range(1, 60)]
    zone = zone_of(*records)
    assert [e.name for e in zone.entries] == sorted(e.name for e in zone.entries)
    assert len(zone.entries) == 2 * len(records)
    for rec in records:
        assert a(zone, f"{rec.node}.{ZONE}") == str(rec.overlay_ip)
        assert a(zone, f"{rec.node}.{rec.site}.{ZONE}") == str(rec.overlay_ip)


def test_other_zones_are_refused_never_resolved() -> None:
    zone = zone_of(node_lease(1, "192.0.2.1"))
    for name in ("example.com", "internal", "overlay.internal.example.com", "xoverlay.internal"):
        assert resolve(zone, name, RType.A).rcode is Rcode.REFUSED, name
    # reverse names outside the overlay network, even in the same /8
    assert resolve(zone, "1.1.168.192.in-addr.arpa", RType.PTR).rcode is Rcode.REFUSED
    assert resolve(zone, "0.1.245.10.in-addr.arpa", RType.PTR).rcode is Rcode.REFUSED
    # inside it but no node: NXDOMAIN; a malformed reverse name too
    assert resolve(zone, "0.9.244.10.in-addr.arpa", RType.PTR).rcode is Rcode.NXDOMAIN
    assert resolve(zone, "x.0.1.244.10.in-addr.arpa", RType.PTR).rcode is Rcode.NXDOMAIN
    assert resolve(zone, "00.1.244.10.in-addr.arpa", RType.PTR).rcode is Rcode.NXDOMAIN


def test_reverse_origin_is_octet_aligned() -> None:
    assert reverse_origin(IPv4Network("10.244.0.0/16")) == "244.10.in-addr.arpa"
    assert reverse_origin(IPv4Network("10.240.0.0/12")) == "10.in-addr.arpa"
    assert reverse_origin(IPv4Network("192.168.7.0/24")) == "7.168.192.in-addr.arpa"


def test_an_alias_claimed_twice_goes_to_the_older_lease_both_keep_their_names() -> None:
    one = node_lease(1, "192.0.2.1", dns_names=("peer0.org1",))
    two = node_lease(2, "192.0.2.2", dns_names=("peer0.org1", "peer1.org1"))
    for order in ((one, two), (two, one)):
        zone = zone_of(*order)
        older = order[0]
        assert a(zone, "peer0.org1.overlay.internal") == str(older.overlay_ip)
        assert a(zone, "peer1.org1.overlay.internal") == "10.244.2.0"
        assert a(zone, "node1.overlay.internal") == "10.244.1.0"
        assert a(zone, "node2.overlay.internal") == "10.244.2.0"
        (conflict,) = zone.conflicts
        assert conflict.name == "peer0.org1.overlay.internal"
        assert conflict.winner == older.node
        assert conflict.losers == tuple({"node1", "node2"} - {older.node})


def test_same_creation_breaks_ties_by_node_name() -> None:
    one = node_lease(1, "192.0.2.1", dns_names=("web",))
    two = node_lease(2, "192.0.2.2", dns_names=("web",))
    leases = {r.subnet: r for r in (two, one)}
    zone = build_zone(ZONE, NET, "node1", leases, {})
    assert a(zone, "web.overlay.internal") == "10.244.1.0"


def test_an_alias_cannot_take_another_nodes_name() -> None:
    thief = node_lease(1, "192.0.2.1", dns_names=("node2", "node2.default"))
    victim = node_lease(2, "192.0.2.2")
    zone = zone_of(thief, victim)  # the thief's lease is even the older one
    assert a(zone, "node2.overlay.internal") == "10.244.2.0"
    assert a(zone, "node2.default.overlay.internal") == "10.244.2.0"
    assert {c.name for c in zone.conflicts} == {
        "node2.overlay.internal",
        "node2.default.overlay.internal",
    }
    # a node's alias equal to its own name is no conflict
    assert zone_of(node_lease(3, "192.0.2.3", dns_names=("node3",))).conflicts == ()


def test_containers_are_named_under_their_node() -> None:
    one = node_lease(1, "192.0.2.1")
    web = ContainerName(one.subnet, "c" * 64, "web", IPv4Address("10.244.1.5"))
    zone = zone_of(one, containers=(web,))
    assert a(zone, "web.node1.overlay.internal") == "10.244.1.5"
    entry = next(e for e in zone.entries if e.name == "web.node1.overlay.internal")
    assert entry.kind is Kind.CONTAINER
    ptr = resolve(zone, "5.1.244.10.in-addr.arpa", RType.PTR)
    assert ptr.answer[0].data == "web.node1.overlay.internal."


@pytest.mark.parametrize(
    "subnet, address",
    [
        ("10.244.1.0/24", "10.244.2.5"),  # outside its node's subnet: another node's address
        ("10.244.1.0/24", "10.244.1.0"),  # the node's own overlay address
        ("10.244.9.0/24", "10.244.9.5"),  # a subnet nobody leases (its node is gone)
    ],
)
def test_hostile_container_records_name_nothing(subnet: str, address: str) -> None:
    one, two = node_lease(1, "192.0.2.1"), node_lease(2, "192.0.2.2")
    bad = ContainerName(IPv4Network(subnet), "c1", "evil", IPv4Address(address))
    zone = zone_of(one, two, containers=(bad,))
    clean = zone_of(one, two)
    assert zone.entries == clean.entries and zone.reverse == clean.reverse


def test_two_nodes_of_one_name_the_older_wins() -> None:
    old = node_lease(1, "192.0.2.1", node="db")
    new = node_lease(2, "192.0.2.2", node="DB", site="gcp")
    zone = zone_of(old, new)
    assert a(zone, "db.overlay.internal") == "10.244.1.0"
    assert a(zone, "db.gcp.overlay.internal") == "10.244.2.0"  # still reachable by site
    assert zone.conflicts[0].name == "db.overlay.internal"


def test_the_zone_is_deterministic() -> None:
    records = [node_lease(n, f"192.0.2.{n}", dns_names=("shared",)) for n in range(1, 20)]
    leases = {r.subnet: r for r in records}
    created = {r.subnet: 7 for r in records}
    first = build_zone(ZONE, NET, "node1", leases, created)
    again = build_zone(ZONE, NET, "node1", dict(reversed(list(leases.items()))), created)
    assert first == again


@pytest.mark.parametrize("seed", range(8))
def test_an_updated_zone_equals_one_built_afresh(seed: int) -> None:
    """Random joins, leaves, renames, alias and container changes: after each step the
    incremental builder's zone is the zone built from nothing."""
    rng = random.Random(seed)
    records: dict[IPv4Network, LeaseRecord] = {}
    created: dict[IPv4Network, int] = {}
    containers: dict[str, ContainerName] = {}
    builder = ZoneBuilder(ZONE, NET, "node1")
    for step in range(60):
        n = rng.randrange(1, 12)
        subnet = IPv4Network(f"10.244.{n}.0/24")
        action = rng.random()
        if action < 0.5:  # join or change: a new record object
            aliases = tuple(
                sorted(rng.sample(["web", "db", "x.y", "node3", "api"], rng.randrange(3)))
            )
            name = rng.choice([f"node{n}", f"node{n}", "shared"])
            records[subnet] = node_lease(n, f"192.0.2.{n}", node=name, dns_names=aliases,
                                         site=rng.choice(["a", "b"]))  # fmt: skip
            created.setdefault(subnet, step)
        elif action < 0.7:
            records.pop(subnet, None)
            created.pop(subnet, None)
        elif action < 0.9:
            ctr = ContainerName(subnet, f"c{rng.randrange(4)}", rng.choice(["app", "web"]),
                                IPv4Address(f"10.244.{n}.{rng.randrange(0, 4)}"))  # fmt: skip
            containers[ctr.key_part()] = ctr
        elif containers:
            containers.pop(rng.choice(sorted(containers)))
        got = builder.update(records, created, containers.values(), step + 1)
        want = build_zone(ZONE, NET, "node1", dict(records), created, containers.values(), step + 1)
        assert got == want, step
