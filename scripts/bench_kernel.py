#!/usr/bin/env python3
"""Benchmark of the netlink data-plane path against ``ip -batch``.

Run as root from the repository: ``.venv/bin/python scripts/bench_kernel.py``. It
creates the namespace ``ovnl-bench`` with a veth underlay and a VXLAN device ``vx0``,
times programming N peers (N routes + N neighbours + N FDB entries) with the codec
(``Rtnl.apply``) and with ``ip -batch`` + ``bridge -batch`` (iproute2 cannot write FDB
entries, ``bridge`` can), optionally pyroute2 one message at a time, then a single-peer
apply and a full dump. The device is recreated between runs, which flushes it. The
namespace is deleted at the end, also on failure.

Measurements inside the namespace run in a child ``ip netns exec ovnl-bench python
scripts/bench_kernel.py --worker ...``, which prints JSON.

``write_batch_files`` and ``peer_state`` are importable (``scripts/bench`` reuses them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from overlayd.dataplane.netlink.rtnl_messages import OVERLAYD_RTPROT  # noqa: E402
from overlayd.values.kernel_state import (  # noqa: E402  (path set up above for direct runs)
    Changes,
    FdbEntry,
    KernelState,
    MacAddress,
    NeighEntry,
    RouteEntry,
    diff,
)

NS = "ovnl-bench"
DEV = "vx0"
SIZES = (1000, 5000)
RUNS = 3
SINGLE_RUNS = 200
NAIVE_N = 200


def peer_entries(n: int) -> tuple[RouteEntry, NeighEntry, FdbEntry]:
    """Peer ``n`` (1..65535): subnet 10.(n>>8).(n&255).0/24 via its .0 address, a VTEP
    MAC derived from ``n`` and an underlay address in 172.16.0.0/16."""
    hi, lo = n >> 8, n & 0xFF
    subnet = IPv4Network(f"10.{hi}.{lo}.0/24")
    mac = MacAddress.from_bytes(bytes([0x02, 0x42, 0, 0, hi, lo]))
    return (
        RouteEntry(subnet, subnet.network_address),
        NeighEntry(subnet.network_address, mac),
        FdbEntry(mac, IPv4Address(f"172.16.{hi}.{lo}")),
    )


def peer_state(peers: Iterable[int]) -> KernelState:
    """The kernel entries for the given peer numbers."""
    entries = [peer_entries(n) for n in peers]
    return KernelState.of([e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries])


def write_batch_files(state: KernelState, dev: str, ip_file: Path, bridge_file: Path) -> None:
    """Write ``state`` as an ``ip -batch`` file (neighbours, then routes) and a
    ``bridge -batch`` file (FDB entries), equivalent to what ``Rtnl.apply`` sends."""
    with ip_file.open("w") as f:
        for n in sorted(state.neighs.values()):
            f.write(f"neigh replace {n.ip} lladdr {n.mac} dev {dev} nud permanent\n")
        for r in sorted(state.routes.values()):
            f.write(f"route replace {r.dst} via {r.via} dev {dev} onlink proto {OVERLAYD_RTPROT}\n")
    with bridge_file.open("w") as f:
        for e in sorted(state.fdbs.values()):
            f.write(f"fdb replace {e.mac} dev {dev} dst {e.dst} self permanent\n")


# --- worker side: runs inside the namespace ----------------------------------------------


def _ifindex() -> int:
    import socket

    return socket.if_nametoindex(DEV)


def worker_apply(n: int) -> dict[str, Any]:
    from overlayd.dataplane.netlink.rtnl import Rtnl

    changes = diff(peer_state(range(1, n + 1)), KernelState())
    with Rtnl() as rtnl:
        start = time.perf_counter()
        result = rtnl.apply(_ifindex(), changes)
        elapsed = time.perf_counter() - start
        size = rtnl.dump(_ifindex()).size()
    return {"seconds": elapsed, "errors": len(result.errors), "size": size}


def worker_single(base: int) -> dict[str, Any]:
    from overlayd.dataplane.netlink.rtnl import Rtnl

    ifindex = _ifindex()
    samples: list[float] = []
    with Rtnl() as rtnl:
        rtnl.apply(ifindex, diff(peer_state(range(1, base + 1)), KernelState())).raise_for_errors()
        for k in range(SINGLE_RUNS):
            route, neigh, fdb = peer_entries(base + 1 + k)
            changes = Changes(set_routes=(route,), set_neighs=(neigh,), set_fdbs=(fdb,))
            start = time.perf_counter()
            rtnl.apply(ifindex, changes).raise_for_errors()
            samples.append(time.perf_counter() - start)
        dumps: list[float] = []
        for _ in range(5):
            start = time.perf_counter()
            size = rtnl.dump(ifindex).size()
            dumps.append(time.perf_counter() - start)
    samples.sort()
    return {
        "p50": statistics.median(samples),
        "p99": samples[int(len(samples) * 0.99) - 1],
        "dump": statistics.median(dumps),
        "dump_size": size,
    }


def worker_pyroute2(n: int) -> dict[str, Any]:
    from pyroute2 import IPRoute

    from overlayd.dataplane.netlink import rtnl_messages

    state = peer_state(range(1, n + 1))
    ifindex = _ifindex()
    with IPRoute() as ipr:
        start = time.perf_counter()
        for ne in state.neighs.values():
            ipr.neigh(
                "replace", ifindex=ifindex, dst=str(ne.ip), lladdr=str(ne.mac),
                state=rtnl_messages.NUD_PERMANENT,
            )  # fmt: skip
        for fe in state.fdbs.values():
            ipr.fdb(
                "replace", ifindex=ifindex, lladdr=str(fe.mac), dst=str(fe.dst),
                flags=rtnl_messages.NTF_SELF,
                state=rtnl_messages.NUD_PERMANENT,
            )  # fmt: skip
        for r in state.routes.values():
            ipr.route(
                "replace", dst=str(r.dst), gateway=str(r.via), oif=ifindex,
                flags=rtnl_messages.RTNH_F_ONLINK, proto=rtnl_messages.OVERLAYD_RTPROT,
            )  # fmt: skip
        elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "messages": 3 * n}


# --- driver side: runs in the root namespace ------------------------------------------------


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def recreate_device() -> None:
    """A fresh vx0: deleting the device removes every route, neighbour and FDB entry."""
    subprocess.run(["ip", "-n", NS, "link", "del", DEV], capture_output=True, check=False)
    sh(
        "ip", "-n", NS, "link", "add", DEV, "type", "vxlan", "id", "1", "dstport", "8472",
        "local", "192.168.77.1", "dev", "veth0", "nolearning",
    )  # fmt: skip
    sh("ip", "-n", NS, "link", "set", DEV, "up")


def setup_namespace() -> None:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
    sh("ip", "netns", "add", NS)
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    sh("ip", "-n", NS, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    sh("ip", "-n", NS, "addr", "add", "192.168.77.1/24", "dev", "veth0")
    sh("ip", "-n", NS, "link", "set", "veth0", "up")
    sh("ip", "-n", NS, "link", "set", "veth1", "up")


def run_worker(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        ["ip", "netns", "exec", NS, sys.executable, __file__, "--worker", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def time_ip_batch(n: int, tmp: Path) -> float:
    ip_file, bridge_file = tmp / f"ip-{n}.batch", tmp / f"bridge-{n}.batch"
    write_batch_files(peer_state(range(1, n + 1)), DEV, ip_file, bridge_file)
    start = time.perf_counter()
    sh("ip", "-n", NS, "-batch", str(ip_file))
    sh("bridge", "-n", NS, "-batch", str(bridge_file))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--no-pyroute2", action="store_true", help="skip the pyroute2 run")
    args = parser.parse_args()
    if args.worker:
        mode, n = args.worker[0], int(args.worker[1])
        workers = {"apply": worker_apply, "single": worker_single, "pyroute2": worker_pyroute2}
        print(json.dumps(workers[mode](n)))
        return 0

    rows: list[tuple[str, str, str]] = []
    setup_namespace()
    try:
        with TemporaryDirectory() as tmpdir:
            for n in SIZES:
                codec_times, ip_times = [], []
                for _ in range(RUNS):
                    recreate_device()
                    res = run_worker("apply", str(n))
                    if res["errors"] or res["size"] != 3 * n:
                        raise RuntimeError(f"codec run for {n} peers went wrong: {res}")
                    codec_times.append(res["seconds"])
                    recreate_device()
                    ip_times.append(time_ip_batch(n, Path(tmpdir)))
                c, i = statistics.median(codec_times), statistics.median(ip_times)
                rows.append((f"codec Rtnl.apply, {n} peers", f"{3 * n} msgs", f"{c * 1e3:9.1f} ms"))
                rows.append((f"ip -batch + bridge -batch, {n} peers", "", f"{i * 1e3:9.1f} ms"))
                rows.append((f"  ratio codec / ip -batch ({n})", "", f"{c / i:9.2f} x"))
            if not args.no_pyroute2:
                recreate_device()
                res = run_worker("pyroute2", str(NAIVE_N))
                per = res["seconds"] / res["messages"]
                rows.append(
                    (f"pyroute2 one by one, {NAIVE_N} peers", f"{res['messages']} msgs",
                     f"{res['seconds'] * 1e3:9.1f} ms ({per * 1e3:.3f} ms/msg)")
                )  # fmt: skip
            recreate_device()
            res = run_worker("single", "5000")
            rows.append(
                (f"single-peer apply (3 msgs), {SINGLE_RUNS} runs", "p50",
                 f"{res['p50'] * 1e3:9.3f} ms")
            )  # fmt: skip
            rows.append(("", "p99", f"{res['p99'] * 1e3:9.3f} ms"))
            rows.append(
                (f"dump of {res['dump_size']} entries (median of 5)", "",
                 f"{res['dump'] * 1e3:9.1f} ms")
            )  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'':>10}  time")
    for name, note, value in rows:
        print(f"{name:<{width}}  {note:>10}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
