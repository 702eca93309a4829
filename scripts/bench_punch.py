"""Hole-punching benchmark (issue 11).

1. Time to a punched pair: in a fresh multi-cloud world per sample (cloud A and cloud B
   behind masquerade, the public host ``bare``), overlayd starts on bare, a1 and b1 at
   once; the time from the start until a1 pings b1's overlay address (a punched path:
   checked in ``overlayctl peers``). ``--runs`` samples; median and worst.
2. TCP throughput over WireGuard, a1 -> b1, 50 MB: the punched pair of the last sample,
   against a direct pair of a world of two 1:1-NAT clouds (``--public-ip`` given).

  sudo .venv/bin/python scripts/bench_punch.py [--runs 5] [--backend wireguard]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import OverlaydProc, init_network, running
from tests.lab.world import (
    NatMode,
    World,
    build_multicloud_world,
    destroy,
    ping,
    tcp_transfer,
)

HOSTS = ("bare", "a1", "b1")
TIMEOUT = 60.0
NBYTES = 50 * 2**20


def _started(world: World, public_ip: bool) -> dict[str, OverlaydProc]:
    return {n: OverlaydProc(world, world.host(n), public_ip=public_ip).start() for n in HOSTS}


def _node_line(d: OverlaydProc) -> float:
    """UNIX time of the daemon's first line about its node (its start-up is done)."""
    for line in d.log_file.read_text().splitlines():
        if f"overlayd: node {d.node} (" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise SystemExit(f"no node line in {d.node}'s log")


def time_to_punched(index: int, backend: str) -> tuple[float, float, float]:
    """Seconds from start until a1 pings b1, the same from the later of a1's and b1's
    first node line (Python start-up excluded); a1 -> b1 TCP Mbit/s over that path."""
    world = build_multicloud_world(f"ovbp{index}-", nat_a="masquerade", nat_b="masquerade")
    procs: dict[str, OverlaydProc] = {}
    try:
        init_network(world, backend)
        t0 = time.monotonic()
        procs = _started(world, public_ip=False)
        a1, b1 = procs["a1"], procs["b1"]
        while time.monotonic() - t0 < TIMEOUT:
            ready = b1.subnet_file.exists() and a1.subnet_file.exists()
            if ready and ping(a1.host.ns, b1.overlay_ip(), 1, timeout=0.2).ok:
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"sample {index}: a1 never pinged b1:\n{a1.log()}")
        took, pinged = time.monotonic() - t0, time.time()
        kind = a1.peers()["b1"]["kind"]
        if kind != "punched":
            raise SystemExit(f"sample {index}: a1's path to b1 is {kind}, not punched")
        started = max(_node_line(a1), _node_line(b1))
        return took, pinged - started, _mbit(a1, b1)
    finally:
        for p in procs.values():
            p.kill9()
        destroy(world, remove_workdir=True)


def direct_mbit(backend: str) -> float:
    """a1 -> b1 TCP Mbit/s between two 1:1-NAT clouds (a direct public path)."""
    nat: NatMode = "one-to-one"
    world = build_multicloud_world("ovbpd-", nat_a=nat, nat_b=nat)
    try:
        init_network(world, backend)
        with running(world, HOSTS) as procs:
            a1, b1 = procs["a1"], procs["b1"]
            deadline = time.monotonic() + TIMEOUT
            while not a1.pings(b1) and time.monotonic() < deadline:
                time.sleep(0.1)
            return _mbit(a1, b1)
    finally:
        destroy(world, remove_workdir=True)


def _mbit(src: OverlaydProc, dst: OverlaydProc) -> float:
    return tcp_transfer(src.host.ns, dst.host.ns, dst.overlay_ip(), NBYTES).mbit_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", default="wireguard")
    args = parser.parse_args()
    samples, after, rates = [], [], []
    for i in range(args.runs):
        took, since, mbit = time_to_punched(i, args.backend)
        samples.append(took)
        after.append(since)
        rates.append(mbit)
        print(f"sample {i}: a1 pings b1 (punched) {took:.2f} s after start, {since:.2f} s "
              f"after both daemons were up; {mbit:.0f} Mbit/s")  # fmt: skip
    print(
        f"time to a punched pair: median {statistics.median(samples):.2f} s from start "
        f"(worst {max(samples):.2f}), {statistics.median(after):.2f} s from both daemons up "
        f"(worst {max(after):.2f}); {args.runs} runs, backend {args.backend}"
    )
    direct = direct_mbit(args.backend)
    print(
        f"TCP a1 -> b1, {NBYTES >> 20} MB: punched median {statistics.median(rates):.0f} "
        f"Mbit/s, 1:1-NAT direct {direct:.0f} Mbit/s"
    )


if __name__ == "__main__":
    main()
