#!/usr/bin/env python3
"""Benchmark of the DNS responder (issue 13, docs/dns.md) against dnsmasq, on loopback.

One process serves a zone of ``--names`` node names (synthetic leases) with overlayd's
responder (``overlayd/dns``, under uvloop as the daemon runs); dnsmasq serves the same names
from a hosts file. dnsperf (Debian package) measures each: the highest rate of the ladder
answered with 0 % loss (after one warm-up pass over the names), the rate with 20 queries
outstanding, and latency p50/p99 at 1,000 queries/s. Also: the CPU time to build the zone
at that size from nothing (a lease write updates it incrementally instead:
scripts/bench_dns_visibility.py), and the responder process's RSS holding the leases,
without the zone and with it.

Run as root on a machine with dnsperf and dnsmasq (``scripts/setup`` installs them):
``.venv/bin/python scripts/bench_dns.py [--names 5000]``. The figures depend on the machine;
the issue's goals: >= 0.5x dnsmasq's queries/s, p99 < 2 ms at 1,000 queries/s, RSS with
5,000 names within 10 MB of without.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from overlayd.dns.server import DnsServer
from overlayd.dns.wire import Responder
from overlayd.planning.names import Zone
from overlayd.planning.zone_builder import build_zone
from overlayd.values.kernel_state import MacAddress
from overlayd.values.lease import LeaseRecord

ZONE = "overlay.internal"
NETWORK = IPv4Network("10.0.0.0/8")
RATES = (500, 1_000, 2_000, 5_000, 10_000, 20_000, 40_000, 80_000)
OURS, DNSMASQ = 15353, 15354


def leases(count: int) -> dict[IPv4Network, LeaseRecord]:
    out = {}
    for n in range(1, count + 1):
        subnet = IPv4Network((int(NETWORK.network_address) + (n << 8), 24))
        out[subnet] = LeaseRecord(
            subnet=subnet, node=f"node{n}", node_id=f"id{n}",
            public_ip=IPv4Address(0xC0000200 + n % 250 + 1),
            vtep_mac=MacAddress.from_bytes(bytes([2, 0, 0, 0, n >> 8 & 255, n & 255])),
            vni=1, site=f"site{n % 8}",
        )  # fmt: skip
    return out


def zone_of(count: int) -> Zone:
    records = leases(count)
    return build_zone(ZONE, NETWORK, "node1", records, {s: i for i, s in enumerate(records)})


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def serve(port: int, count: int) -> None:
    """The responder's process: report RSS without and with the names, then serve."""
    import uvloop

    async def main() -> None:
        responder = Responder()
        responder.set_zone(zone_of(0))
        server = DnsServer(responder)
        await server.bind(IPv4Address("127.0.0.1"), port)
        records = leases(count)  # the daemon holds these anyway: not the names' cost
        created = {s: i for i, s in enumerate(records)}
        before = rss_kib()
        t0 = time.process_time()  # CPU time: the machine may be shared
        zone = build_zone(ZONE, NETWORK, "node1", records, created)
        built = time.process_time() - t0
        responder.set_zone(zone)
        print(f"rss_kib {before} {rss_kib()} build_s {built:.4f}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def dnsperf(port: int, queries: Path, *extra: str) -> str:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), *extra]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def field(out: str, label: str) -> float:
    line = next(ln for ln in out.splitlines() if label in ln)
    return float(line.split(":", 1)[1].split()[0].replace("%", "").strip("()"))


def lost(out: str) -> float:
    line = next(ln for ln in out.splitlines() if "Queries lost" in ln)
    return float(line.split("(")[1].split("%")[0])


def best_rate(port: int, queries: Path) -> tuple[float, int]:
    """The highest ladder rate answered without loss, and its measured queries/s."""
    best = (0.0, 0)
    for rate in RATES:
        out = dnsperf(port, queries, "-l", "4", "-Q", str(rate), "-q", "200", "-t", "1")
        if lost(out) > 0:
            break
        best = (field(out, "Queries per second"), rate)
    return best


def saturated(port: int, queries: Path) -> tuple[float, float]:
    """Queries/s and loss (%) with 20 queries outstanding, as fast as it answers."""
    out = dnsperf(port, queries, "-l", "5", "-q", "20", "-t", "1")
    return field(out, "Queries per second"), lost(out)


def latencies(port: int, queries: Path) -> tuple[float, float]:
    """p50 and p99 in ms at 1,000 queries/s (dnsperf -v reports each query's latency)."""
    out = dnsperf(port, queries, "-l", "5", "-Q", "1000", "-v")
    found = sorted(
        float(parts[-1]) * 1000
        for ln in out.splitlines()
        if ln.startswith(">") and len(parts := ln.split()) >= 5
    )
    if not found:
        raise RuntimeError(f"no latencies in dnsperf -v output: {out[:300]}")
    return statistics.median(found), found[int(len(found) * 0.99) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=5000)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.names)
        return 0
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    zone = zone_of(args.names)
    names = [e.name for e in zone.entries if e.kind.name == "NODE"]
    rng = random.Random(13)
    queries = work / "queries"
    queries.write_text("".join(f"{rng.choice(names)} A\n" for _ in range(20_000)))
    hosts = work / "hosts"
    hosts.write_text("".join(f"{e.address} {e.name}\n" for e in zone.entries))
    ours = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(OURS), "--names", str(args.names)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    theirs = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "-C", "/dev/null",
         f"--addn-hosts={hosts}", f"--port={DNSMASQ}", "--listen-address=127.0.0.1",
         "--bind-interfaces", f"--local=/{ZONE}/", "--user=root", "--pid-file="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert ours.stdout is not None
        _, before, after, _, built = ours.stdout.readline().split()
        time.sleep(1.0)
        results: dict[str, tuple[float, float]] = {}
        for label, port in (("overlayd", OURS), ("dnsmasq", DNSMASQ)):
            dnsperf(port, queries, "-n", "1", "-q", "20")  # warm: every name asked once
            qps, rate = best_rate(port, queries)
            top, loss = saturated(port, queries)
            p50, p99 = latencies(port, queries)
            results[label] = (qps, top)
            print(f"{label:9} {qps:7.0f} q/s at 0% loss (ladder step {rate}); "
                  f"{top:7.0f} q/s saturated ({loss:.2f}% lost); "
                  f"at 1000 q/s: p50 {p50:.3f} ms, p99 {p99:.3f} ms")  # fmt: skip
        ours_, theirs_ = results["overlayd"], results["dnsmasq"]
        ratios = [f"{o / t:.2f}" if t else "-" for o, t in zip(ours_, theirs_, strict=True)]
        print(f"ratio overlayd/dnsmasq: {ratios[0]} at 0% loss, {ratios[1]} saturated")
        print(f"zone of {args.names} nodes ({len(zone.entries)} names) built in "
              f"{float(built) * 1000:.1f} ms of CPU")  # fmt: skip
        grown = (int(after) - int(before)) / 1024
        print(f"responder RSS with {args.names} leases: {int(before) / 1024:.1f} MiB without "
              f"the zone, {int(after) / 1024:.1f} MiB with it (+{grown:.1f})")  # fmt: skip
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
