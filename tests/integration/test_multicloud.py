"""Issue 3: per-peer underlay choice in the multi-cloud world, verified by probes.

No host is given --public-ip: NAT'd hosts learn their public address from the replies of
peers in other sites (the bare-metal host, whose public address is on its interface, is
the first such peer). Cloud A's private range may collide with cloud B's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from ipaddress import IPv4Address

import pytest

from tests.daemons import BIN, Background, OverlaydProc, full_matrix, ns_run, running, wait_until
from tests.lab.world import (
    World,
    build_multicloud_world,
    destroy,
    drop_between,
    hairpin_packets,
    tcp_transfer,
)

pytestmark = pytest.mark.root
HOSTS = ("a1", "a2", "a3", "b1", "b2", "bare")


@pytest.fixture(scope="module", params=[False, True], ids=["distinct", "colliding"])
def world(
    request: pytest.FixtureRequest,
    prefix_factory: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    w = build_multicloud_world(
        prefix_factory(), colliding=request.param, workdir=tmp_path_factory.mktemp("mc")
    )
    try:  # plain VXLAN: the paths under test are VXLAN's, across sites too (UDP 8472)
        ns_run(w.host("a1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
               w.etcd_endpoint, "network", "init", "--network", "10.244.0.0/16",
               "--backend", "vxlan")  # fmt: skip
        yield w
    finally:
        destroy(w)


@pytest.fixture(scope="module")
def daemons(world: World) -> Iterator[dict[str, OverlaydProc]]:
    with running(world, HOSTS, public_ip=False) as procs:
        yield procs


def all_verified(d: OverlaydProc, expect: int) -> bool:
    found = d.peers()
    return len(found) == expect and all(p["address"] in p["verified"] for p in found.values())


def _publishes(d: OverlaydProc, public: str) -> bool:
    """Whether ``public`` appears anywhere in ``d``'s status document."""
    return public in json.dumps(d.status())


def test_nat_hosts_discover_their_public_addresses(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    for name in ("a1", "a2", "a3", "b1", "b2"):
        public = str(world.host(name).public)
        wait_until(partial(_publishes, daemons[name], public), 30,
                   f"{name} publishes {public}")  # fmt: skip
        listing = ns_run(daemons[name].ns, str(BIN / "overlayctl"), "--etcd-endpoints",
                         world.etcd_endpoint, "leases", "show", name).stdout  # fmt: skip
        assert public in json.loads(listing)["public_ips"]


def test_every_host_verifies_and_reaches_every_other(daemons: dict[str, OverlaydProc]) -> None:
    for name, d in daemons.items():
        wait_until(partial(all_verified, d, len(HOSTS) - 1), 30, f"{name}: verified paths")
    full_matrix(daemons)


def test_paths_private_in_site_public_across(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    found = daemons["a1"].peers()
    assert found["a2"]["address"] == str(world.host("a2").ip)
    assert found["a2"]["kind"] == "private"
    assert found["b1"]["address"] == str(world.host("b1").public)
    assert found["b1"]["kind"] == "public"
    assert found["bare"]["address"] == str(world.host("bare").ip)
    assert found["b1"]["rtt_ms"] is not None and found["b1"]["last_success"] is not None


def vxlan_hairpin_counter(world: World, site: str) -> Callable[[], int]:
    """Count, on ``site``'s router, VXLAN packets from its LAN to its own public addresses.

    Path probes to those addresses are expected (they keep the public path verified for
    failover); overlay traffic itself must stay on the LAN.
    """
    router = world.router(site)
    publics = ", ".join(str(h.public) for h in world.site_hosts(site))
    router.ns.nft(
        "table ip ovtest {\n counter vxlan {}\n chain pre {\n"
        "  type filter hook prerouting priority -300;\n"
        f"  iifname {router.inside_if} ip daddr {{ {publics} }} udp dport 8472 counter name vxlan\n"
        " }\n}\n"
    )

    def read() -> int:
        out = router.ns.run(["nft", "-j", "list", "counter", "ip", "ovtest", "vxlan"]).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise AssertionError(f"no counter in {out}")

    return read


def test_in_site_overlay_traffic_does_not_cross_the_nat(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    vxlan_via_nat = vxlan_hairpin_counter(world, "cloud-a")
    hairpin_before = hairpin_packets(world.router("cloud-a"))
    bg = Background(daemons["a1"], daemons["a2"], interval=0.05)
    time.sleep(2)
    sent, received = bg.stop()
    assert received == sent and sent > 20
    assert vxlan_via_nat() == 0
    # what did cross the NAT is a few path probes (every 5 s per public candidate), not the
    # 2 x 40 pings
    assert hairpin_packets(world.router("cloud-a")) - hairpin_before < sent


def test_cross_cloud_tcp_transfer(daemons: dict[str, OverlaydProc]) -> None:
    a1, b2 = daemons["a1"], daemons["b2"]
    moved = tcp_transfer(a1.host.ns, b2.host.ns, b2.overlay_ip(), 50 * 2**20)
    assert moved.nbytes == 50 * 2**20


def test_private_path_failure_fails_over_to_public_and_back(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    a1, a2 = daemons["a1"], daemons["a2"]
    a2_private, a2_public = world.host("a2").ip, world.host("a2").public
    assert isinstance(a2_public, IPv4Address)
    wait_until(lambda: str(a2_public) in a1.peers()["a2"]["verified"], 15, "public path verified")
    bg = Background(a1, a2, interval=0.05)
    time.sleep(1)
    block = drop_between(a1.host.ns, a2_private)
    t0 = time.monotonic()
    took = wait_until(lambda: a1.peers()["a2"]["address"] == str(a2_public), 5, "failover")
    time.sleep(1)
    sent, received = bg.stop()
    lost_seconds = (sent - received) * 0.05
    print(f"failover chosen after {took:.2f}s; {sent - received} of {sent} pings lost")
    assert lost_seconds <= 3.0, f"traffic interrupted for ~{lost_seconds:.1f}s"
    assert a1.pings(a2)
    block.restore()
    # each end moves back on its own probe schedule: traffic must flow while one end is
    # back on the private path and the other still sends from its public address
    bg = Background(a1, a2, interval=0.05)
    a1_private = world.host("a1").ip
    back = wait_until(lambda: a1.peers()["a2"]["address"] == str(a2_private), 30, "move back")
    wait_until(lambda: a2.peers()["a1"]["address"] == str(a1_private), 30, "a2 moves back")
    time.sleep(0.5)
    sent, received = bg.stop()
    print(
        f"back on the private path {back:.1f}s after restore ({time.monotonic() - t0:.1f}s);"
        f" {sent - received} of {sent} pings lost while both ends moved back"
    )
    assert sent - received <= 2, f"{sent - received} of {sent} pings lost on the move back"
    assert a1.pings(a2)
    # and then the public address of the healthy same-site peer is refused again
    gone = wait_until(
        lambda: str(a2_public) not in a1.host.ns.nft_set("inet", "overlayd_ingress", "peers"),
        20,
        "a2's public address leaves a1's ingress set",
    )
    print(f"a2's public address dropped from the ingress filter {gone:.1f}s later")
