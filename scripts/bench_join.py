"""How long a newly joined node takes to have verified paths to every live peer.

Builds the multi-cloud test world, runs overlayd on every host but one with no
--public-ip (so NAT'd hosts discover their public addresses), waits until they have
settled, then starts the last host's daemon and times: ready (lease + first reconcile),
every peer's chosen path verified by probes, and its own public address confirmed. Runs
``--runs`` times (a fresh world each), prints each run and the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import BIN, OverlaydProc, ns_run, wait_until
from tests.lab.world import build_multicloud_world, destroy


def verified_peers(d: OverlaydProc) -> int:
    return sum(p["address"] in p["verified"] for p in d.peers().values())


def _settled(d: OverlaydProc, expect: int) -> bool:
    return verified_peers(d) == expect


def _publishes(d: OverlaydProc, public: str) -> bool:
    return public in d.require_status()["public_ips"]


def one_run(newcomer: str, index: int) -> dict[str, float]:
    world = build_multicloud_world(f"ovbj{index}-")
    try:  # plain VXLAN, as the figures this compares with
        ns_run(world.hosts[0].ns.name, str(BIN / "overlayctl"), "--etcd-endpoints",
               world.etcd_endpoint, "network", "init", "--network", "10.244.0.0/16",
               "--backend", "vxlan")  # fmt: skip
        others = [h for h in world.hosts if h.name != newcomer]
        daemons = [OverlaydProc(world, h, public_ip=False).start() for h in others]
        for d in daemons:
            d.wait_ready()
        for d in daemons:
            wait_until(partial(_settled, d, len(others) - 1), 60, f"{d.node} settled")
        new = OverlaydProc(world, world.host(newcomer), public_ip=False)
        t0 = time.monotonic()
        new.start()
        new.wait_ready(timeout=60)
        ready = time.monotonic() - t0
        wait_until(lambda: verified_peers(new) == len(others), 60, "all paths verified")
        verified = time.monotonic() - t0
        public = str(world.host(newcomer).public)
        wait_until(partial(_publishes, new, public), 60, "public address confirmed")
        discovered = time.monotonic() - t0
        return {"ready_s": ready, "verified_s": verified, "public_ip_s": discovered}
    finally:
        destroy(world, remove_workdir=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--newcomer", default="a3", help="the host that joins last")
    args = parser.parse_args()
    rows = []
    for i in range(args.runs):
        row = one_run(args.newcomer, i)
        rows.append(row)
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    for key in ("ready_s", "verified_s", "public_ip_s"):
        values = [r[key] for r in rows]
        print(f"{key:>12}: median {statistics.median(values):.2f}s, max {max(values):.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
