"""The agent (overlayd.agent.daemon.Daemon) with the in-memory store and a stateful fake data plane.

No root, no etcd, no kernel: what the daemon programs is read from ``FakeDataPlane`` and
compared with ``plan_node`` of what the store holds. Host effects (nft, sd_notify, the
forwarding sysctl) are fakes passed in; probes bind 127.0.0.1, so nothing leaves the host
(the harness: tests/component/agent_harness.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from overlayd.store.api import DEFAULT_PREFIX, Snapshot, StoreKeys, WatchBatch
from overlayd.store.memory import MemStore
from overlayd.values.kernel_state import KernelState, RouteEntry
from tests.builders import wg_key
from tests.component.agent_harness import add_peer, agent, converged, until
from tests.component.fake_dataplane import VXLAN_INDEX, FakeDataPlane


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


def test_converges_from_a_snapshot_of_n_leases(tmp_path: Path) -> None:
    async def body() -> None:
        async with agent(tmp_path, peers=6) as a:
            await until(converged(a), "the fake data plane to equal the plan")
            state = a.dp.state(VXLAN_INDEX)
            assert len(state.routes) == len(state.neighs) == len(state.fdbs) == 6
            assert a.host.notified == ["READY=1"]
            assert (tmp_path / "self" / "subnet.env").exists()

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


def test_a_peers_new_key_is_logged_even_amid_lease_churn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotation makes peers republish and the kernel passes log: the peer's new public
    key still gets its own line (it is a security event), not only a count."""
    caplog.set_level(logging.INFO, logger="overlayd")
    rotated: list[str] = []

    async def body() -> None:
        async with agent(tmp_path, peers=3) as a:
            await until(converged(a), "convergence")
            for n in range(6):  # churn: the peers change their leases, one after the other
                snap = await a.store.list_leases()
                peers = sorted(
                    (s.record for s in snap.leases if s.record and s.record.node != a.node),
                    key=lambda r: r.node,
                )
                old = peers[n % len(peers)]
                moved = dataclasses.replace(old, public_ip=IPv4Address(f"192.0.2.{100 + n}"))
                await a.store.replace_lease(old, moved, await a.store.grant(3600))
            snap = await a.store.list_leases()
            old = min(
                (s.record for s in snap.leases if s.record and s.record.node != a.node),
                key=lambda r: r.node,
            )
            rotated.append(old.node)
            new = dataclasses.replace(old, public_key=wg_key(77))
            await a.store.replace_lease(old, new, await a.store.grant(3600))
            await until(converged(a), "convergence after the churn")

    asyncio.run(body())
    lines = [r.getMessage() for r in caplog.records if "has a new public key" in r.getMessage()]
    assert len(lines) == 1 and rotated[0] in lines[0], lines
