"""The agent (overlayd.agent.daemon.Daemon) with the in-memory store and a stateful fake data plane.

No root, no etcd, no kernel: what the daemon programs is read from ``FakeDataPlane`` and
compared with ``plan_node`` of what the store holds. Host effects (nft, sd_notify, the
forwarding sysctl) are fakes passed in; probes bind 127.0.0.1, so nothing leaves the host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from overlayd.agent.daemon import Daemon
from overlayd.agent.host import Host
from overlayd.agent.path_keeper import PathKeeper
from overlayd.disk.node_key import NodeKey
from overlayd.disk.state_dir import StateDir
from overlayd.planning.node import plan_node
from overlayd.probe.prober import ProbeConfig
from overlayd.store.api import DEFAULT_PREFIX, Snapshot, StoreKeys, WatchBatch
from overlayd.store.memory import MemStore
from overlayd.values.config import NetworkConfig
from overlayd.values.kernel_state import KernelState, RouteEntry
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

    def host(self) -> Host:
        def forward() -> None:
            self.forwarding += 1

        return Host(
            run_nft=self.nft.append,
            read_nft=lambda family, table: None,
            notify=self.notified.append,
            enable_forwarding=forward,
        )


class GatedStore(MemStore):
    """A MemStore whose lease watch delivers nothing until ``open`` is set: the daemon runs
    as before its first snapshot has loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()

    async def watch_leases(self, first: Snapshot | None = None) -> AsyncIterator[WatchBatch]:
        await self.open.wait()
        async for batch in super().watch_leases(first):
            yield batch


@dataclass
class Agent:
    daemon: Daemon
    store: MemStore
    dp: FakeDataPlane
    cfg: NetworkConfig
    host: FakeHost

    async def me(self) -> LeaseRecord:
        """Our own lease as the store holds it."""
        snap = await self.store.list_leases()
        mine = [s.record for s in snap.leases if s.record and s.record.node == "self"]
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


async def add_peer(store: MemStore, n: int) -> LeaseRecord:
    rec = record(f"10.244.{n}.0/24", node=f"peer{n}", node_id=f"id{n}", n=n)
    await store.create_lease(rec, await store.grant(3600))
    return rec


@asynccontextmanager
async def agent(
    tmp_path: Path, peers: int = 0, store: MemStore | None = None, dp: FakeDataPlane | None = None
) -> AsyncIterator[Agent]:
    store = store or MemStore()
    cfg = config(Network=NETWORK, Backend={"Type": "vxlan"})
    await store.put_config(cfg)
    for n in range(2, 2 + peers):
        await add_peer(store, n)
    opts = daemon_options(tmp_path, node_name="self", lease_ttl=60)
    dp = dp or FakeDataPlane()
    fake_host = FakeHost()
    key = NodeKey.load_or_create(opts.state_dir)
    paths = PathKeeper(key, ProbeConfig(port=0, bind=LOOPBACK))
    daemon = Daemon(opts, store, dp, StateDir(opts.state_dir), key, paths, host=fake_host.host())
    running = asyncio.create_task(daemon.run())
    try:
        yield Agent(daemon, store, dp, cfg, fake_host)
    finally:
        daemon.stop()
        await asyncio.wait_for(running, TIMEOUT)


def converged(a: Agent) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        if not a.daemon.status.snapshot_loaded or a.daemon.status.reconciles == 0:
            return False
        return a.dp.state(VXLAN_INDEX) == await a.expected()

    return check


def test_converges_from_a_snapshot_of_n_leases(tmp_path: Path) -> None:
    async def body() -> None:
        async with agent(tmp_path, peers=6) as a:
            await until(converged(a), "the fake data plane to equal the plan")
            state = a.dp.state(VXLAN_INDEX)
            assert len(state.routes) == len(state.neighs) == len(state.fdbs) == 6
            assert a.host.notified == ["READY=1"]
            assert (tmp_path / "subnet.env").exists()

    asyncio.run(body())


