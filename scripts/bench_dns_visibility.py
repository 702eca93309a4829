#!/usr/bin/env python3
"""How soon a new node's name is served (issue 13): lease write -> DNS answer.

The agent of the component tests (in-memory store, fake data plane, no probes: the same
``Daemon`` and ``NameService`` as ``overlayd`` runs) holds ``--peers`` leases and serves
DNS on loopback; then ``--writes`` new leases are written one at a time, and for each the
time until the responder answers the new node's name is measured (polled every
millisecond with a raw UDP query). Prints p50/p99/max in ms. The issue's goal: p99 < 100
ms at 5,000 peers.

``.venv/bin/python scripts/bench_dns_visibility.py [--peers 5000] [--writes 50]``
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import dns.message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overlayd.agent.names import NameService
from overlayd.store.memory import MemStore
from overlayd.values.lease import LeaseRecord
from overlayd.values.names import DnsListen
from tests.builders import config, node_lease
from tests.component.agent_harness import agent, until
from tests.component.fake_paths import FakePaths

ZONE = "overlay.internal"
LOOPBACK = IPv4Address("127.0.0.1")


def peer(n: int, node: str) -> LeaseRecord:
    subnet = IPv4Network((0x0A800000 + (n << 8), 24))  # in 10.128.0.0/9
    return node_lease(n, f"192.0.2.{n % 250 + 1}", node=node, subnet=subnet)


async def answers(names: NameService, name: str) -> bool:
    """Whether the responder answers ``name`` now: one datagram and its reply, read from
    the header (dnspython's client would cost more than the answer being measured)."""
    if not names.server.bound:
        return False
    loop = asyncio.get_running_loop()
    wire = dns.message.make_query(name, "A", use_edns=False).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (str(LOOPBACK), names.server.bound[0][1]))
        await loop.sock_sendall(sock, wire)
        reply = await asyncio.wait_for(loop.sock_recv(sock, 512), 2)
    return reply[:2] == wire[:2] and int.from_bytes(reply[6:8], "big") > 0  # ANCOUNT


async def measure(peers: int, writes: int) -> list[float]:
    store = MemStore()
    cfg = config(Network="10.128.0.0/9", Backend={"Type": "vxlan"})
    await store.put_config(cfg)
    lease_id = await store.grant(3600)
    for n in range(2, peers + 2):
        await store.create_lease(peer(n, f"peer{n}"), lease_id)
    took: list[float] = []
    listen = DnsListen(None, ((LOOPBACK, 0),))
    with tempfile.TemporaryDirectory() as work:
        async with agent(
            Path(work), store=store, cfg=cfg, paths=FakePaths(), dns_listen=listen
        ) as a:
            names = a.daemon.names
            while names is None:
                await asyncio.sleep(0.05)
                names = a.daemon.names
            last = f"peer{peers + 1}.{ZONE}"
            await until(lambda: answers(names, last), "every peer's name")
            for i in range(writes):
                n = peers + 2 + i
                t0 = time.perf_counter()
                await store.create_lease(peer(n, f"new{n}"), lease_id)
                while not await answers(names, f"new{n}.{ZONE}"):
                    await asyncio.sleep(0.001)
                took.append((time.perf_counter() - t0) * 1000)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--writes", type=int, default=50)
    args = parser.parse_args()
    took = sorted(asyncio.run(measure(args.peers, args.writes)))
    p99 = took[max(0, int(len(took) * 0.99) - 1)]
    p50 = statistics.median(took)
    print(f"{args.peers} peers, {len(took)} lease writes: name answered after "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {took[-1]:.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
