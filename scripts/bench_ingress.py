"""VXLAN ingress filter benchmark (issue 9).

(a) Sets: in a namespace of its own, the ingress policy of N synthetic VXLAN peers (those
    of scripts/bench.py) written whole with nft (planning + rendering + nft), the update
    after one lease change (a peer moves to another address: planner ``update`` + one
    ``nft -f`` of element changes; median and max over 50), and the read-back of the
    resync tick.
(b) Flood: a real daemon (``vxlan``) in the LAN world; from the other host (not a peer),
    RATE VXLAN datagrams per second for SECONDS hit its VXLAN port. Reports the daemon's
    CPU during the flood against idle, the filter's drop counter and what reached the
    overlay device.

Usage: python scripts/bench_ingress.py [N] [--rate 5000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import lease_for

from tests.daemons import BIN, ns_run
from tests.lab.netns import PYTHON, cleanup, create_namespace, tool
from tests.lab.world import build_lan_world, destroy

PREFIX = "ovbench-ing-"
CHANGES = 50


# -- (a) inner: runs inside a namespace of its own ----------------------------------------


def sets_inner(n: int) -> dict[str, float]:
    from overlayd.dataplane.ingress_nft import IngressTable
    from overlayd.planning.ingress import IngressPlanner
    from overlayd.values.lease import LeaseRecord
    from tests.builders import guessed_paths

    me: LeaseRecord = lease_for(n + 1)
    leases = {r.subnet: r for r in (lease_for(i) for i in range(1, n + 1))}
    paths = guessed_paths(me, leases)
    planner, table = IngressPlanner(), IngressTable()
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    policy, delta = planner.plan(8472, "overlay.1", leases, paths)
    t1 = time.perf_counter()
    table.apply(policy, delta, None)
    t2 = time.perf_counter()
    out["full_plan_ms"], out["full_nft_ms"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
    out["full_total_ms"] = (t2 - t0) * 1e3
    out["sources"], out["pairs"] = len(policy.sources), len(policy.pairs)
    t0 = time.perf_counter()
    unchanged = planner.plan(8472, "overlay.1", leases, paths)
    out["full_replan_unchanged_ms"] = (time.perf_counter() - t0) * 1e3
    assert not unchanged[1]
    plan_ms, total_ms = [], []
    for i in range(CHANGES):
        subnet = list(leases)[i * 7 % n]
        moved = replace(leases[subnet], public_ips=(IPv4Address(f"203.0.113.{i + 1}"),))
        leases[subnet] = moved
        base = planner.policy
        t0 = time.perf_counter()
        update = planner.update(8472, "overlay.1", leases, paths, {subnet})
        assert update is not None and update[1]
        t1 = time.perf_counter()
        table.apply(*update, base)
        t2 = time.perf_counter()
        plan_ms.append((t1 - t0) * 1e3)
        total_ms.append((t2 - t0) * 1e3)
    out["update_plan_p50_ms"] = statistics.median(plan_ms)
    out["update_total_p50_ms"] = statistics.median(total_ms)
    out["update_total_max_ms"] = max(total_ms)
    t0 = time.perf_counter()
    assert table.verify()
    out["readback_ms"] = (time.perf_counter() - t0) * 1e3
    table.remove()
    return out


def bench_sets(n: int) -> dict[str, float]:
    ns = create_namespace(f"{PREFIX}sets")
    try:
        proc = ns.run([PYTHON, __file__, "sets-inner", str(n)], timeout=600)
        result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result
    finally:
        cleanup(PREFIX)


# -- (b) a daemon under a forged VXLAN flood ----------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _daemon_cpu(pid: int, seconds: float) -> float:
    c0, w0 = _cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return 100 * (_cpu_seconds(pid) - c0) / (time.perf_counter() - w0)


def bench_flood(rate: int, seconds: float) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="overlayd-bench-ingress-"))
    world = build_lan_world(PREFIX, 2, workdir=workdir)
    h1, h2 = world.host("h1"), world.host("h2")
    out: dict[str, float] = {}
    daemon = None
    try:
        ns_run(h1.ns.name, str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint,
               "network", "init", "--network", "10.244.0.0/16", "--backend", "vxlan")  # fmt: skip
        with open(workdir / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(world.overlayd_argv(h1, "--healthz-port", "10256"),
                                      stdout=log, stderr=log)  # fmt: skip
        deadline = time.monotonic() + 60
        while "ingress filter" not in (workdir / "daemon.log").read_text():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError(f"daemon not ready: {(workdir / 'daemon.log').read_text()}")
            time.sleep(0.2)
        pid = daemon.pid  # ip netns exec execs overlayd: this is the daemon itself
        time.sleep(2)
        out["idle_cpu_pct"] = _daemon_cpu(pid, seconds)
        rx0 = int(ns_run(h1.ns.name, "cat", "/sys/class/net/overlay.1/statistics/rx_packets")
                  .stdout)  # fmt: skip
        flood = h2.ns.popen(tool("vxlan_flood", str(h1.ip), str(rate), str(seconds)),
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
        out["flood_cpu_pct"] = _daemon_cpu(pid, seconds)
        sent, _ = flood.communicate(timeout=seconds + 30)
        out["sent"] = int(sent.strip())
        out["rate_pps"] = out["sent"] / seconds
        table = ns_run(h1.ns.name, "nft", "list", "table", "inet", "overlayd_ingress").stdout
        drops = re.search(r"udp dport 8472 .* counter packets (\d+)", table)
        out["dropped_by_filter"] = int(drops.group(1)) if drops else -1
        rx1 = int(ns_run(h1.ns.name, "cat", "/sys/class/net/overlay.1/statistics/rx_packets")
                  .stdout)  # fmt: skip
        out["reached_overlay_device"] = rx1 - rx0
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait()
        destroy(world)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    sets = bench_sets(args.n)
    print(json.dumps({"n": args.n, **sets}, sort_keys=True), flush=True)
    flood = bench_flood(args.rate, args.seconds)
    print(json.dumps(flood, sort_keys=True), flush=True)
    print()
    print(
        f"{args.n} peers ({sets['sources']:.0f} sources, {sets['pairs']:.0f} inner prefixes): "
        f"full write {sets['full_total_ms']:.0f} ms (plan {sets['full_plan_ms']:.1f}, "
        f"nft {sets['full_nft_ms']:.0f}); one lease change {sets['update_total_p50_ms']:.1f} ms "
        f"p50 / {sets['update_total_max_ms']:.1f} max (plan {sets['update_plan_p50_ms']:.2f}); "
        f"unchanged full replan {sets['full_replan_unchanged_ms']:.1f} ms; "
        f"read-back {sets['readback_ms']:.1f} ms"
    )
    print(
        f"flood {flood['rate_pps']:.0f} pkt/s for {args.seconds:.0f} s: daemon CPU "
        f"{flood['flood_cpu_pct']:.2f}% (idle {flood['idle_cpu_pct']:.2f}%); dropped by the "
        f"filter {flood['dropped_by_filter']:.0f} of {flood['sent']:.0f}; reached the overlay "
        f"device {flood['reached_overlay_device']:.0f}"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "sets-inner":
        print(json.dumps(sets_inner(int(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
