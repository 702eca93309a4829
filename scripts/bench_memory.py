#!/usr/bin/env python3
"""What a daemon's memory is made of (issue 12: RSS <= 50 MB at 6 peers, <= 80 MB at 5,000).

Three parts, each optional:

* ``imports`` (no root): ``import overlayd.cli.daemon_main`` in a fresh interpreter, byte-
  compiled first as an installed package is: modules loaded, RSS after it, the packages
  that cost most import time (``-X importtime``, self time summed per top-level package)
  and the most Python memory (tracemalloc, per package);
* ``world`` (root): the six-host multi-cloud world (tests/lab/world.py), vxlan, every daemon
  running with all paths verified, then ``--settle`` seconds; each daemon's RSS broken down;
* ``etcd`` (root): what the etcd client adds to a process that has uvloop and aiohttp
  already, the gRPC one (etcd3aio) against etcd's v3 JSON gateway over aiohttp, each
  granting, writing, listing, watching and keeping alive as a daemon does at start;
* ``synthetic`` (root): one real daemon in a LAN world whose etcd holds ``--peers`` synthetic
  VXLAN leases (those of scripts/bench.py), measured once all their entries are in the
  kernel and ``--settle`` seconds have passed; ``traced`` (root, not by default): the same
  under tracemalloc, its largest Python allocations by line.

The breakdown of a daemon (``/proc/<pid>/smaps``): shared objects (``.so`` files, the
largest named), the ``[heap]`` (glibc's main arena: malloc'd C memory and small Python
objects' arenas when brk serves them), thread stacks (anonymous mappings of pthread's
default 8 MiB), the other anonymous mappings (Python's obmalloc arenas, the other malloc
arenas), the interpreter binary and other files; and its threads by name. Prints one JSON
line per part, then a table.

    sudo .venv/bin/python scripts/bench_memory.py [--parts imports,world,synthetic,etcd]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import compileall
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.daemons import BIN, OverlaydProc, init_network, ns_run, running, wait_until
from tests.lab.world import build_lan_world, build_multicloud_world, destroy

REPO = Path(__file__).resolve().parent.parent
HOSTS = ("a1", "a2", "a3", "b1", "b2", "bare")
MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")
IMPORT_RUNS = 5
# pthread's default stacks: 8 MiB (RLIMIT_STACK), less the guard page glibc takes from them
STACKS = (8188, 8192)
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")

# What the daemon's entry loads, library by library (each step loads what it needs beyond
# the earlier ones); aiohttp comes last: the daemon loads it once its status port serves.
STEPS = (
    "uvloop", "click", "cryptography.hazmat.primitives.asymmetric.x25519", "dns.message", "grpc",
    "etcd3aio", "overlayd.cli.daemon_main", "aiohttp",
)  # fmt: skip

_IMPORT_PROBE = """
import importlib, json, re, sys, time, tracemalloc
from pathlib import Path
traced = sys.argv[1] == "traced"
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024
START = rss()
if traced:
    tracemalloc.start()
steps = {}
for name in sys.argv[2:]:
    mem = (lambda: tracemalloc.get_traced_memory()[0] / 2**20) if traced else rss
    before, t0, mods = mem(), time.perf_counter(), len(sys.modules)
    importlib.import_module(name)
    steps[name] = {"mb": round(mem() - before, 2), "s": round(time.perf_counter() - t0, 3),
                   "modules": len(sys.modules) - mods}
print(json.dumps({"steps": steps, "modules": len(sys.modules), "total": rss(), "start": START}))
"""


# Both clients start from what a daemon has loaded anyway (uvloop, aiohttp for its status
# port, the store's own modules), do what a daemon does at start (grant, put, list, watch,
# keepalive) and report what that added (time: less the 1 s they then idle). The JSON one
# is the design sketch of docs/startup.md ("Memory").
_CLIENT_PROBE = """
import asyncio, base64, json, os, re, sys, time
from pathlib import Path
import uvloop, aiohttp, aiohttp.web
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024
def threads():
    return len(os.listdir("/proc/self/task"))
ENDPOINT = sys.argv[2]
sys.path[:0] = [sys.argv[3], sys.argv[3] + "/scripts"]
import bench, overlayd.store.keyed  # what either store needs: only the client differs
async def grpc_client():
    from bench import lease_for
    from overlayd.store.etcd import EtcdSettings, EtcdStore
    store = EtcdStore(EtcdSettings((ENDPOINT,)))
    await store.connect()
    lease = await store.grant(30)
    for i in range(1, 7):
        await store.create_lease(lease_for(i), lease)
    snapshot = await store.list_leases()
    watch = store.watch_leases(snapshot)
    first = asyncio.ensure_future(anext(watch))
    await store.create_lease(lease_for(7), lease)
    await first
    await store.keepalive(lease)
    await asyncio.sleep(1)  # the threads it keeps, not the ones it had
    return threads()
