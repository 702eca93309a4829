#!/usr/bin/env python3
"""``/metrics`` scrape time at many peers (issue 14): server side and over HTTP.

The agent of the component tests (in-memory store, fake data plane, fake path keeper: the
same ``Daemon``, status port and metrics as ``overlayd`` runs, no root) holds ``--peers``
leases in ``--sites`` sites; the paths of a ``--verified`` share of them are verified (the
others count as unverified: the scrape looks those up one by one), and each site has
probe RTTs in its histogram, so the scrape has the series a real network has. Then ``--scrapes``
scrapes, one at a time:

* *render*: the registry rendered on the daemon's event loop (``Metrics.text``: the
  families read from the daemon's state, one pass over the peers), what a scrape blocks
  the loop for;
* *http*: a GET of ``/metrics`` on the status port from a client thread, request to last
  byte (the render, aiohttp and the loopback connection).

Prints median/p99/max in ms and the body's size.

``.venv/bin/python scripts/bench_metrics.py [--peers 5000] [--sites 20] [--verified 0.98]
[--scrapes 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from ipaddress import IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families

from overlayd.store.memory import MemStore
from overlayd.values.lease import LeaseRecord
from tests.builders import config, node_lease
from tests.component.agent_harness import agent, until
from tests.component.fake_paths import FakePaths


def peer(n: int, sites: int) -> LeaseRecord:
    subnet = IPv4Network((0x0A800000 + (n << 8), 24))  # in 10.128.0.0/9
    return node_lease(n, f"192.0.2.{n % 250 + 1}", subnet=subnet, site=f"site{n % sites}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read()
    return time.perf_counter() - started, body


def figures(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name}: median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"


async def measure(peers: int, sites: int, verified: float, scrapes: int) -> None:
    store = MemStore()
    cfg = config(Network="10.128.0.0/9", Backend={"Type": "vxlan"})
    await store.put_config(cfg)
    lease_id = await store.grant(3600)
    for n in range(2, peers + 2):
        await store.create_lease(peer(n, sites), lease_id)
    paths, port = FakePaths(), free_port()
    with tempfile.TemporaryDirectory() as work:
        async with agent(Path(work), store=store, cfg=cfg, paths=paths, healthz_port=port) as a:

            async def all_planned() -> bool:
                return a.daemon.status.peers >= peers

            await until(all_planned, f"{peers} peers planned")
            for n in range(2, 2 + round(peers * verified)):
                paths.verify(IPv4Network((0x0A800000 + (n << 8), 24)))
            for n in range(sites):
                for rtt in (0.0004, 0.002, 0.02, 0.09):
                    a.daemon.metrics.probe_rtt(f"site{n}", rtt)
            await asyncio.sleep(1.0)  # the passes the verifications caused
            render = []
            for _ in range(scrapes):
                started = time.perf_counter()
                a.daemon.metrics.text()
                render.append(time.perf_counter() - started)
            http = []
            for _ in range(scrapes):
                took, body = await asyncio.to_thread(get, port)
                http.append(took)
            families = list(text_string_to_metric_families(body.decode()))
            peers_family = next(f for f in families if f.name == "overlayd_peers")
            kinds = {s.labels["kind"]: int(s.value) for s in peers_family.samples if s.value}
    print(f"{peers} peers in {sites} sites ({kinds}), {scrapes} scrapes")
    print(f"body: {len(body):,} bytes, {len(body.splitlines())} lines, {len(families)} families")
    print(figures("render (event loop)", render))
    print(figures("http GET /metrics", http))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--verified", type=float, default=0.98)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(measure(args.peers, args.sites, args.verified, args.scrapes))


if __name__ == "__main__":
    main()
