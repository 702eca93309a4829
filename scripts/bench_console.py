#!/usr/bin/env python3
"""The web console's render time at scale (issue 14): overview and matrix pages of a network
of ``--nodes`` synthetic nodes in ``--sites`` sites (MemStore: leases, gateway claims and a
status report per node, a few of them reporting unreachable peers).

Each page is asked for ``--rounds`` times after one warm-up. Figures: ``server``, the
server's time for one request that builds its view anew (the clock moves a second per
request): config and reservations read, view, matrix, jinja2 render (the handler, called
with a mocked request; leases, reports and gateways come from the console's watches, as
when it runs); ``reused``, the same when the last request's view is reused (nothing
changed within the second); ``trip``, a whole request through aiohttp's test client.
Prints median and p99 in ms. The issue's goal: < 300 ms server side at 5,000 nodes in 20
sites.

``.venv/bin/python scripts/bench_console.py [--nodes 5000] [--sites 20] [--rounds 30]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overlayd.console.live import Live
from overlayd.console.pages import Pages
from overlayd.console.security import Access
from overlayd.console.server import make_app
from overlayd.store.memory import MemStore
from overlayd.values.gateway_state import GatewayClaim
from tests.builders import config, node_lease
from tests.reports import node_report

NOW = 1_800_000_000.0


async def fill(store: MemStore, nodes: int, sites: int) -> None:
    await store.put_config(config(Network="10.0.0.0/8", Backend={"Type": "vxlan+wireguard"}))
    lease_id = await store.grant(3600)
    names = [f"node{n}" for n in range(1, nodes + 1)]
    for n, name in enumerate(names, start=1):
        site = f"site{n % sites}"
        subnet = IPv4Network((0x0A000000 + (n << 8), 24))
        record = node_lease(n, f"192.0.2.{n % 250 + 1}", subnet=subnet, site=site)
        await store.create_lease(record, lease_id)
        rtts = tuple(sorted((f"site{s}", 1.0 + s) for s in range(sites)))
        lost = (names[(n * 7) % nodes],) if n % 100 == 0 else ()  # 1 % report one loss
        report = node_report(
            name, site=site, subnet=subnet, site_rtts=rtts, unreachable=lost,
            unreachable_total=len(lost), paths=(("private", 250), ("public", nodes - 251)),
            written_at=NOW - 2,
        )  # fmt: skip
        await store.put_status_report(report, lease_id)
        if n <= sites:
            claim = GatewayClaim(site, name, record.node_id, subnet)
            await store.claim_gateway(site, claim, lease_id)


def figures(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.1f} ms   p99 {p99:7.1f} ms   (n={len(ms)})"


async def timed(call: Callable[[], Awaitable[object]], rounds: int) -> list[float]:
    await call()  # warm-up: templates compiled
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


async def main(nodes: int, sites: int, rounds: int) -> None:
    store = MemStore()
    start = time.perf_counter()
    await fill(store, nodes, sites)
    print(f"{nodes} nodes in {sites} sites written in {time.perf_counter() - start:.1f} s")
    access = Access("csrf-of-the-benchmark-0123456789")
    live = Live(store)
    following = asyncio.create_task(live.run())
    ticks = itertools.count()
    # cold: the clock moves a second per request, so every page builds its view again
    cold = Pages(store, live, access, lambda: NOW + next(ticks))
    warm = Pages(store, live, access, lambda: NOW)  # the view of the last request reused
    handlers: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
        "/": cold.overview,
        "/matrix": cold.matrix,
        "/nodes": cold.nodes,
    }
    reused = {"/": warm.overview, "/matrix": warm.matrix, "/nodes": warm.nodes}
    async with TestClient(TestServer(make_app(store, access, lambda: NOW))) as client:
        for path, handler in handlers.items():
            request = make_mocked_request("GET", path)
            server = await timed(lambda h=handler, r=request: h(r), rounds)  # type: ignore[misc]
            again = reused[path]
            cached = await timed(lambda h=again, r=request: h(r), rounds)  # type: ignore[misc]

            async def fetch(p: str = path) -> None:
                resp = await client.get(p)
                assert resp.status == 200
                await resp.read()

            trip = await timed(fetch, rounds)
            size = len(await (await client.get(path)).read()) // 1024
            print(f"{path:8} server {figures(server)}")
            print(f"{'':8} reused {figures(cached)}   (the same second, nothing changed)")
            print(f"{'':8} trip   {figures(trip)}   page {size} KiB")
    following.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.nodes, args.sites, args.rounds))
