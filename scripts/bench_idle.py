#!/usr/bin/env python3
"""What an idle overlayd costs: CPU, RSS and probe packets per daemon in the 6-host world.

Builds the multi-cloud test world (tests/lab/world.py), initialises the network with
``--backend`` (vxlan, wireguard or vxlan+wireguard), runs overlayd on all six hosts with the
default resync interval (30 s), waits until every daemon has a verified path to every peer,
then lets the network sit idle for ``--settle`` seconds (long enough for the probe schedule
to call every peer idle) and measures over ``--seconds``:

* CPU of each daemon (utime + stime of all its threads, ``/proc/<pid>/stat``) in % of one
  core, and of its wireguard-go if it runs one;
* RSS of each daemon (``VmRSS``) at the end;
* probe packets each host sends and receives (UDP port 8473), counted by an nft table of
  the benchmark's own in each host's namespace.

Needs root. The figures of a shared machine vary: run "before" and "after" back to back.

    sudo .venv/bin/python scripts/bench_idle.py [--backend vxlan] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import OverlaydProc, init_network, running, wait_until
from tests.lab.world import World, build_multicloud_world, destroy

HOSTS = ("a1", "a2", "a3", "b1", "b2", "bare")
PROBE_PORT = 8473
TICK = os.sysconf("SC_CLK_TCK")
COUNT_TABLE = "ovbench"


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found.group(1)) / 1024 if found else -1.0


def wireguard_go_pid(d: OverlaydProc) -> int | None:
    """The wireguard-go serving ``d``'s device (its pid file in the state dir), if any."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().split(b"\0")
            env_ns = os.readlink(pid_dir / "ns" / "net")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"wireguard-go") and d.proc is not None:
            try:
                if env_ns == os.readlink(f"/proc/{d.proc.pid}/ns/net"):
                    return int(pid_dir.name)
            except OSError:
                continue
    return None


def count_probes(world: World, name: str) -> None:
    """An nft table of ours in ``name``'s namespace counting probe datagrams in and out."""
    world.host(name).ns.nft(
        f"table inet {COUNT_TABLE} {{\n counter probe_out {{}}\n counter probe_in {{}}\n"
        "  chain out { type filter hook output priority 0;\n"
        f"   udp sport {PROBE_PORT} counter name probe_out\n  }}\n"
        "  chain in { type filter hook input priority 0;\n"
        f"   udp dport {PROBE_PORT} counter name probe_in\n  }}\n}}\n"
    )


def probe_packets(world: World, name: str) -> int:
    """Probe datagrams ``name`` sent plus received so far."""
    ns = world.host(name).ns
    out = ns.run(["nft", "-j", "list", "counters", "table", "inet", COUNT_TABLE]).stdout
    return sum(
        int(item["counter"]["packets"]) for item in json.loads(out)["nftables"] if "counter" in item
    )


def all_verified(d: OverlaydProc) -> bool:
    found = d.peers()
    return len(found) == len(HOSTS) - 1 and all(
        p["address"] in p["verified"] for p in found.values()
    )


def measure(backend: str, settle: float, seconds: float) -> dict[str, dict[str, float]]:
    world = build_multicloud_world(f"ovbi{os.getpid()}-")
    try:
        init_network(world, backend)
        extra = ("--resync-interval", "30")  # the default; the test harness's is 5 s
        with running(world, HOSTS, public_ip=False, extra=extra) as daemons:
            for d in daemons.values():
                wait_until(partial(all_verified, d), 60, f"{d.node}: verified paths")
            for name in HOSTS:
                count_probes(world, name)
            time.sleep(settle)
            pids = {n: d.proc.pid for n, d in daemons.items() if d.proc is not None}
            wg = {n: wireguard_go_pid(d) for n, d in daemons.items()}
            cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
            wg0 = {n: cpu_seconds(p) for n, p in wg.items() if p is not None}
            pk0 = {n: probe_packets(world, n) for n in HOSTS}
            t0 = time.monotonic()
            time.sleep(seconds)
            wall = time.monotonic() - t0
            out = {}
            for n, pid in pids.items():
                wg_pid = wg.get(n)
                out[n] = {
                    "cpu_pct": 100 * (cpu_seconds(pid) - cpu0[n]) / wall,
                    "rss_mb": rss_mb(pid),
                    "probe_pps": (probe_packets(world, n) - pk0[n]) / wall,
                    "wireguard_go_cpu_pct": -1.0
                    if wg_pid is None
                    else 100 * (cpu_seconds(wg_pid) - wg0[n]) / wall,
                }
            return out
    finally:
        destroy(world)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="vxlan")
    parser.add_argument("--settle", type=float, default=90.0, help="idle seconds before")
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring window")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (runs in network namespaces)")
    rows = measure(args.backend, args.settle, args.seconds)
    print(json.dumps(rows, sort_keys=True))
    print(f"backend {args.backend}, {args.seconds:.0f} s idle after {args.settle:.0f} s settling")
    print(f"{'host':>6} {'CPU':>7} {'RSS':>8} {'probe pkt/s':>12} {'wireguard-go CPU':>17}")
    for n, r in rows.items():
        wg = "-" if r["wireguard_go_cpu_pct"] < 0 else f"{r['wireguard_go_cpu_pct']:.2f} %"
        print(
            f"{n:>6} {r['cpu_pct']:>5.2f} % {r['rss_mb']:>5.1f} MB {r['probe_pps']:>12.1f} {wg:>17}"
        )
    cpu = [r["cpu_pct"] for r in rows.values()]
    print(f"median CPU {statistics.median(cpu):.2f} %, max {max(cpu):.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
