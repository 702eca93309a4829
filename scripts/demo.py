"""The demo behind ./scripts/demo: a LAN of hosts plus one behind 1:1 NAT, all on one overlay."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import lanworld
from tests.daemons import BIN, OverlaydProc, ns_run

PREFIX = "ovdemo"
WORKDIR = Path(__file__).resolve().parent.parent / ".demo"


def up() -> int:
    print("building the demo network: etcd, hosts h1-h3 on a LAN, host 'nat' behind 1:1 NAT …")
    world = lanworld.build(PREFIX, WORKDIR, n_hosts=3, nat_host=True)
    ctl = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint]
    print(ns_run(world.ns("h1"), *ctl, "network", "init", "--network", "10.244.0.0/16").stdout)
    daemons = []
    for name in ("h1", "h2", "h3", "nat"):
        extra: tuple[str, ...] = ()
        if name == "nat":
            extra = ("--site", "natted", "--public-ip", lanworld.NAT_PUBLIC)
        daemons.append(
            OverlaydProc(world.ns(name), name, world.etcd_endpoint, WORKDIR / name, extra).start()
        )
    for d in daemons:
        d.wait_ready()
    time.sleep(1)
    print(ns_run(world.ns("h1"), *ctl, "leases", "list").stdout)
    ips = {d.node: d.overlay_ip() for d in daemons}
    print("overlay reachability (ping from row to column's overlay address):")
    names = [d.node for d in daemons]
    print("        " + "".join(f"{n:>8}" for n in names))
    failures = 0
    for src in daemons:
        cells = []
        for dst in names:
            if dst == src.node:
                cells.append("-")
                continue
            ok = (
                ns_run(
                    src.ns, "ping", "-c", "2", "-W", "1", "-i", "0.2", ips[dst], check=False
                ).returncode
                == 0
            )
            failures += not ok
            cells.append("ok" if ok else "FAIL")
        print(f"{src.node:>8}" + "".join(f"{c:>8}" for c in cells))
    print(
        "\nplan of h1 (what its daemon programs):\n"
        + ns_run(world.ns("h1"), *ctl, "plan", "--node", "h1").stdout
    )
    print(f"logs: {WORKDIR}/<host>/overlayd.log; try: ip netns exec {PREFIX}-h1 ip route")
    print("remove everything with: ./scripts/demo down")
    return 1 if failures else 0


def down() -> int:
    lanworld.down(PREFIX)
    print("demo network removed")
    return 0


if __name__ == "__main__":
    action = sys.argv[1] if len(sys.argv) > 1 else "up"
    if action not in ("up", "down"):
        print(f"usage: {sys.argv[0]} [up|down]", file=sys.stderr)
        sys.exit(2)
    sys.exit(up() if action == "up" else down())
