"""Running the agent (overlayd.agent.daemon.Daemon) in a test: in-memory store, fake data
plane, fake host effects; probes bound to 127.0.0.1 or a ``FakePaths``. No root.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from overlayd.agent.daemon import Daemon
from overlayd.agent.discovery import AddressDiscovery
from overlayd.agent.host import Host
from overlayd.agent.path_api import PathKeeping
from overlayd.agent.path_keeper import PathKeeper
from overlayd.disk.node_key import NodeKey
from overlayd.disk.state_dir import StateDir
from overlayd.planning.node import plan_node
from overlayd.probe.settings import ProbeConfig
from overlayd.store.api import StoreKeys
from overlayd.store.memory import MemStore
from overlayd.values.config import NetworkConfig
from overlayd.values.kernel_state import KernelState
from overlayd.values.lease import LeaseRecord
from tests.builders import config, daemon_options, record
from tests.component.fake_dataplane import VXLAN_INDEX, FakeDataPlane

NETWORK = "10.244.0.0/16"
TIMEOUT = 20.0  # generous: the machine is shared
LOOPBACK = IPv4Address("127.0.0.1")  # probes never leave the host


@dataclass
class FakeHost:
    """Records what the daemon would have done to the host."""

    nft: list[str] = field(default_factory=list)
    notified: list[str] = field(default_factory=list)
    forwarding: int = 0
    routed: list[tuple[int, IPv4Address, tuple[str, ...]]] = field(default_factory=list)

    def host(self) -> Host:
        def forward() -> None:
            self.forwarding += 1

        def route(ifindex: int, server: IPv4Address, domains: tuple[str, ...]) -> bool:
            self.routed.append((ifindex, server, domains))
            return True

        return Host(
            run_nft=self.nft.append,
            read_nft=lambda family, table: None,
            notify=self.notified.append,
            enable_forwarding=forward,
            route_zone=route,
        )


@dataclass
class Agent:
    daemon: Daemon
    store: MemStore
    dp: FakeDataPlane
    cfg: NetworkConfig
    host: FakeHost
    node: str = "self"

    async def me(self) -> LeaseRecord:
        """Our own lease as the store holds it."""
        snap = await self.store.list_leases()
        mine = [s.record for s in snap.leases if s.record and s.record.node == self.node]
        assert len(mine) == 1, mine
        return mine[0]

    async def expected(self) -> KernelState:
        """The VXLAN entries the store's leases plan for us (full plan, no probes)."""
        snap = await self.store.list_leases()
        records = {s.subnet: s.record for s in snap.leases if s.record is not None}
        return plan_node(self.cfg, await self.me(), records).vxlan.state


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until true (fails after TIMEOUT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def free_peer(store: MemStore, n: int) -> int:
    """``n``, or the next number whose subnet (10.244.<n>.0/24) no lease holds: a running
    agent leased a random free subnet, which a peer added later must not collide with."""
    held = {s.subnet for s in (await store.list_leases()).leases}
    while IPv4Network(f"10.244.{n}.0/24") in held:
        n += 1
    return n


async def add_peer(store: MemStore, n: int, **fields: Any) -> LeaseRecord:
    """Peer ``n``'s lease (10.244.<n>.0/24, node ``peer<n>``) written to ``store``."""
    rec = record(f"10.244.{n}.0/24", node=f"peer{n}", node_id=f"id{n}", n=n, **fields)
    await store.create_lease(rec, await store.grant(3600))
    return rec


@asynccontextmanager
async def agent(
    tmp_path: Path,
    peers: int = 0,
    store: MemStore | None = None,
    dp: FakeDataPlane | None = None,
    *,
    cfg: NetworkConfig | None = None,
    paths: PathKeeping | None = None,
    discovery: AddressDiscovery | None = None,
    node: str = "self",
    **options: Any,
) -> AsyncIterator[Agent]:
    """A running agent named ``node`` (state under ``tmp_path / node``) and ``peers``
    peers in ``store``; ``cfg``: the network (default: VXLAN over ``NETWORK``), written
    unless the store has one; ``paths``: default a real path keeper on 127.0.0.1;
    ``discovery``: what learns our public address (default none); ``options``:
    ``DaemonOptions`` fields."""
    store = store or MemStore()
    cfg = cfg or config(Network=NETWORK, Backend={"Type": "vxlan"})
    if store.get_raw(StoreKeys(store.prefix).config) is None:
        await store.put_config(cfg)
    for n in range(2, 2 + peers):
        await add_peer(store, n)
    opts = daemon_options(tmp_path / node, node_name=node, lease_ttl=60, **options)
    dp = dp or FakeDataPlane()
    fake_host = FakeHost()
    key = NodeKey.load_or_create(opts.state_dir)
    paths = paths or PathKeeper(key, ProbeConfig(port=0, bind=LOOPBACK))
    daemon = Daemon(
        opts, store, dp, StateDir(opts.state_dir), key, paths, host=fake_host.host(),
        discovery=discovery,
    )  # fmt: skip
    running = asyncio.create_task(daemon.run())
    try:
        yield Agent(daemon, store, dp, cfg, fake_host, node)
    finally:
        daemon.stop()
        await asyncio.wait_for(running, TIMEOUT)


def converged(a: Agent) -> Callable[[], Awaitable[bool]]:
    """Whether the fake data plane's VXLAN device equals the full plan of the store."""

    async def check() -> bool:
        if not a.daemon.status.snapshot_loaded or a.daemon.status.reconciles == 0:
            return False
        return a.dp.state(VXLAN_INDEX) == await a.expected()

    return check
