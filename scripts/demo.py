"""The demo behind ./scripts/demo: the multi-cloud world of the tests, one flat overlay.

Cloud A (three hosts behind 1:1 NAT), cloud B (two hosts behind 1:1 NAT), one bare-metal
host with a public address, etcd on the "internet" — all in network namespaces. The network
uses ``overlayctl network init``'s default backend, ``vxlan+wireguard``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import BIN, OverlaydProc, ns_run
from tests.lab.netns import cleanup
from tests.lab.world import build_multicloud_world

PREFIX = "ovdemo-"
WORKDIR = Path(__file__).resolve().parent.parent / ".demo"


def up() -> int:
    down()  # a fresh network: no namespaces, etcd data or state dirs of an earlier run
    print("building the demo world: cloud A (3 hosts, 1:1 NAT), cloud B (2 hosts, 1:1 NAT),")
    print("a bare-metal host with a public address, etcd on the internet …")
    world = build_multicloud_world(PREFIX, workdir=WORKDIR)
    print(world.describe())
    first = world.hosts[0].ns.name
    ctl = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint]
    print(ns_run(first, *ctl, "network", "init", "--network", "10.244.0.0/16").stdout)
    print("backend vxlan+wireguard (overlayctl's default): plain VXLAN inside each site,")
    print("WireGuard between sites, so overlay traffic crossing the internet is encrypted\n")
    daemons = [OverlaydProc(world, host).start() for host in world.hosts]
    for d in daemons:
        d.wait_ready()
    time.sleep(1)
    print(ns_run(first, *ctl, "leases", "list").stdout)
    print("overlay reachability (ping from row to column's overlay address):")
    print("      " + "".join(f"{d.node:>6}" for d in daemons))
    failures = 0
    for src in daemons:
        cells = []
        for dst in daemons:
            if dst is src:
                cells.append("-")
                continue
            ok = src.pings(dst, 2)
            failures += not ok
            cells.append("ok" if ok else "FAIL")
        print(f"{src.node:>6}" + "".join(f"{c:>6}" for c in cells))
    peers = ns_run(first, str(BIN / "overlayctl"), "peers").stdout
    print(f"\npaths {world.hosts[0].name} chose, verified by probes (overlayctl peers):\n{peers}")
    plan = ns_run(first, *ctl, "plan", "--node", world.hosts[0].name).stdout
    print(f"\nplan of {world.hosts[0].name} (what its daemon programs):\n{plan}")
    print(f"logs: {WORKDIR}/overlayd/<host>/overlayd.log; try: ip netns exec {first} ip route")
    print("remove everything with: ./scripts/demo down")
    return 1 if failures else 0


def down() -> int:
    cleanup(PREFIX)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    print("demo network removed")
    return 0


if __name__ == "__main__":
    action = sys.argv[1] if len(sys.argv) > 1 else "up"
    if action not in ("up", "down"):
        print(f"usage: {sys.argv[0]} [up|down]", file=sys.stderr)
        sys.exit(2)
    sys.exit(up() if action == "up" else down())
