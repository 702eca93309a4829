"""What only the in-memory store has: its clock, lazy expiry and test hooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from ipaddress import IPv4Network

from overlayd.store.api import EventKind
from overlayd.store.memory import MemStore
from overlayd.store.memory_kv import ManualClock
from tests.builders import record


def test_expiry_is_noticed_by_the_next_call() -> None:
    clock = ManualClock()
    store = MemStore(clock=clock)

    async def body() -> None:
        lease = await store.grant(5)
        assert await store.create_lease(record("10.244.1.0/24"), lease)
        clock.advance(4.5)
        assert await store.ttl_left(lease) == 0  # truncated, as etcd's answer
        assert len((await store.list_leases()).leases) == 1
        clock.advance(0.5)
        assert (await store.list_leases()).leases == ()
        assert await store.keepalive(lease) == 0 and await store.ttl_left(lease) == -1

    asyncio.run(body())


def test_a_waiting_watch_wakes_for_an_expiry_on_the_real_clock() -> None:
    store = MemStore()  # time.monotonic

    async def body() -> None:
        lease = await store.grant(1)
        assert await store.create_lease(record("10.244.1.0/24"), lease)
        gen = store.watch_leases()
        assert (await anext(gen)).snapshot is not None
        batch = await asyncio.wait_for(anext(gen), 5)
        assert [(e.kind, e.lease.subnet) for e in batch.events] == [
            (EventKind.DELETE, IPv4Network("10.244.1.0/24"))
        ]
        assert isinstance(gen, AsyncGenerator)  # MemStore's watch is an async generator
        await gen.aclose()

    asyncio.run(body())


def test_raw_keys_versions_and_rebinding() -> None:
    store = MemStore(clock=ManualClock())

    async def body() -> None:
        first, second = await store.grant(30), await store.grant(30)
        store.put_raw("/x", "1", lease=first)
        store.put_raw("/x", "2", lease=second)  # the key moves to the second lease
        kv = store.get_raw("/x")
        assert kv is not None and kv.version == 2 and kv.lease == second
        assert kv.create_revision < kv.mod_revision == store.revision
        await store.revoke(first)
        assert store.get_raw("/x") is not None
        await store.revoke(second)
        assert store.get_raw("/x") is None

    asyncio.run(body())