async def json_client():
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    async with aiohttp.ClientSession(ENDPOINT) as http:
        async def call(path, body):
            async with http.post(path, json=body) as r:
                return await r.json()
        lease = (await call("/v3/lease/grant", {"TTL": 30}))["ID"]
        for i in range(1, 7):
            await call("/v3/kv/put", {"key": b64(f"/o/subnets/{i}"), "value": b64("{}" * 40),
                                      "lease": lease})
        await call("/v3/kv/range", {"key": b64("/o/"), "range_end": b64("/o0")})
        watch = await http.post("/v3/watch", json={"create_request": {
            "key": b64("/o/"), "range_end": b64("/o0")}})
        await watch.content.readline()  # the watch's creation
        await call("/v3/kv/put", {"key": b64("/o/subnets/7"), "value": b64("{}"), "lease": lease})
        await watch.content.readline()  # the event
        await call("/v3/lease/keepalive", {"ID": lease})
        await asyncio.sleep(1)
        live = threads()
        watch.close()
        return live
before, t0, n, t_before = rss(), time.perf_counter(), len(sys.modules), threads()
live = uvloop.run(grpc_client() if sys.argv[1] == "grpc" else json_client())
print(json.dumps({"client": sys.argv[1], "rss_mb": round(rss() - before, 1),
                  "threads": live - t_before, "modules": len(sys.modules) - n,
                  "s": round(time.perf_counter() - t0 - 1, 3)}))
"""


# The daemon under tracemalloc: once the file argv[1] appears, the largest allocations
# (by line) are written to argv[1].json. A run of its own: tracing costs memory too.
_TRACED_DAEMON = """
import json, sys, threading, time, tracemalloc
from pathlib import Path
tracemalloc.start()
flag = Path(sys.argv[1])
sys.argv = ["overlayd", *sys.argv[2:]]
def dump():
    while not flag.exists():
        time.sleep(0.2)
    snap = tracemalloc.take_snapshot()
    top = [[str(s.traceback[0]), round(s.size / 2**20, 2), s.count]
           for s in snap.statistics("lineno")[:20]]
    total = tracemalloc.get_traced_memory()[0] / 2**20
    Path(f"{flag}.json").write_text(json.dumps({"traced_mb": round(total, 1), "top": top}))
threading.Thread(target=dump, daemon=True).start()
from overlayd.cli.daemon_main import main
main()
"""


# -- a process's memory ------------------------------------------------------------------


def breakdown(pid: int) -> dict[str, Any]:
    """RSS of ``pid`` by kind of mapping (MB), the largest shared objects, its threads."""
    kinds: collections.Counter[str] = collections.Counter()
    objects: collections.Counter[str] = collections.Counter()
    current = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = MAPPING.match(line)
        if head:
            path = head.group(1)
            current = _kind(path)
            name = Path(path).name if current == "shared objects" else ""
            continue
        if line.startswith("Size:") and current == "anon" and int(line.split()[1]) in STACKS:
            current = "thread stacks"
        elif line.startswith("Rss:"):
            kb = int(line.split()[1])
            kinds[current] += kb
            if current == "shared objects":
                objects[name] += kb
    names = collections.Counter(
        (task / "comm").read_text().strip() for task in Path(f"/proc/{pid}/task").iterdir()
    )
    return {
        "rss_mb": round(sum(kinds.values()) / 1024, 1),
        "kinds_mb": {k: round(v / 1024, 1) for k, v in kinds.most_common()},
        "objects_mb": {k: round(v / 1024, 1) for k, v in objects.most_common(8)},
        "threads": sum(names.values()),
        "thread_names": dict(sorted(names.items())),
    }


def after_trim(pid: int) -> float | None:
    """RSS (MB) of ``pid`` once glibc's ``malloc_trim(0)`` has run in it (through gdb): what
    trimming would give back now. None without gdb."""
    if shutil.which("gdb") is None:
        return None
    subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
        capture_output=True,
        check=False,
    )
    return float(breakdown(pid)["rss_mb"])


def _kind(path: str) -> str:
    if not path:
        return "anon"
    if path == "[heap]":
        return "heap"
    if path.startswith("[stack"):
        return "main stack"
    if path.startswith("["):
        return "kernel"
    if ".so" in Path(path).name:
        return "shared objects"
    if Path(path).name.startswith("python"):
        return "interpreter"
    return "other files"


# -- imports -------------------------------------------------------------------------------


def imports() -> dict[str, Any]:
    """What the daemon's entry loads and costs, in fresh interpreters (byte-compiled)."""
    compileall.compile_dir(REPO / "overlayd", quiet=1)

    def probe(mode: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE, mode, *STEPS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return found

    plain, traced = probe("plain"), probe("traced")
    totals = []
    for _ in range(IMPORT_RUNS):  # the least of several: the machine's load only adds
        timed = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import overlayd.cli.daemon_main"],
            capture_output=True,
            text=True,
            check=True,
        )
        totals.append(
            sum(
                int(m.group(2))
                for m in map(IMPORT_LINE.match, timed.stderr.splitlines())
                if m is not None and m.group(3) == " "
            )
        )
    total = min(totals)
    return {
        "daemon_import_s": round(total / 1e6, 3),
        "interpreter_rss_mb": plain["start"],
        "modules_with_aiohttp": plain["modules"],
        "rss_with_aiohttp_mb": plain["total"],
        "steps": {
            name: {
                "rss_mb": plain["steps"][name]["mb"],
                "python_mb": traced["steps"][name]["mb"],
                "s": plain["steps"][name]["s"],
                "modules": plain["steps"][name]["modules"],
            }
            for name in STEPS
        },
    }


