"""The namespace test worlds behave like the networks they model.

LAN world: hosts see each other and etcd; a host behind masquerade dials out only.
Multi-cloud world: public addresses are reachable from everywhere but live only on the
routers; the 1:1 NAT rewrites sources both ways; hairpin works (or not, per variant) and is
counted; colliding private ranges build; masquerade-only hosts cannot be reached; delay
makes cross-site paths measurably slower. Discovery services: each cloud's metadata API
answers each host its own elastic IP (asked by overlayd's own client); the STUN server on
the internet sees each host at its elastic IP.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface
from itertools import permutations
from pathlib import Path

import pytest

from tests.lab.etcd import ETCDCTL, EtcdServer
from tests.lab.netns import (
    Namespace,
    check_ifname,
    create_namespace,
    list_namespaces,
    run,
    tool,
)
from tests.lab.services import turnserver_available
from tests.lab.world import (
    Host,
    World,
    build_lan_world,
    build_multicloud_world,
    destroy,
    drop_between,
    hairpin_packets,
    lan_world,
    ping,
    tcp_transfer,
    udp_endpoint,
    udp_source,
)

pytestmark = pytest.mark.root

DELAY_MS = 10
MB50 = 50 * 2**20


WorldFactory = Callable[[Callable[[str, Path], World]], Iterator[World]]


@pytest.fixture(scope="module")
def world_factory(
    prefix_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> WorldFactory:
    """Builds a world with a fresh prefix and workdir; destroys it when the caller is done."""

    def make(build: Callable[[str, Path], World]) -> Iterator[World]:
        world = build(prefix_factory(), tmp_path_factory.mktemp("world"))
        try:
            yield world
        finally:
            destroy(world)

    return make


@pytest.fixture(scope="module")
def lan(world_factory: WorldFactory) -> Iterator[World]:
    yield from world_factory(lambda p, w: build_lan_world(p, nat_host=True, workdir=w))


@pytest.fixture(scope="module")
def cloud(world_factory: WorldFactory) -> Iterator[World]:
    yield from world_factory(lambda p, w: build_multicloud_world(p, workdir=w))


@pytest.fixture(scope="module")
def variants(world_factory: WorldFactory) -> Iterator[World]:
    """Colliding private ranges, no hairpin in cloud A, masquerade-only cloud B."""
    yield from world_factory(
        lambda p, w: build_multicloud_world(
            p, colliding=True, hairpin=False, nat_b="masquerade", workdir=w
        )
    )


@pytest.fixture(scope="module")
def no_public(world_factory: WorldFactory) -> Iterator[World]:
    """No bare host; cloud A masquerades, cloud B masquerades with random ports."""
    yield from world_factory(
        lambda p, w: build_multicloud_world(
            p, nat_a="masquerade", nat_b="masquerade-random", public_host=False, workdir=w
        )
    )


@pytest.fixture(scope="module")
def discovery(world_factory: WorldFactory) -> Iterator[World]:
    """No bare host; cloud A serves AWS's metadata API, cloud B GCP's; a STUN server."""
    if not turnserver_available():
        pytest.skip("needs coturn (scripts/setup)")
    providers = {"cloud-a": "aws", "cloud-b": "gcp"}
    yield from world_factory(
        lambda p, w: build_multicloud_world(
            p, public_host=False, metadata=providers, stun=True, workdir=w
        )
    )


@pytest.fixture(scope="module")
def delayed(world_factory: WorldFactory) -> Iterator[World]:
    yield from world_factory(lambda p, w: build_multicloud_world(p, delay_ms=DELAY_MS, workdir=w))


def etcd_roundtrip(ns: Namespace, endpoint: str, key: str) -> str:
    """Put ``key`` and read it back through etcd from inside ``ns``; returns the value."""
    base = [ETCDCTL, f"--endpoints=http://{endpoint}", "--command-timeout=3s"]
    ns.run([*base, "put", key, ns.name])
    return ns.run([*base, "get", "--print-value-only", key]).stdout.strip()


def addresses_of(host: Host) -> set[IPv4Address]:
    return {a.ip for a in host.ns.addresses()}


# --- primitives that need no namespaces ---


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a b"])
def test_bad_interface_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_ifname(name)


# --- LAN world ---


def test_lan_hosts_reach_each_other(lan: World) -> None:
    for src, dst in permutations(lan.site_hosts("lan"), 2):
        assert ping(src.ns, dst.ip).ok, f"{src.name} -> {dst.name}"


def test_lan_default_route_points_at_gateway_on_eth0(lan: World) -> None:
    for host in lan.hosts:
        (route,) = json.loads(host.ns.ip("-j", "route", "show", "default"))
        assert (route["dev"], route["gateway"]) == ("eth0", str(host.gateway))


def test_lan_etcd_reachable_from_every_host(lan: World) -> None:
    assert lan.etcd_endpoint == "10.77.0.2:2379"
    for host in lan.hosts:
        assert etcd_roundtrip(host.ns, lan.etcd_endpoint, f"/lan/{host.name}") == host.ns.name


def test_lan_host_behind_masquerade_dials_out_only(lan: World) -> None:
    h1, n1 = lan.host("h1"), lan.host("n1")
    router = lan.router("lan-nat")
    assert udp_source(n1.ns, h1.ns, h1.ip) == router.outside.ip
    assert udp_source(h1.ns, n1.ns, n1.ip, timeout=1) is None
    assert not ping(h1.ns, n1.ip, timeout=1).ok
    # Checksum offload stays on: the case flannel's VXLAN-over-NAT bug needs.
    features = n1.ns.sh("ethtool -k eth0 | grep -E '^(tx-checksumming|rx-checksumming):'")
    assert features.split() == ["rx-checksumming:", "on", "tx-checksumming:", "on"]


def test_lan_bulk_tcp_direct_and_through_nat(lan: World) -> None:
    h1, h2, n1 = lan.host("h1"), lan.host("h2"), lan.host("n1")
    assert tcp_transfer(h1.ns, h2.ns, h2.ip, MB50).peer == h1.ip
    assert tcp_transfer(n1.ns, h1.ns, h1.ip, MB50).peer == lan.router("lan-nat").outside.ip


# --- multi-cloud world ---


def test_cloud_layout(cloud: World) -> None:
    assert cloud.sites == ("cloud-a", "cloud-b", "bare")
    assert [h.name for h in cloud.hosts] == ["a1", "a2", "a3", "b1", "b2", "bare"]
    assert cloud.etcd_endpoint == "192.0.2.10:2379"
    assert all(h.public is not None and h.public != h.ip for h in cloud.hosts[:5])
    assert cloud.host("bare").public == cloud.host("bare").ip


def test_every_host_reaches_every_public_address(cloud: World) -> None:
    failed = [
        f"{src.name} -> {dst.name} ({dst.public})"
        for src, dst in permutations(cloud.hosts, 2)
        if dst.public is not None and not ping(src.ns, dst.public).ok
    ]
    assert not failed


def test_in_site_hosts_reach_each_other_privately(cloud: World) -> None:
    for site in ("cloud-a", "cloud-b"):
        for src, dst in permutations(cloud.site_hosts(site), 2):
            assert ping(src.ns, dst.ip).ok, f"{src.name} -> {dst.ip}"


def test_private_addresses_are_unreachable_from_other_sites(cloud: World) -> None:
    a1, b1, bare = cloud.host("a1"), cloud.host("b1"), cloud.host("bare")
    assert not ping(a1.ns, b1.ip, timeout=1).ok
    assert not ping(bare.ns, a1.ip, timeout=1).ok


def test_public_addresses_exist_only_on_routers(cloud: World) -> None:
    for host in cloud.hosts:
        assert addresses_of(host) == {IPv4Address("127.0.0.1"), host.ip}
    for site in ("cloud-a", "cloud-b"):
        router = cloud.router(site)
        on_wan = {a.ip for a in router.ns.addresses(router.outside_if)}
        assert on_wan == {router.outside.ip} | {h.public for h in cloud.site_hosts(site)}


@pytest.mark.parametrize(
    ("src", "dst", "seen"),
    [
        ("a1", "bare", "a1"),  # outbound SNAT
        ("bare", "a2", "bare"),  # inbound DNAT keeps the source
        ("a3", "b1", "a3"),  # cloud to cloud: both NATs
        ("a1", "a2", "a1"),  # hairpin: the receiver sees the sender's public address
    ],
)
def test_one_to_one_nat_maps_source(cloud: World, src: str, dst: str, seen: str) -> None:
    s, d = cloud.host(src), cloud.host(dst)
    assert d.public is not None
    assert udp_source(s.ns, d.ns, d.public) == cloud.host(seen).public


def test_hairpin_counter_counts_in_site_traffic_via_public_addresses(cloud: World) -> None:
    a1, a2 = cloud.host("a1"), cloud.host("a2")
    router = cloud.router("cloud-a")
    assert a2.public is not None
    other = cloud.router("cloud-b")
    before, before_other = hairpin_packets(router), hairpin_packets(other)
    assert ping(a1.ns, a2.ip, count=3).ok
    assert hairpin_packets(router) == before
    assert ping(a1.ns, a2.public, count=3).ok
    assert hairpin_packets(router) == before + 6  # requests and replies
    assert hairpin_packets(other) == before_other


def test_bulk_tcp_across_clouds(cloud: World) -> None:
    a1, b1 = cloud.host("a1"), cloud.host("b1")
    assert b1.public is not None
    transfer = tcp_transfer(a1.ns, b1.ns, b1.public, MB50)
    assert (transfer.nbytes, transfer.peer) == (MB50, a1.public)
    assert transfer.mbit_per_s > 100


def test_etcd_reachable_from_every_cloud_host(cloud: World) -> None:
    for host in cloud.hosts:
        assert etcd_roundtrip(host.ns, cloud.etcd_endpoint, f"/mc/{host.name}") == host.ns.name


def test_drop_between_breaks_and_restores_a_path(cloud: World) -> None:
    a1, b1 = cloud.host("a1"), cloud.host("b1")
    assert b1.public is not None
    with drop_between(cloud.router("cloud-a").ns, b1.public):
        assert not ping(a1.ns, b1.public, timeout=1).ok
        assert ping(a1.ns, cloud.host("bare").ip).ok
    assert ping(a1.ns, b1.public).ok


# --- variants: colliding private ranges, no hairpin, masquerade-only cloud B ---


def test_colliding_private_addresses_each_work_in_their_site(variants: World) -> None:
    a1, a2, b1, b2 = (variants.host(n) for n in ("a1", "a2", "b1", "b2"))
    assert (a1.ip, a2.ip) == (b1.ip, b2.ip)
    assert ping(a1.ns, a2.ip).ok
    assert ping(b1.ns, b2.ip).ok
    assert udp_source(a1.ns, a2.ns, a2.ip) == a1.ip
    assert udp_source(b1.ns, b2.ns, b2.ip) == b1.ip


def test_without_hairpin_public_addresses_fail_in_site(variants: World) -> None:
    a1, a2 = variants.host("a1"), variants.host("a2")
    router = variants.router("cloud-a")
    assert a2.public is not None
    before = hairpin_packets(router)
    assert not ping(a1.ns, a2.public, timeout=1).ok
    assert hairpin_packets(router) == before + 1
    assert ping(variants.host("bare").ns, a2.public).ok


def test_masquerade_only_hosts_dial_out_but_are_unreachable(variants: World) -> None:
    bare = variants.host("bare")
    router = variants.router("cloud-b")
    assert router.nat == "masquerade"
    for host in variants.site_hosts("cloud-b"):
        assert host.public is None
        assert addresses_of(host) == {IPv4Address("127.0.0.1"), host.ip}
        assert udp_source(host.ns, bare.ns, bare.ip) == router.outside.ip
        assert udp_source(bare.ns, host.ns, router.outside.ip, timeout=1) is None
    assert {a.ip for a in router.ns.addresses(router.outside_if)} == {router.outside.ip}


def test_variant_hosts_reach_etcd(variants: World) -> None:
    for host in variants.hosts:
        assert etcd_roundtrip(host.ns, variants.etcd_endpoint, f"/v/{host.name}") == host.ns.name


# --- no public host; masquerade with and without random ports ---


def test_no_public_host_and_both_clouds_masquerade(no_public: World) -> None:
    assert sorted(h.name for h in no_public.hosts) == ["a1", "a2", "a3", "b1", "b2"]
    assert all(h.public is None for h in no_public.hosts)
    for host in no_public.hosts:
        assert etcd_roundtrip(host.ns, no_public.etcd_endpoint, f"/n/{host.name}") == host.ns.name


def test_masquerade_keeps_free_ports_and_random_masquerade_does_not(no_public: World) -> None:
    """Port-preserving masquerade (punchable) in cloud A, random ports in cloud B."""
    etcd_ns = no_public.etcd_ns
    etcd_ip = IPv4Address(no_public.etcd_endpoint.split(":")[0])
    a1, b1 = no_public.host("a1"), no_public.host("b1")
    rtr_a, rtr_b = no_public.router("cloud-a"), no_public.router("cloud-b")
    assert (rtr_a.nat, rtr_b.nat) == ("masquerade", "masquerade-random")
    seen_a = udp_endpoint(a1.ns, etcd_ns, etcd_ip, source_port=40123)
    assert seen_a == (rtr_a.outside.ip, 40123)
    ports = set()
    for sport in (40123, 40124, 40125):
        seen_b = udp_endpoint(b1.ns, etcd_ns, etcd_ip, source_port=sport)
        assert seen_b is not None and seen_b[0] == rtr_b.outside.ip
        ports.add(seen_b[1])
    assert ports != {40123, 40124, 40125}  # random: not the ports sent from


# --- discovery services: metadata and STUN ---


def query_json(host: Host, name: str, *args: str) -> dict[str, object]:
    """Run tool ``name`` in ``host``'s namespace; its one line of JSON."""
    out = host.ns.run(tool(name, *args), check=False, timeout=20).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_discovery_services_are_described(discovery: World) -> None:
    text = discovery.describe()
    assert "metadata (aws) of cloud-a: http://169.254.169.254:80" in text
    assert "metadata (gcp) of cloud-b: http://169.254.169.254:80" in text
    assert f"stun: {discovery.stun_endpoint} (coturn)" in text
    assert discovery.stun_endpoint == "192.0.2.40:3478"


