"""overlayd end to end on one LAN: real etcd, real daemons in namespaces, real VXLAN."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import lanworld
from tests.daemons import BIN, OverlaydProc, ns_run

pytestmark = pytest.mark.root
PREFIX = "ovlan"


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check``; returns the seconds it took, fails after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pings(ns: str, dst: str, count: int = 2) -> bool:
    res = ns_run(ns, "ping", "-c", str(count), "-W", "1", "-i", "0.2", dst, check=False)
    return res.returncode == 0


class Background:
    """A long ping running while something happens; ``loss()`` after stopping it."""

    def __init__(self, ns: str, dst: str, interval: float = 0.1) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "ping", "-i", str(interval), "-W", "1", dst],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def loss(self) -> tuple[int, int]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        for line in out.splitlines():
            if "packets transmitted" in line:
                parts = line.split(",")
                return int(parts[0].split()[0]), int(parts[1].split()[0])
        raise AssertionError(f"no ping summary: {out[-500:]}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lanworld.LanWorld]:
    w = lanworld.build(PREFIX, tmp_path_factory.mktemp("lan"), n_hosts=3, nat_host=True)
    try:
        ctl(w, "network", "init", "--network", "10.244.0.0/16")
        yield w
    finally:
        lanworld.down(PREFIX)


def ctl(w: lanworld.LanWorld, *args: str) -> str:
    return ns_run(
        w.ns("h1"), str(BIN / "overlayctl"), "--etcd-endpoints", w.etcd_endpoint, *args
    ).stdout


@pytest.fixture(scope="module")
def daemons(world: lanworld.LanWorld) -> Iterator[dict[str, OverlaydProc]]:
    procs: dict[str, OverlaydProc] = {}
    for name in ("h1", "h2", "h3", "nat"):
        extra: tuple[str, ...] = ()
        if name == "nat":  # behind 1:1 NAT: peers must use its public address
            extra = ("--site", "natted", "--public-ip", lanworld.NAT_PUBLIC)
        procs[name] = OverlaydProc(
            world.ns(name), name, world.etcd_endpoint, world.workdir / name, extra
        ).start()
    try:
        for p in procs.values():
            p.wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.kill9()


def overlay_ip(d: OverlaydProc) -> str:
    return d.overlay_ip()


def routes(ns: str) -> str:
    return ns_run(ns, "ip", "route", "show", "proto", "157").stdout


def test_every_pair_pings_over_the_overlay(daemons: dict[str, OverlaydProc]) -> None:
    names = sorted(daemons)
    for src in names:
        for dst in names:
            if src != dst:
                target = overlay_ip(daemons[dst])
                wait_until(
                    lambda s=src, t=target: pings(daemons[s].ns, t, 1),
                    15,
                    f"{src} -> {dst} ({target})",
                )
    subnets = {d.subnet_env()["OVERLAY_SUBNET"] for d in daemons.values()}
    assert len(subnets) == len(daemons)


def test_route_deleted_by_hand_comes_back(daemons: dict[str, OverlaydProc]) -> None:
    h1, h2 = daemons["h1"], daemons["h2"]
    subnet = h2.status()["subnet"]  # type: ignore[index]
    ns_run(h1.ns, "ip", "route", "del", subnet)
    ns_run(h1.ns, "ip", "neigh", "del", overlay_ip(h2), "dev", "overlay.1")
    took = wait_until(lambda: subnet in routes(h1.ns), 5, "route restored")
    wait_until(lambda: pings(h1.ns, overlay_ip(h2), 1), 5, "traffic restored")
    print(f"route restored after {took:.2f}s")


def test_malformed_lease_is_logged_and_ignored(
    world: lanworld.LanWorld, daemons: dict[str, OverlaydProc]
) -> None:
    h1 = daemons["h1"]
    before = h1.status()["reconciles"]  # type: ignore[index]
    world.etcdctl("put", "/overlayd/network/subnets/10.244.250.0-24", "{not json")
    world.etcdctl(
        "put", "/overlayd/network/subnets/10.244.251.0-24", '{"PublicIP": 7, "BackendData": {}}'
    )
    try:
        wait_until(lambda: "ignoring malformed lease 10.244.251.0/24" in h1.log(), 10, "log")
        assert "ignoring malformed lease 10.244.250.0/24" in h1.log()
        assert h1.alive()
        assert "10.244.250.0" not in routes(h1.ns)
        assert pings(h1.ns, overlay_ip(daemons["h3"]))
        world.etcdctl("put", "/overlayd/network/subnets/10.244.252.0-24", "[]")
        wait_until(lambda: h1.status()["reconciles"] > before, 10, "reconciles go on")  # type: ignore[index]
        listing = ctl(world, "leases", "list")
        assert "(malformed)" in listing
    finally:
        world.etcdctl("del", "--prefix", "/overlayd/network/subnets/10.244.25")


def test_kill9_restart_keeps_subnet_and_others_keep_talking(
    daemons: dict[str, OverlaydProc],
) -> None:
    h1, h2, h3 = daemons["h1"], daemons["h2"], daemons["h3"]
    subnet = h1.subnet_env()["OVERLAY_SUBNET"]
    bg = Background(h2.ns, overlay_ip(h3))
    time.sleep(1)
    h1.kill9()
    time.sleep(1)
    h1.start().wait_ready()
    time.sleep(1)
    sent, received = bg.loss()
    assert h1.subnet_env()["OVERLAY_SUBNET"] == subnet
    assert sent > 20 and received == sent, f"h2 -> h3 lost {sent - received} of {sent}"
    assert pings(h1.ns, overlay_ip(h2))


def test_peer_removed_while_daemon_stopped_disappears_after_restart(
    world: lanworld.LanWorld, daemons: dict[str, OverlaydProc]
) -> None:
    h1, h3 = daemons["h1"], daemons["h3"]
    h3_subnet = h3.status()["subnet"]  # type: ignore[index]
    h1.terminate()
    # SIGTERM leaves the data plane in place
    assert h3_subnet in routes(h1.ns)
    assert pings(h1.ns, overlay_ip(h3))
    h3.kill9()
    ctl(world, "leases", "revoke", "h3")
    h1.start().wait_ready()
    wait_until(lambda: h3_subnet not in routes(h1.ns), 10, "stale route removed")
    neigh = ns_run(h1.ns, "ip", "neigh", "show", "dev", "overlay.1").stdout
    assert h3_subnet.split("/")[0] + " " not in neigh
    fdb = ns_run(h1.ns, "bridge", "fdb", "show", "dev", "overlay.1").stdout
    assert f"dst {world.host_ip('h3')} " not in fdb
    h3.start().wait_ready()
    assert h3.status()["subnet"] == h3_subnet  # type: ignore[index]
    wait_until(lambda: pings(h1.ns, overlay_ip(h3), 1), 10, "h3 back")


def test_tcp_over_vxlan_across_nat_with_checksum_offload(daemons: dict[str, OverlaydProc]) -> None:
    nat, h1 = daemons["nat"], daemons["h1"]
    offload = ns_run(nat.ns, "ethtool", "-k", "eth0").stdout
    assert "tx-checksumming: on" in offload  # the underlay keeps its default offload
    vx = ns_run(nat.ns, "ethtool", "-k", "overlay.1").stdout
    assert "tx-checksumming: off" in vx  # our fix for the flannel "63-second" bug
    fdb = ns_run(h1.ns, "bridge", "fdb", "show", "dev", "overlay.1").stdout
    assert f"dst {lanworld.NAT_PUBLIC} " in fdb  # h1 reaches it through the NAT
    nbytes = 20 * 1024 * 1024
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            h1.ns,
            str(BIN / "python"),
            "-c",
            "import socket\ns=socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{overlay_ip(h1)}', 5001)); s.listen(1); c,_=s.accept(); n=0\n"
            "while (b:=c.recv(1<<16)): n+=len(b)\nprint(n)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    t0 = time.monotonic()
    ns_run(
        nat.ns,
        str(BIN / "python"),
        "-c",
        f"import socket\nc=socket.create_connection(('{overlay_ip(h1)}', 5001), timeout=20)\n"
        f"c.sendall(b'x'*{nbytes}); c.close()",
        timeout=60,
    )
    out, _ = server.communicate(timeout=30)
    assert int(out.strip()) == nbytes
    assert time.monotonic() - t0 < 30


def test_etcd_outage_keeps_traffic_and_new_host_joins_after(
    world: lanworld.LanWorld, daemons: dict[str, OverlaydProc]
) -> None:
    h1, h2 = daemons["h1"], daemons["h2"]
    bg = Background(h1.ns, overlay_ip(h2), interval=0.2)
    world.stop_etcd()
    time.sleep(30)
    assert all(d.alive() for d in daemons.values())
    world.start_etcd()
    sent, received = bg.loss()
    assert sent > 100 and received == sent, f"lost {sent - received} of {sent} during the outage"
    world.add_lan_host("h4")
    h4 = OverlaydProc(world.ns("h4"), "h4", world.etcd_endpoint, world.workdir / "h4").start()
    daemons["h4"] = h4
    h4.wait_ready()
    wait_until(lambda: pings(h1.ns, overlay_ip(h4), 1), 20, "h1 -> new host h4")
    wait_until(lambda: pings(h4.ns, overlay_ip(h2), 1), 20, "new host h4 -> h2")


def test_two_daemons_race_for_the_last_subnet(world: lanworld.LanWorld, tmp_path: Path) -> None:
    prefix = "/race/network"
    ns_run(
        world.ns("h1"),
        str(BIN / "overlayctl"),
        "--etcd-endpoints",
        world.etcd_endpoint,
        "--etcd-prefix",
        prefix,
        "network",
        "init",
        "--network",
        "10.250.0.0/26",
        "--subnet-len",
        "28",
        "--subnet-min",
        "10.250.0.16",
        "--subnet-max",
        "10.250.0.16",
        "--vni",
        "2",
    )
    racers = [
        OverlaydProc(
            world.ns(h),
            f"racer-{h}",
            world.etcd_endpoint,
            tmp_path / h,
            ("--etcd-prefix", prefix),
            healthz_port=10300,
        )
        for h in ("h2", "h3")
    ]
    try:
        for r in racers:
            r.start()
        wait_until(
            lambda: (
                sum("acquired subnet" in r.log() for r in racers) == 1
                and sum("no free subnet left" in r.log() for r in racers) == 1
            ),
            20,
            "one winner, one exhausted",
        )
        assert all(r.alive() for r in racers)  # the loser keeps retrying, no crash
        listing = ns_run(
            world.ns("h1"),
            str(BIN / "overlayctl"),
            "--etcd-endpoints",
            world.etcd_endpoint,
            "--etcd-prefix",
            prefix,
            "leases",
            "list",
            "-o",
            "json",
        ).stdout
        assert listing.count('"subnet": "10.250.0.16/28"') == 1
    finally:
        for r in racers:
            r.kill9()
        for h in ("h2", "h3"):
            ns_run(world.ns(h), "ip", "link", "del", "overlay.2", check=False)