# -- the six-host world --------------------------------------------------------------------


def _all_verified(d: OverlaydProc) -> bool:
    found = d.peers()
    return len(found) == len(HOSTS) - 1 and all(
        p["address"] in p["verified"] for p in found.values()
    )


def world(settle: float) -> dict[str, Any]:
    """Each daemon's breakdown in the six-host vxlan world, ``settle`` s after it verified."""
    lab = build_multicloud_world(f"ovbm{os.getpid()}-")
    try:
        init_network(lab, "vxlan")
        with running(lab, HOSTS, public_ip=False) as daemons:
            for d in daemons.values():
                wait_until(partial(_all_verified, d), 60, f"{d.node}: verified paths")
            time.sleep(settle)
            per = {n: breakdown(d.proc.pid) for n, d in daemons.items() if d.proc is not None}
    finally:
        destroy(lab)
    rss = [b["rss_mb"] for b in per.values()]
    median_host = sorted(per, key=lambda n: per[n]["rss_mb"])[len(per) // 2]
    return {
        "rss_median_mb": statistics.median(rss),
        "rss_max_mb": max(rss),
        "median_host": median_host,
        **per[median_host],
    }


# -- synthetic peers -----------------------------------------------------------------------


async def _synthetic_inner(
    n: int, etcd: str, workdir: Path, settle: float, traced: bool
) -> dict[str, Any]:
    """In the daemon's namespace: write ``n`` leases, run the daemon until they are all in
    the kernel, wait ``settle`` s, measure (``traced``: its largest Python allocations)."""
    from bench import lease_for

    from overlayd.store.etcd import EtcdSettings, EtcdStore

    store = EtcdStore(EtcdSettings((etcd,)))
    await store.connect()
    records = [lease_for(i) for i in range(1, n + 1)]
    for chunk in range(0, n, 500):
        await asyncio.gather(*(store.create_lease(r, 0) for r in records[chunk : chunk + 500]))
    await store.close()
    flag = workdir / "snapshot"
    wrap = [sys.executable, "-c", _TRACED_DAEMON, str(flag)] if traced else [str(BIN / "overlayd")]
    argv = [
        *wrap, "--etcd-endpoints", etcd, "--node-name", "bench",
        "--state-dir", str(workdir / "state"), "--subnet-file", str(workdir / "subnet.env"),
        "--healthz-port", "10256",
    ]  # fmt: skip
    with open(workdir / "daemon.log", "wb") as log:
        daemon = subprocess.Popen(argv, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["curl", "-s", "http://127.0.0.1:10256/status"], capture_output=True, text=True
            ).stdout
            if out and json.loads(out).get("entries", 0) >= 3 * n:
                break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"{n} peers not programmed in 180 s")
        await asyncio.sleep(settle)
        if traced:
            flag.touch()
            while not Path(f"{flag}.json").exists():
                await asyncio.sleep(0.2)
            found: dict[str, Any] = json.loads(Path(f"{flag}.json").read_text())
            return found
        return {"peers": n, **breakdown(daemon.pid), "after_trim_mb": after_trim(daemon.pid)}
    finally:
        daemon.kill()
        daemon.wait()


def synthetic(n: int, settle: float, traced: bool = False) -> dict[str, Any]:
    """The breakdown of one daemon with ``n`` synthetic VXLAN peers (see scripts/bench.py);
    ``traced``: its largest Python allocations instead (a run under tracemalloc)."""
    workdir = Path(tempfile.mkdtemp(prefix="overlayd-bench-memory-"))
    lab = build_lan_world(f"ovbm{os.getpid()}-", 1, workdir=workdir)
    try:
        h1 = lab.host("h1").ns.name
        ctl = [str(BIN / "overlayctl"), "--etcd-endpoints", lab.etcd_endpoint]
        ns_run(h1, *ctl, "network", "init", "--network", "10.0.0.0/10",
               "--subnet-min", "10.32.0.0", "--backend", "vxlan")  # fmt: skip
        out = ns_run(
            h1, sys.executable, __file__, "inner", str(n), lab.etcd_endpoint, str(workdir),
            str(settle), "traced" if traced else "plain", timeout=600,
        ).stdout  # fmt: skip
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result
    finally:
        destroy(lab)