def test_each_host_learns_its_own_elastic_ip_from_its_clouds_metadata(discovery: World) -> None:
    expect = {"cloud-a": "aws", "cloud-b": "gcp"}
    for host in discovery.hosts:
        seen = query_json(host, "metadata_query", "auto", "2")
        assert seen == {"provider": expect[host.site], "address": str(host.public)}, host.name


def test_only_the_sites_provider_answers(discovery: World) -> None:
    seen = query_json(discovery.host("a1"), "metadata_query", "gcp", "2")
    assert seen["provider"] is None and "gcp" in str(seen["reasons"])


def test_stun_server_sees_each_host_at_its_elastic_ip(discovery: World) -> None:
    assert discovery.stun_endpoint is not None
    ip, port = discovery.stun_endpoint.split(":")
    for name in ("a1", "b2"):
        host = discovery.host(name)
        seen = query_json(host, "stun_query", ip, port, "41641")
        assert seen == {"port": 41641, "address": str(host.public), "mapped_port": 41641}


# --- delay ---


def test_delay_separates_in_site_from_cross_site_round_trips(delayed: World) -> None:
    a1, a2, b1 = delayed.host("a1"), delayed.host("a2"), delayed.host("b1")
    assert b1.public is not None
    near = ping(a1.ns, a2.ip, count=3)
    far = ping(a1.ns, b1.public, count=3)
    assert near.avg_ms is not None and near.avg_ms < DELAY_MS / 2
    assert far.avg_ms is not None and far.avg_ms >= 4 * DELAY_MS
    assert tcp_transfer(a1.ns, b1.ns, b1.public, MB50).peer == a1.public


