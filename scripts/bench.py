"""overlayd daemon benchmark: a real daemon in a namespace, etcd holding N synthetic leases.

Reports, per N: time from daemon start until every entry is in the kernel (and the apply
time of that first reconcile from the daemon's log); latency from one new lease written to
etcd until its route is in the kernel (median, p99 over 200); daemon RSS and idle CPU; and
how long ``ip -batch`` + ``bridge -batch`` take to program the same entries in another
namespace of the same run. Synthetic peers are those of scripts/bench_kernel.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernel import peer_entries, peer_state, write_batch_files

from tests.daemons import BIN, ns_run

if TYPE_CHECKING:
    from overlayd.dataplane.netlink.monitor import MonitorEvent
    from overlayd.values.lease import LeaseRecord
from tests.lab.world import build_lan_world, destroy

PREFIX = "ovbench-"
EVENTS = 200


def lease_for(n: int) -> LeaseRecord:
    from overlayd.values.lease import LeaseRecord

    route, _neigh, fdb = peer_entries(n)
    return LeaseRecord(
        subnet=route.dst,
        node=f"peer{n}",
        node_id=f"id{n}",
        public_ip=fdb.dst,
        vtep_mac=fdb.mac,
        vni=1,
        private_ips=(fdb.dst,),
    )


# -- inner: runs inside the daemon's namespace -------------------------------------------


async def inner(n: int, etcd: str, workdir: Path) -> dict[str, float]:
    from overlayd.dataplane.netlink.monitor import KernelEvent, Monitor
    from overlayd.dataplane.netlink.rtnl import Rtnl
    from overlayd.dataplane.netlink.rtnl_messages import RouteMessage
    from overlayd.store.etcd import EtcdSettings, EtcdStore

    store = EtcdStore(EtcdSettings((etcd,)))
    await store.connect()
    records = [lease_for(i) for i in range(1, n + 1)]
    for chunk in range(0, n, 500):
        await asyncio.gather(*(store.create_lease(r, 0) for r in records[chunk : chunk + 500]))
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115
    t_start = time.perf_counter()
    daemon = subprocess.Popen(
        [
            str(BIN / "overlayd"),
            "--etcd-endpoints",
            etcd,
            "--node-name",
            "bench",
            "--state-dir",
            str(workdir / "state"),
            "--subnet-file",
            str(workdir / "subnet.env"),
            "--healthz-port",
            "10256",
        ],
        stdout=log,
        stderr=log,
    )
    want = 3 * n
    status: dict[str, float] = {}
    while time.perf_counter() - t_start < 120:
        out = subprocess.run(
            ["curl", "-s", "http://127.0.0.1:10256/status"], capture_output=True, text=True
        ).stdout
        if out and json.loads(out).get("entries", 0) >= want and json.loads(out)["reconciles"]:
            break
        await asyncio.sleep(0.02)
    full_sync = time.perf_counter() - t_start
    rtnl = Rtnl()
    ifindex = int(Path("/sys/class/net/overlay.1/ifindex").read_text())
    in_kernel = rtnl.dump(ifindex).size()
    status["full_sync_s"] = full_sync
    status["entries_in_kernel"] = in_kernel
    first = re.search(
        r"reconciled \d+ peers on vxlan: .* in ([\d.]+) ms", (workdir / "daemon.log").read_text()
    )
    status["first_apply_ms"] = float(first.group(1)) if first else -1.0

    seen: dict[object, float] = {}
    cond = threading.Condition()

    def on_events(events: list[MonitorEvent]) -> None:
        now = time.perf_counter()
        with cond:
            for ev in events:
                if isinstance(ev, KernelEvent) and isinstance(ev.message, RouteMessage):
                    seen.setdefault(ev.message.dst, now)
            cond.notify_all()

    latencies = []
    acked: list[float] = []
    with Monitor(ifindex, on_events):
        for i in range(EVENTS):
            rec = lease_for(n + 1 + i)
            t0 = time.perf_counter()
            await store.create_lease(rec, 0)
            acked.append(time.perf_counter() - t0)
            deadline = t0 + 5
            while rec.subnet not in seen and time.perf_counter() < deadline:
                await asyncio.sleep(0.0005)
            if rec.subnet not in seen:
                raise RuntimeError(f"event {i}: route {rec.subnet} not programmed in 5 s")
            latencies.append((seen[rec.subnet] - t0) * 1000)
    # the same events measured from etcd's acknowledgement of the write
    from_ack = sorted(lat - a * 1000 for lat, a in zip(latencies, acked, strict=True))
    status["event_ack_p50_ms"] = statistics.median(from_ack)
    status["event_ack_p99_ms"] = from_ack[int(len(from_ack) * 0.99) - 1]
    status["etcd_put_p50_ms"] = statistics.median(acked) * 1000
    latencies.sort()
    status["event_p50_ms"] = statistics.median(latencies)
    status["event_p99_ms"] = latencies[int(len(latencies) * 0.99) - 1]
    status["event_max_ms"] = latencies[-1]
    await asyncio.sleep(3)
    rss = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{daemon.pid}/status").read_text())
    status["rss_mb"] = int(rss.group(1)) / 1024 if rss else -1.0
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    c0, w0 = cpu(), time.perf_counter()
    await asyncio.sleep(10)
    status["idle_cpu_pct"] = 100 * (cpu() - c0) / (time.perf_counter() - w0)
    daemon.kill()
    daemon.wait()
    rtnl.close()
    await store.close()
    return status


# -- outer ----------------------------------------------------------------------------------


def time_ip_batch(ns: str, n: int) -> float:
    dev = "vxb"
    ns_run(
        ns,
        "ip",
        "link",
        "add",
        dev,
        "type",
        "vxlan",
        "id",
        "9",
        "dstport",
        "8472",
        "dev",
        "eth0",
        "nolearning",
    )
    ns_run(ns, "ip", "link", "set", dev, "up")
    with tempfile.TemporaryDirectory() as tmp:
        ip_file, br_file = Path(tmp) / "ip", Path(tmp) / "bridge"
        write_batch_files(peer_state(range(1, n + 1)), dev, ip_file, br_file)
        t0 = time.perf_counter()
        ns_run(ns, "ip", "-batch", str(ip_file), timeout=300)
        ns_run(ns, "bridge", "-batch", str(br_file), timeout=300)
        took = time.perf_counter() - t0
    ns_run(ns, "ip", "link", "del", dev)
    return took


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 5000]
    workdir = Path(tempfile.mkdtemp(prefix="overlayd-bench-"))
    world = build_lan_world(PREFIX, 2, workdir=workdir)
    h1, h2 = world.host("h1").ns.name, world.host("h2").ns.name
    rows = []
    try:
        ctl = [str(BIN / "overlayctl"), "--etcd-endpoints", world.etcd_endpoint]
        # the synthetic leases are VXLAN ones, and the figures compare with earlier runs
        # /10 holds the synthetic /24s (10.0-10.20.x) but not the world's underlay
        # 10.77.0.0/24 (a node whose underlay is inside the overlay is refused); the daemon's
        # own subnet comes from above them (--subnet-min), never one a synthetic lease takes
        ns_run(h1, *ctl, "network", "init", "--network", "10.0.0.0/10",
               "--subnet-min", "10.32.0.0", "--backend", "vxlan")  # fmt: skip
        for n in sizes:
            world.etcd_ns.run(
                [
                    "etcdctl",
                    "--endpoints",
                    world.etcd_endpoint,
                    "del",
                    "--prefix",
                    "/overlayd/network/subnets/",
                ]
            )
            ns_run(h1, "ip", "link", "del", "overlay.1", check=False)
            run_dir = workdir / f"n{n}"
            run_dir.mkdir()
            out = ns_run(
                h1,
                sys.executable,
                __file__,
                "inner",
                str(n),
                world.etcd_endpoint,
                str(run_dir),
                timeout=600,
            ).stdout
            res = json.loads(out.strip().splitlines()[-1])
            res["ip_batch_s"] = time_ip_batch(h2, n)
            res["n"] = n
            rows.append(res)
            print(json.dumps(res, sort_keys=True), flush=True)
    finally:
        destroy(world)
    print()
    print(
        f"{'peers':>6} {'entries':>8} {'full sync':>10} {'1st apply':>10} {'ip -batch':>10} "
        f"{'ratio':>6} {'apply ratio':>11} {'ev p50':>7} {'ev p99':>7} {'RSS':>7} {'idle CPU':>8}"
    )
    for r in rows:
        print(
            f"{r['n']:>6} {r['entries_in_kernel']:>8.0f} {r['full_sync_s']:>9.2f}s "
            f"{r['first_apply_ms'] / 1000:>9.2f}s {r['ip_batch_s']:>9.2f}s "
            f"{r['full_sync_s'] / r['ip_batch_s']:>6.2f} "
            f"{r['first_apply_ms'] / 1000 / r['ip_batch_s']:>11.2f} "
            f"{r['event_p50_ms']:>5.1f}ms {r['event_p99_ms']:>5.1f}ms "
            f"{r['rss_mb']:>5.1f}MB {r['idle_cpu_pct']:>7.2f}%"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "inner":
        result = asyncio.run(inner(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])))
        print(json.dumps(result))
        sys.exit(0)
    sys.exit(main())