def etcd_clients() -> dict[str, Any]:
    """What each etcd client adds to a process that already has uvloop and aiohttp: the
    gRPC one (etcd3aio, the daemon's) and etcd's v3 JSON gateway over aiohttp."""
    ns = f"ovbm{os.getpid()}-etcd"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    data = Path(tempfile.mkdtemp(prefix="overlayd-bench-etcd-"))
    etcd = None
    try:
        ns_run(ns, "ip", "link", "set", "lo", "up")
        url = "http://127.0.0.1:2379"
        etcd = subprocess.Popen(
            ["ip", "netns", "exec", ns, "etcd", "--data-dir", str(data),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", "http://127.0.0.1:2380"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(
            lambda: ns_run(ns, "etcdctl", "--endpoints", url, "endpoint", "health",
                           check=False).returncode == 0,
            30, "etcd answers",
        )  # fmt: skip
        found = {}
        for client in ("grpc", "json"):
            out = ns_run(
                ns, sys.executable, "-c", _CLIENT_PROBE, client, url, str(REPO), timeout=120
            ).stdout
            found[client] = json.loads(out.strip().splitlines()[-1])
        return found
    finally:
        if etcd is not None:
            etcd.kill()
            etcd.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(data, ignore_errors=True)


def _table(name: str, b: dict[str, Any]) -> None:
    kinds = ", ".join(f"{k} {v}" for k, v in b["kinds_mb"].items())
    objects = ", ".join(f"{k} {v}" for k, v in b["objects_mb"].items())
    print(f"{name}: RSS {b['rss_mb']} MB ({kinds}); {b['threads']} threads {b['thread_names']}")
    print(f"  largest shared objects (MB): {objects}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="imports,world,synthetic,etcd")
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before measuring")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"imports"} and os.geteuid() != 0:
        sys.exit("the world and synthetic parts need root (network namespaces)")
    if "imports" in parts:
        res = imports()
        print(json.dumps({"part": "imports", **res}, sort_keys=True), flush=True)
        print(
            f"imports: 'import overlayd.cli.daemon_main' {res['daemon_import_s']} s "
            f"(-X importtime, least of {IMPORT_RUNS})"
            f"; interpreter alone RSS {res['interpreter_rss_mb']:.1f} MB"
            f"; with aiohttp {res['modules_with_aiohttp']} modules, "
            f"RSS {res['rss_with_aiohttp_mb']:.1f} MB"
        )
        print(f"  {'step':<50} {'RSS MB':>7} {'Python MB':>10} {'s':>6} {'modules':>8}")
        for name, step in res["steps"].items():
            print(
                f"  {name:<50} {step['rss_mb']:>7.1f} {step['python_mb']:>10.1f} "
                f"{step['s']:>6.3f} {step['modules']:>8}"
            )
    if "etcd" in parts:
        clients = etcd_clients()
        print(json.dumps({"part": "etcd", **clients}, sort_keys=True), flush=True)
        for name, c in clients.items():
            print(
                f"etcd client {name}: +{c['rss_mb']} MB RSS, +{c['threads']} threads, "
                f"+{c['modules']} modules, {c['s']} s (import, connect, 6 puts, list, watch)"
            )
    if "world" in parts:
        res = world(args.settle)
        print(json.dumps({"part": "world", **res}, sort_keys=True), flush=True)
        print(f"6 peers: RSS median {res['rss_median_mb']} MB, max {res['rss_max_mb']} MB")
        _table(f"  median host {res['median_host']}", res)
    if "synthetic" in parts:
        res = synthetic(args.peers, args.settle)
        print(json.dumps({"part": "synthetic", **res}, sort_keys=True), flush=True)
        _table(f"{args.peers} synthetic peers", res)
        print(f"  after malloc_trim(0): {res['after_trim_mb']} MB")
    if "traced" in parts:
        res = synthetic(args.peers, args.settle, traced=True)
        print(json.dumps({"part": "traced", **res}, sort_keys=True), flush=True)
        print(f"{args.peers} synthetic peers under tracemalloc: {res['traced_mb']} MB traced")
        for where, mb, count in res["top"]:
            print(f"  {mb:>6.2f} MB {count:>8} blocks  {where}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "inner":
        found = asyncio.run(
            _synthetic_inner(
                int(sys.argv[2]),
                sys.argv[3],
                Path(sys.argv[4]),
                float(sys.argv[5]),
                sys.argv[6] == "traced",
            )
        )
        print(json.dumps(found))
        sys.exit(0)
    sys.exit(main())
