"""Relay benchmark (issue 11). Needs root: it builds test worlds in network namespaces.

1. Time to a relayed pair: in a fresh multi-cloud world per sample (cloud A masquerade,
   cloud B masquerade with random ports, the public host relays), a1, b1 and the bare host
   start at once; the time until a1 first pings b1's overlay address (through the relay).
   ``--runs`` samples; median and worst.
   Also the time from the later of a1's and b1's first log line: process start-up
   (Python imports) is most of the rest on a loaded machine.
2. TCP throughput (iperf3) in the last of those worlds, a1 -> b1 through the relay, and,
   in a 1:1-NAT world (both clouds with elastic IPs) of the same run, a1 -> b1 directly.
3. CPU of the relay host per 100 Mbit/s relayed: the CPU time of every process in the
   bare host's namespace (overlayd and its wireguard-go) during the relayed transfer,
   per second and per 100 Mbit/s. Kernel time in softirq (forwarding itself) is not
   attributed to a process and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import OverlaydProc, init_network, running, wait_until
from tests.lab.world import World, build_multicloud_world, destroy, ping

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


def _log_start(proc: OverlaydProc) -> float:
    """Wall-clock time of the daemon's first log line: its Python is up."""
    stamp, rest = proc.log_file.read_text().split(",", 1)  # 2026-12-01 19:06:40,547 ...
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(rest[:3]) / 1000


def time_to_relayed_ping(world: World) -> tuple[float, float, dict[str, OverlaydProc]]:
    """Start a1, b1, bare; seconds until a1 pings b1, from the spawn and from the first
    log line of the later of a1 and b1 (the daemons are left running)."""
    t0 = time.monotonic()
    procs = {n: OverlaydProc(world, world.host(n)).start() for n in ("a1", "b1", "bare")}
    a1, b1 = procs["a1"], procs["b1"]
    wait_until(lambda: b1.subnet_file.exists(), 60, "b1's subnet file", interval=0.05)
    wait_until(lambda: ping(a1.host.ns, b1.overlay_ip(), 1, timeout=0.2).ok, 60, "a1 -> b1")
    took, now = time.monotonic() - t0, time.time()
    up = max(_log_start(a1), _log_start(b1))
    return took, now - up, procs


def throughput(procs: dict[str, OverlaydProc], nbytes: int) -> float:
    """iperf3 from a1 to b1's overlay address, ``nbytes``: Mbit/s the receiver got."""
    a1, b1 = procs["a1"], procs["b1"]
    server = b1.host.ns.popen(["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = a1.host.ns.run(
            ["iperf3", "-c", str(b1.overlay_ip()), "-p", "5201", "-n", str(nbytes), "-J"],
            timeout=180,
        ).stdout
    finally:
        server.kill()
        server.wait()
    bits: float = json.loads(out)["end"]["sum_received"]["bits_per_second"]
    return bits / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mbytes", type=int, default=100, help="TCP transfer size")
    args = parser.parse_args()
    nbytes = args.mbytes * 2**20
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    times: list[float] = []
    from_up: list[float] = []
    relayed = cpu_per_s = 0.0
    for i in range(args.runs):
        world = _relayed_world(i, workdir)
        try:
            took, since_up, procs = time_to_relayed_ping(world)
            times.append(took)
            from_up.append(since_up)
            try:
                assert procs["a1"].peers()["b1"].get("relay") == "bare", "a1 -> b1 not relayed"
                if i == args.runs - 1:
                    ns = world.host("bare").ns.name
                    cpu0, t0 = _cpu_of_namespace(ns), time.monotonic()
                    relayed = throughput(procs, nbytes)
                    cpu_per_s = (_cpu_of_namespace(ns) - cpu0) / (time.monotonic() - t0)
            finally:
                for p in procs.values():
                    p.kill9()
        finally:
            destroy(world)
        print(
            f"run {i + 1}: relayed a1 -> b1 pings {took:.2f} s after the spawn, "
            f"{since_up:.1f} s after both daemons' first log line",
            flush=True,
        )
    direct_world = build_multicloud_world(_prefix(99), workdir=workdir / "direct")
    try:
        init_network(direct_world, "wireguard")
        with running(direct_world, ("a1", "b1")) as procs:
            wait_until(lambda: procs["a1"].pings(procs["b1"]), 30, "a1 -> b1 direct")
            direct = throughput(procs, nbytes)
    finally:
        destroy(direct_world)
    print(
        f"time to a relayed ping: median {statistics.median(times):.2f} s, "
        f"worst {max(times):.2f} s over {len(times)} runs from the spawn; median "
        f"{statistics.median(from_up):.1f} s from both daemons' first log line (the rest is "
        f"Python starting up)"
    )
    print(f"TCP a1 -> b1: relayed {relayed:.0f} Mbit/s, 1:1-NAT direct {direct:.0f} Mbit/s")
    print(
        f"relay host CPU: {cpu_per_s * 100:.0f} % of a core at {relayed:.0f} Mbit/s = "
        f"{cpu_per_s * 100 * 100 / max(relayed, 1e-9):.0f} % of a core per 100 Mbit/s relayed"
    )


if __name__ == "__main__":
    main()
