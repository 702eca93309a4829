"""The lease keeper on the in-memory store: the daemon's components run without etcd.

The same behaviours tests/integration/test_store.py checks against a real etcd; here the
etcd lease's TTL runs on a manual clock, so expiry needs no waiting for the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from overlayd.disk.state_dir import StateDir
from overlayd.store.lease_keeper import HeldLease, LeaseKeeper
from overlayd.store.memory import MemStore
from overlayd.store.memory_kv import ManualClock
from tests.builders import config, keeper_template

T = TypeVar("T")
TTL = 3  # renewal every second (the keeper's minimum)
POOL3 = config(Network="10.244.0.0/22")  # three allocatable /24s


def keeper(
    store: MemStore, state: Path, node: str = "node-a", node_id: str = "id-1"
) -> LeaseKeeper:
    template = keeper_template(node, node_id, POOL3.backend.vni)
    changes: list[HeldLease] = []
    return LeaseKeeper(store, POOL3, template, StateDir(state), TTL, changes.append)


def run(coro: Awaitable[T], timeout: float = 10.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


def test_acquire_binds_the_key_to_an_etcd_lease(tmp_path: Path) -> None:
    store = MemStore(clock=ManualClock())

    async def body() -> None:
        held = await keeper(store, tmp_path / "a").acquire()
        assert POOL3.is_allocatable(held.record.subnet)
        (stored,) = (await store.list_leases()).leases
        assert stored.record == held.record and stored.lease_id == held.lease_id
        # a restart with the same identity rebinds the same subnet to a new etcd lease
        again = await keeper(store, tmp_path / "b").acquire()
        assert again.record.subnet == held.record.subnet and again.lease_id != held.lease_id
        # another node gets another subnet
        other = await keeper(store, tmp_path / "c", "node-b", "id-2").acquire()
        assert other.record.subnet != held.record.subnet

    run(body())


def test_expired_lease_is_reacquired_by_keep(tmp_path: Path) -> None:
    clock = ManualClock()
    store = MemStore(clock=clock)

    async def body() -> None:
        k = keeper(store, tmp_path / "a")
        held = await k.acquire()
        task = asyncio.create_task(k.keep())
        try:
            clock.advance(TTL + 1)  # etcd expired our lease (we were away)
            store.expire_leases()
            assert (await store.list_leases()).leases == ()
            while k.held == held:
                await asyncio.sleep(0.05)
            assert k.held is not None and k.held.record.subnet == held.record.subnet
            (stored,) = (await store.list_leases()).leases
            assert stored.lease_id == k.held.lease_id != held.lease_id
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(body())


def test_deleted_lease_is_reacquired_at_once(tmp_path: Path) -> None:
    store = MemStore(clock=ManualClock())

    async def body() -> None:
        k = keeper(store, tmp_path / "a")
        held = await k.acquire()
        task = asyncio.create_task(k.keep())
        try:
            assert await store.delete_lease(held.record.subnet)  # overlayctl leases revoke
            k.notice(None, held.record.subnet)  # what the daemon's watch tells it
            while k.held == held:
                await asyncio.sleep(0.01)
            assert k.held is not None
            assert [s.subnet for s in (await store.list_leases()).leases] == [k.held.record.subnet]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(body(), timeout=0.9)  # before the first renewal would have noticed


def test_ttl_left_follows_the_grant_and_the_renewals(tmp_path: Path) -> None:
    async def body() -> tuple[float | None, float | None, float | None]:
        k = keeper(MemStore(clock=ManualClock()), tmp_path / "a")
        none = k.ttl_left()
        await k.acquire()
        granted = k.ttl_left()
        keeping = asyncio.create_task(k.keep())
        await asyncio.sleep(TTL / 3 * 2 + 0.5)  # two renewals (every TTL / 3 = 1 s)
        renewed = k.ttl_left()
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
        return none, granted, renewed

    none, granted, renewed = run(body())
    assert none is None
    assert granted is not None and TTL - 1 < granted <= TTL
    # renewed within the last second: more left than a lease never renewed would have
    assert renewed is not None and TTL - 1 < renewed <= TTL
