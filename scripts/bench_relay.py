"""Relay benchmark (issue 11). Needs root: it builds test worlds in network namespaces.

1. Time to a relayed pair: in a fresh multi-cloud world per sample (cloud A masquerade,
   cloud B masquerade with random ports, the public host relays), a1, b1 and the bare host
   start at once; the time until a1 first pings b1's overlay address (through the relay).
   ``--runs`` samples; median and worst.
2. TCP throughput in the last of those worlds, a1 -> b1 through the relay, and, in a
   1:1-NAT world (both clouds with elastic IPs) of the same run, a1 -> b1 directly.
3. CPU of the relay host per 100 Mbit/s relayed: the CPU time of every process in the
   bare host's namespace (overlayd and its wireguard-go) during the relayed transfer,
   per second and per 100 Mbit/s. Kernel time in softirq (forwarding itself) is not
   attributed to a process and not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import OverlaydProc, init_network, running, wait_until
from tests.lab.world import World, build_multicloud_world, destroy, ping, tcp_transfer

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _prefix(i: int) -> str:
    return f"ovw-{os.getpid()}-b{i}-"


def _cpu_of_namespace(ns: str) -> float:
    """CPU seconds (user + system) so far of every process in namespace ``ns``."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    total = 0
    for pid in pids.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def _relayed_world(i: int, workdir: Path) -> World:
    world = build_multicloud_world(
        _prefix(i), nat_a="masquerade", nat_b="masquerade-random", workdir=workdir / f"r{i}"
    )
    init_network(world, "wireguard")
    return world


def time_to_relayed_ping(world: World) -> tuple[float, dict[str, OverlaydProc]]:
    """Start a1, b1, bare; seconds until a1 pings b1 (the daemons are left running)."""
    procs = {n: OverlaydProc(world, world.host(n)).start() for n in ("a1", "b1", "bare")}
    t0 = time.monotonic()
    for p in procs.values():
        p.wait_ready()
    a1, b1 = procs["a1"], procs["b1"]
    wait_until(lambda: ping(a1.host.ns, b1.overlay_ip(), 1, timeout=0.3).ok, 60, "a1 -> b1")
    return time.monotonic() - t0, procs


def throughput(world: World, procs: dict[str, OverlaydProc], nbytes: int) -> float:
    a1, b1 = procs["a1"], procs["b1"]
    return tcp_transfer(a1.host.ns, b1.host.ns, b1.overlay_ip(), nbytes, timeout=120).mbit_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mbytes", type=int, default=100, help="TCP transfer size")
    args = parser.parse_args()
    nbytes = args.mbytes * 2**20
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    times: list[float] = []
    relayed = cpu_per_s = 0.0
    for i in range(args.runs):
        world = _relayed_world(i, workdir)
        try:
            took, procs = time_to_relayed_ping(world)
            times.append(took)
            try:
                assert procs["a1"].peers()["b1"].get("relay") == "bare", "a1 -> b1 not relayed"
                if i == args.runs - 1:
                    ns = world.host("bare").ns.name
                    cpu0, t0 = _cpu_of_namespace(ns), time.monotonic()
                    relayed = throughput(world, procs, nbytes)
                    cpu_per_s = (_cpu_of_namespace(ns) - cpu0) / (time.monotonic() - t0)
            finally:
                for p in procs.values():
                    p.kill9()
        finally:
            destroy(world)
        print(f"run {i + 1}: relayed a1 -> b1 pings {took:.2f} s after start", flush=True)
    direct_world = build_multicloud_world(_prefix(99), workdir=workdir / "direct")
    try:
        init_network(direct_world, "wireguard")
        with running(direct_world, ("a1", "b1")) as procs:
            wait_until(lambda: procs["a1"].pings(procs["b1"]), 30, "a1 -> b1 direct")
            direct = throughput(direct_world, procs, nbytes)
    finally:
        destroy(direct_world)
    print(
        f"time to a relayed ping: median {statistics.median(times):.2f} s, "
        f"worst {max(times):.2f} s over {len(times)} runs"
    )
    print(f"TCP a1 -> b1: relayed {relayed:.0f} Mbit/s, 1:1-NAT direct {direct:.0f} Mbit/s")
    print(
        f"relay host CPU: {cpu_per_s * 100:.0f} % of a core at {relayed:.0f} Mbit/s = "
        f"{cpu_per_s * 100 * 100 / max(relayed, 1e-9):.0f} % of a core per 100 Mbit/s relayed"
    )


if __name__ == "__main__":
    main()