def test_nothing_is_deleted_before_the_first_snapshot(tmp_path: Path) -> None:
    stale = RouteEntry(IPv4Network("10.244.99.0/24"), IPv4Address("10.244.99.0"))

    async def body() -> None:
        store, dp = GatedStore(), FakeDataPlane()
        dp.preload(VXLAN_INDEX, KernelState(routes={stale.dst: stale}))
        async with agent(tmp_path, peers=2, store=store, dp=dp) as a:

            async def reconciled() -> bool:
                return a.daemon.status.reconciles > 0

            await until(reconciled, "a reconcile pass before the snapshot")
            assert not a.daemon.status.snapshot_loaded
            assert dp.state(VXLAN_INDEX).routes.get(stale.dst) == stale  # survived
            store.open.set()
            await until(converged(a), "convergence once the snapshot loaded")
            assert stale.dst not in dp.state(VXLAN_INDEX).routes

    asyncio.run(body())


def test_a_deleted_lease_loses_its_entries(tmp_path: Path) -> None:
    async def body() -> None:
        async with agent(tmp_path, peers=3) as a:
            await until(converged(a), "convergence")
            gone = IPv4Network("10.244.3.0/24")
            assert gone in a.dp.state(VXLAN_INDEX).routes
            assert await a.store.delete_lease(gone)
            await until(converged(a), "the deleted lease's entries removed")
            state = a.dp.state(VXLAN_INDEX)
            assert gone not in state.routes and len(state.routes) == 2

    asyncio.run(body())


def test_own_lease_lost_is_reacquired(tmp_path: Path) -> None:
    async def body() -> None:
        async with agent(tmp_path, peers=2) as a:
            await until(converged(a), "convergence")
            mine = (await a.me()).subnet
            assert await a.store.delete_lease(mine)  # as `etcdctl del` would

            async def back() -> bool:
                snap = await a.store.list_leases()
                return any(s.record and s.record.node == "self" for s in snap.leases)

            await until(back, "our lease written again")
            await until(converged(a), "convergence after re-acquiring")
            assert (await a.me()).subnet == mine  # the same subnet: peers' routes stay valid

    asyncio.run(body())


def test_malformed_records_are_ignored_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="overlayd")
    bad = IPv4Network("10.244.50.0/24")

    async def body() -> None:
        async with agent(tmp_path, peers=3) as a:
            a.store.put_raw(StoreKeys(DEFAULT_PREFIX).lease(bad), "{not json")
            await until(converged(a), "the well-formed leases converged")
            await add_peer(a.store, 7)  # more events and passes after the bad record
            await until(converged(a), "convergence with a later peer")
            assert bad not in a.dp.state(VXLAN_INDEX).routes
            assert len(a.dp.state(VXLAN_INDEX).routes) == 4

    asyncio.run(body())
    lines = [r.getMessage() for r in caplog.records if "ignoring malformed lease" in r.getMessage()]
    assert len(lines) == 1, lines
    assert str(bad) in lines[0]


def test_own_etcd_lease_revoked_is_reacquired(tmp_path: Path) -> None:
    """The etcd lease itself is gone (revoked, as after expiry): our key vanished with it;
    the agent claims again on a new etcd lease and stays converged."""

    async def body() -> None:
        async with agent(tmp_path, peers=2) as a:
            await until(converged(a), "convergence")
            snap = await a.store.list_leases()
            (old,) = [s for s in snap.leases if s.record and s.record.node == "self"]
            await a.store.revoke(old.lease_id)

            async def back() -> bool:
                snap = await a.store.list_leases()
                mine = [s for s in snap.leases if s.record and s.record.node == "self"]
                return bool(mine) and mine[0].lease_id != old.lease_id

            await until(back, "our lease claimed again on a new etcd lease")
            await until(converged(a), "convergence after re-acquiring")

    asyncio.run(body())
