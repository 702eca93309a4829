"""Issue 6: hybrid topology in the multi-cloud world — one elected gateway per site.

Failover is measured from the traffic itself: a member of cloud A pings a host of cloud
B every 50 ms through its gateway while the gateway is killed or stops forwarding.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemons import BIN, Background, OverlaydProc, ns_run, wait_until
from tests.lab.world import World, build_multicloud_world, destroy

pytestmark = pytest.mark.root
HOSTS = ("a1", "a2", "a3", "b1", "b2", "bare")
INTERVAL = 0.05


def init_gateway_network(w: World) -> None:
    ns_run(w.host("a1").ns.name, str(BIN / "overlayctl"), "--etcd-endpoints", w.etcd_endpoint,
           "network", "init", "--network", "10.244.0.0/16", "--backend", "vxlan+wireguard",
           "--topology", "gateway")  # fmt: skip


def start_all(w: World) -> dict[str, OverlaydProc]:
    procs = {n: OverlaydProc(w, w.host(n)).start() for n in HOSTS}
    for p in procs.values():
        p.wait_ready()
    return procs


def gateway_of(w: World, site: str) -> str | None:
    key = f"/overlayd/network/gw/site/{site}"
    argv = ["etcdctl", "--endpoints", w.etcd_endpoint, "get", key, "--print-value-only"]
    out = w.etcd_ns.run(argv).stdout
    return json.loads(out)["Node"] if out.strip() else None


def wireguard_peers(d: OverlaydProc) -> list[str]:
    links = ns_run(d.ns, "ip", "-o", "link", "show").stdout
    dev = next(part.split("@")[0] for part in links.split() if part.startswith("ovwg"))
    return ns_run(d.ns, "wg", "show", dev.rstrip(":"), "peers").stdout.split()


def full_matrix(daemons: dict[str, OverlaydProc]) -> None:
    for src, a in daemons.items():
        for dst, b in daemons.items():
            if src != dst:
                wait_until(lambda a=a, b=b: a.pings(b), 15, f"{src} -> {dst}")


@pytest.fixture(scope="module")
def world(
    prefix_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    w = build_multicloud_world(prefix_factory(), workdir=tmp_path_factory.mktemp("gw"))
    try:
        init_gateway_network(w)
        yield w
    finally:
        destroy(w)


@pytest.fixture(scope="module")
def daemons(world: World) -> Iterator[dict[str, OverlaydProc]]:
    procs = start_all(world)
    try:
        for site in ("cloud-a", "cloud-b", "bare"):
            wait_until(lambda s=site: gateway_of(world, s) is not None, 10, f"{site} gateway")
        yield procs
    finally:
        for p in procs.values():
            p.kill9()


def test_full_matrix_through_gateways(daemons: dict[str, OverlaydProc]) -> None:
    full_matrix(daemons)


def test_only_gateways_hold_wireguard_peers(world: World, daemons: dict[str, OverlaydProc]) -> None:
    gateways = {gateway_of(world, s) for s in ("cloud-a", "cloud-b", "bare")}
    for name, d in daemons.items():
        peers = wireguard_peers(d)
        if name in gateways:
            assert len(peers) == 2, f"gateway {name}: {peers}"  # the two other sites' gateways
        else:
            assert peers == [], f"member {name} holds WireGuard peers {peers}"
        assert d.status()["role"] == ("gateway" if name in gateways else "member")


def outage(
    world: World, daemons: dict[str, OverlaydProc], break_gateway: Callable[[str], None]
) -> tuple[str, str, float]:
    """Break cloud A's gateway while a member pings b1; (old, new gateway, seconds lost)."""
    old = gateway_of(world, "cloud-a")
    assert old is not None
    member = next(n for n in ("a1", "a2", "a3") if n != old)
    bg = Background(daemons[member], daemons["b1"], interval=INTERVAL)
    time.sleep(1)
    break_gateway(old)
    wait_until(lambda: gateway_of(world, "cloud-a") not in (None, old), 15, "a new gateway")
    wait_until(lambda: daemons[member].pings(daemons["b1"]), 15, "traffic through it")
    time.sleep(1)
    sent, received = bg.stop()
    new = gateway_of(world, "cloud-a")
    assert new is not None
    return old, new, (sent - received) * INTERVAL


def test_gateway_that_stops_forwarding_is_replaced(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    def drop_forwarded(name: str) -> None:
        daemons[name].host.ns.nft(
            "table inet ovdrop {\n chain forwarding {\n"
            "  type filter hook forward priority 0; policy drop;\n }\n}\n"
        )

    old, new, lost = outage(world, daemons, drop_forwarded)
    print(f"silent drop: gateway {old} -> {new}, traffic lost for ~{lost:.1f}s")
    assert lost <= 10.0
    assert daemons[old].alive()  # it kept running (and kept its etcd lease) all along
    # the old gateway stops dropping: no flap-back, the new one stays
    daemons[old].host.ns.run(["nft", "delete", "table", "inet", "ovdrop"])
    time.sleep(3)
    assert gateway_of(world, "cloud-a") == new


def test_killed_gateway_is_replaced_within_5s_and_no_flap_back(
    world: World, daemons: dict[str, OverlaydProc]
) -> None:
    def kill_host(name: str) -> None:  # the daemon and its wireguard-go: the host is gone
        daemons[name].kill9()
        daemons[name].host.ns.run(["pkill", "-9", "-f", "wireguard-go"], check=False)

    old, new, lost = outage(world, daemons, kill_host)
    print(f"kill -9: gateway {old} -> {new}, traffic lost for ~{lost:.1f}s")
    assert lost <= 5.0
    daemons[old].start().wait_ready()
    time.sleep(3)
    assert gateway_of(world, "cloud-a") == new  # the returning node does not take over
    full_matrix(daemons)


def test_masquerade_only_site_works_through_its_gateway(
    prefix_factory: Callable[[], str], tmp_path: Path
) -> None:
    w = build_multicloud_world(prefix_factory(), masq_only_b=True, workdir=tmp_path / "mq")
    procs: dict[str, OverlaydProc] = {}
    try:
        init_gateway_network(w)
        procs = start_all(w)
        wait_until(lambda: gateway_of(w, "cloud-b") is not None, 10, "cloud-b gateway")
        full_matrix(procs)
    finally:
        for p in procs.values():
            p.kill9()
        destroy(w)
