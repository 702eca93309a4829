"""overlayd end to end on one LAN: real etcd, real daemons in namespaces, real VXLAN."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.daemons import BIN, Background, OverlaydProc, full_matrix, ns_run, running, wait_until
from tests.lab.world import World, build_lan_world, destroy

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(
    prefix_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    w = build_lan_world(prefix_factory(), n_hosts=4, workdir=tmp_path_factory.mktemp("lan"))
    try:  # plain VXLAN: one site, and the tests read the VXLAN device's entries
        ctl(w, "network", "init", "--network", "10.244.0.0/16", "--backend", "vxlan")
        yield w
    finally:
        destroy(w)


def ctl(w: World, *args: str, prefix: str = "/overlayd/network") -> str:
    h1 = w.host("h1").ns.name
    argv = [str(BIN / "overlayctl"), "--etcd-endpoints", w.etcd_endpoint, "--etcd-prefix", prefix]
    return ns_run(h1, *argv, *args).stdout


def etcdctl(w: World, *args: str) -> str:
    return w.etcd_ns.run(["etcdctl", "--endpoints", w.etcd_endpoint, *args]).stdout


@pytest.fixture(scope="module")
def daemons(world: World) -> Iterator[dict[str, OverlaydProc]]:
    """Daemons on h1-h3; h4 stays without one until a test makes it join."""
    with running(world, ("h1", "h2", "h3")) as procs:
        yield procs


def routes(ns: str) -> str:
    return ns_run(ns, "ip", "route", "show", "proto", "157").stdout


def test_every_pair_pings_over_the_overlay(daemons: dict[str, OverlaydProc]) -> None:
    full_matrix(daemons)
    assert len({d.subnet_env()["OVERLAY_SUBNET"] for d in daemons.values()}) == len(daemons)


def test_route_and_neighbour_deleted_by_hand_come_back(daemons: dict[str, OverlaydProc]) -> None:
    h1, h2 = daemons["h1"], daemons["h2"]
    subnet = h2.require_status()["subnet"]
    ns_run(h1.ns, "ip", "route", "del", subnet)
    ns_run(h1.ns, "ip", "neigh", "del", str(h2.overlay_ip()), "dev", "overlay.1")
    took = wait_until(lambda: subnet in routes(h1.ns), 5, "route restored")
    wait_until(lambda: h1.pings(h2), 5, "traffic restored")
    print(f"route restored after {took:.2f}s")


def test_malformed_lease_is_logged_and_ignored(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    h1 = daemons["h1"]
    before = h1.require_status()["reconciles"]
    etcdctl(world, "put", "/overlayd/network/subnets/10.244.250.0-24", "{not json")
    etcdctl(world, "put", "/overlayd/network/subnets/10.244.251.0-24", '{"PublicIP": 7}')
    try:
        wait_until(lambda: "ignoring malformed lease 10.244.251.0/24" in h1.log(), 10, "log")
        assert "ignoring malformed lease 10.244.250.0/24" in h1.log()
        assert h1.alive()
        assert "10.244.250.0" not in routes(h1.ns)
        assert h1.pings(daemons["h3"])
        etcdctl(world, "put", "/overlayd/network/subnets/10.244.252.0-24", "[]")
        wait_until(lambda: h1.require_status()["reconciles"] > before, 10, "reconciles go on")
        assert "(malformed)" in ctl(world, "leases", "list")
    finally:
        etcdctl(world, "del", "--prefix", "/overlayd/network/subnets/10.244.25")


def test_kill9_restart_keeps_subnet_and_others_keep_talking(
    daemons: dict[str, OverlaydProc],
) -> None:
    h1, h2, h3 = daemons["h1"], daemons["h2"], daemons["h3"]
    subnet = h1.subnet_env()["OVERLAY_SUBNET"]
    bg = Background(h2, h3)
    time.sleep(1)
    h1.kill9()
    time.sleep(1)
    h1.start().wait_ready()
    time.sleep(1)
    sent, received = bg.stop()
    assert h1.subnet_env()["OVERLAY_SUBNET"] == subnet
    assert sent > 20 and received == sent, f"h2 -> h3 lost {sent - received} of {sent}"
    assert h1.pings(h2)


def test_peer_removed_while_daemon_stopped_disappears_after_restart(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    h1, h3 = daemons["h1"], daemons["h3"]
    h3_subnet = h3.require_status()["subnet"]
    h3_ip = str(h3.overlay_ip())
    h1.terminate()
    # SIGTERM leaves the data plane in place
    assert h3_subnet in routes(h1.ns)
    assert h1.pings(h3)
    h3.kill9()
    ctl(world, "leases", "revoke", "h3")
    h1.start().wait_ready()
    wait_until(lambda: h3_subnet not in routes(h1.ns), 10, "stale route removed")
    neigh = ns_run(h1.ns, "ip", "neigh", "show", "dev", "overlay.1").stdout
    assert f"{h3_ip} " not in neigh
    fdb = ns_run(h1.ns, "bridge", "fdb", "show", "dev", "overlay.1").stdout
    assert f"dst {world.host('h3').ip} " not in fdb
    h3.start().wait_ready()
    assert h3.require_status()["subnet"] == h3_subnet  # its remembered subnet was still free
    wait_until(lambda: h1.pings(h3), 10, "h3 back")


def test_etcd_outage_keeps_traffic_and_new_host_joins_after(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    h1, h2 = daemons["h1"], daemons["h2"]
    bg = Background(h1, h2, interval=0.2)
    world.etcd.stop()
    time.sleep(30)
    assert all(d.alive() for d in daemons.values())
    world.etcd.start()
    world.etcd.wait_healthy()
    sent, received = bg.stop()
    assert sent > 100 and received == sent, f"lost {sent - received} of {sent} during the outage"
    h4 = daemons["h4"] = OverlaydProc(world, world.host("h4")).start()
    h4.wait_ready()
    wait_until(lambda: h1.pings(h4), 20, "h1 -> new host h4")
    wait_until(lambda: h4.pings(h2), 20, "new host h4 -> h2")


def test_two_daemons_race_for_the_last_subnet(world: World) -> None:
    prefix = "/race/network"
    ctl(world, "network", "init", "--network", "10.250.0.0/26", "--subnet-len", "28",
        "--subnet-min", "10.250.0.16", "--subnet-max", "10.250.0.16", "--vni", "2",
        "--backend", "vxlan", prefix=prefix)  # fmt: skip
    racers = [
        OverlaydProc(world, world.host(h), ("--etcd-prefix", prefix, "--node-name", f"racer-{h}",
                     "--probe-port", "8474"),
                     healthz_port=10300, tag="-racer")
        for h in ("h2", "h3")
    ]  # fmt: skip
    try:
        for r in racers:
            r.start()

        def settled() -> bool:
            won = sum("acquired subnet" in r.log() for r in racers)
            lost = sum("no free subnet left" in r.log() for r in racers)
            return won == 1 and lost == 1

        wait_until(settled, 20, "one winner, one exhausted")
        assert all(r.alive() for r in racers)  # the loser keeps retrying, no crash
        listing = ctl(world, "leases", "list", "-o", "json", prefix=prefix)
        assert listing.count('"subnet": "10.250.0.16/28"') == 1
    finally:
        for r in racers:
            r.kill9()
        for h in ("h2", "h3"):
            ns_run(world.host(h).ns.name, "ip", "link", "del", "overlay.2", check=False)