# --- etcd and cleanup ---


def test_etcd_survives_stop_and_kill_with_its_data(etcd_server: EtcdServer) -> None:
    base = [ETCDCTL, f"--endpoints={etcd_server.url}", "--command-timeout=3s"]
    run([*base, "put", "/k", "v"])
    etcd_server.stop()
    assert not etcd_server.running
    assert not etcd_server.healthy()
    etcd_server.start().wait_healthy()
    etcd_server.kill()
    etcd_server.start().wait_healthy()
    assert run([*base, "get", "--print-value-only", "/k"]).stdout.strip() == "v"


def test_world_is_removed_even_when_the_test_fails(prefix: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), lan_world(prefix, 1, workdir=tmp_path):
        assert list_namespaces(prefix)
        raise RuntimeError("boom")
    assert list_namespaces(prefix) == []


def test_building_over_existing_namespaces_is_refused(prefix: str) -> None:
    create_namespace(prefix + "sw")
    with pytest.raises(RuntimeError, match="exist"):
        build_lan_world(prefix)
    assert [ns.name for ns in list_namespaces(prefix)] == [prefix + "sw"]


def test_interface_addresses_parse(prefix: str) -> None:
    ns = create_namespace(prefix + "x")
    ns.add_address("lo", IPv4Interface("192.0.2.7/32"))
    assert IPv4Interface("192.0.2.7/32") in ns.addresses("lo")
