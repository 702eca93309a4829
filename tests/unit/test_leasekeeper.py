"""The lease keeper on the in-memory store (MemStore, its etcd leases on a ManualClock):
own-lease integrity, restarts that do not notice themselves, deletion and re-acquisition.
No etcd, no root.

``Watched`` is MemStore with two things a test needs of etcd that MemStore does not do by
itself: the harshest order a real watch can deliver in (our write's event reaches the
keeper before the transaction's response), and an outage on the next rebinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from overlayd.disk.state_dir import StateDir
from overlayd.store.api import EventKind, StoredLease, StoreKeys
from overlayd.store.keyspace import stored_lease
from overlayd.store.lease_keeper import HeldLease, LeaseKeeper
from overlayd.store.memory import MemStore
from overlayd.store.memory_kv import ManualClock
from overlayd.values.config import NetworkConfig, parse_config
from overlayd.values.errors import StoreError
from overlayd.values.lease import LeaseRecord
from tests.builders import keeper_template

CFG: NetworkConfig = parse_config('{"Network": "10.244.0.0/22"}')  # .1 .2 .3 allocatable
TTL = 60
OTHER_HOST = IPv4Address("192.0.2.66")


def template(node: str = "node-a", node_id: str = "id-a") -> LeaseRecord:
    return replace(keeper_template(node, node_id), private_ips=(IPv4Address("192.0.2.10"),))


class Watched(MemStore):
    """A MemStore whose lease writes return only once the watch of ``Node.watching`` has
    handed their event to the keeper (``watched_to``: the revision it has delivered, None
    while nobody watches); ``fail_rebinds``: how many next rebinds meet an outage."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        super().__init__(clock=self.clock)
        self.keys = StoreKeys(self.prefix)
        self.watched_to: int | None = None
        self.fail_rebinds = 0

    async def create_lease(self, record: LeaseRecord, lease_id: int) -> int:
        return await self._reply(await super().create_lease(record, lease_id))

    async def rebind_lease(self, record: LeaseRecord, lease_id: int, mod_revision: int) -> int:
        if self.fail_rebinds > 0:
            self.fail_rebinds -= 1
            raise StoreError("etcd lease transaction failed: UNAVAILABLE: test outage")
        return await self._reply(await super().rebind_lease(record, lease_id, mod_revision))

    async def replace_lease(self, old: LeaseRecord, new: LeaseRecord, lease_id: int) -> int:
        return await self._reply(await super().replace_lease(old, new, lease_id))

    async def _reply(self, revision: int) -> int:
        while revision and self.watched_to is not None and self.watched_to < revision:
            await asyncio.sleep(0)  # the watch's turn: the event first
        return revision

    # -- what an outside writer (an administrator, an attacker, a previous run) does ----

    def put_outside(self, record: LeaseRecord, lease_id: int = 0) -> StoredLease:
        key = self.keys.lease(record.subnet)
        self.put_raw(key, record.to_json(), lease_id)
        return self.stored(record.subnet)

    def stored(self, subnet: IPv4Network) -> StoredLease:
        """The lease under ``subnet``'s key now (it must exist)."""
        kv = self.get_raw(self.keys.lease(subnet))
        found = stored_lease(self.keys, kv) if kv is not None else None
        assert found is not None, subnet
        return found

    def version(self, subnet: IPv4Network) -> int:
        """How many puts the key has had since it was created (etcd's version)."""
        kv = self.get_raw(self.keys.lease(subnet))
        return kv.version if kv is not None else 0

    async def revoked(self, lease_id: int) -> bool:
        return await self.ttl_left(lease_id) < 0


class Node:
    """A keeper wired to the store as the daemon wires it: within ``watching``, every
    change reaches ``notice`` through the store's lease watch."""

    def __init__(self, store: Watched, state: Path, ttl: int = TTL) -> None:
        self.store = store
        self.changes: list[HeldLease] = []
        self.keeper = LeaseKeeper(store, CFG, template(), StateDir(state), ttl, self.changes.append)

    async def _follow(self) -> None:
        async for batch in self.store.watch_leases():
            if batch.snapshot is not None:
                for stored in batch.snapshot.leases:
                    self.keeper.notice(stored, stored.subnet)
                self.store.watched_to = batch.snapshot.revision
            for event in batch.events:
                gone = event.kind is EventKind.DELETE
                lease = event.lease
                self.keeper.notice(None if gone else lease, lease.subnet, lease.mod_revision)
                self.store.watched_to = lease.mod_revision

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """The store's lease watch feeding the keeper, from its first snapshot on."""
        task = asyncio.create_task(self._follow())
        try:
            await until(lambda: self.store.watched_to is not None)
            yield
        finally:
            self.store.watched_to = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def run(body: Callable[[], Awaitable[None]], timeout: float = 10) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), timeout)

    asyncio.run(main())


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 2.0) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return loop.time() - t0
        if loop.time() - t0 > timeout:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def keeping(node: Node, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(node.keeper.keep())
    try:
        await body()
        assert not task.done(), task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_restart_writes_the_key_once_and_notices_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart finds its live lease, rebinds it once to a fresh etcd lease, revokes the
    old one, and the listing it claimed from (handed to the watch) is not 'taken over'."""
    store = Watched()
    mine = replace(template(), subnet=IPv4Network("10.244.2.0/24"))

    async def body() -> None:
        previous_run = await store.grant(TTL)
        store.put_outside(mine, previous_run)
        node = Node(store, tmp_path / "s")
        async with node.watching():
            held = await node.keeper.acquire()
            assert held.record == mine and held.lease_id != previous_run
            assert store.version(mine.subnet) == 2  # the previous run's write, and one of ours
            assert await store.revoked(previous_run) and not await store.revoked(held.lease_id)
            # the daemon's watch starts from the listing the claim was made from
            assert node.keeper.snapshot is not None
            for stale in node.keeper.snapshot.leases:
                node.keeper.notice(stale, stale.subnet)
            await keeping(node, lambda: asyncio.sleep(0.3))
            assert store.version(mine.subnet) == 2 and node.changes == [held]

    caplog.set_level(logging.INFO, logger="overlayd.lease")
    run(body)
    assert warnings(caplog) == []


@pytest.mark.parametrize("other_lease", [False, True], ids=["same-etcd-lease", "other-lease"])
def test_foreign_value_is_restored_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, other_lease: bool
) -> None:
    store = Watched()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()
        subnet = held.record.subnet

        async def rewrite() -> None:
            lease = await store.grant(TTL) if other_lease else held.lease_id
            evil = replace(held.record, public_ip=OTHER_HOST, private_ips=(OTHER_HOST,))
            seen = store.put_outside(evil, lease)
            took = await until(lambda: store.stored(subnet).mod_revision > seen.mod_revision)
            now = store.stored(subnet)
            assert now.record == held.record and now.lease_id == held.lease_id
            assert took < 1.0
            assert store.version(subnet) == 3  # ours, theirs, ours: the keeper wrote it back
            found = [w for w in warnings(caplog) if "rewritten" in w]
            assert len(found) == 1, found
            assert "subnets/10.244." in found[0] and f"revision {seen.mod_revision}" in found[0]
            assert "192.0.2.66" in found[0]
            assert node.keeper.held is not None and node.keeper.held.revision == now.mod_revision
            await asyncio.sleep(0.2)  # nothing more: our own restore is not "foreign"
            assert len([w for w in warnings(caplog) if "rewritten" in w]) == 1
            assert len(node.changes) == 1  # same subnet, no re-acquisition

        async with node.watching():
            await keeping(node, rewrite)

    run(body)


def test_undecodable_value_in_our_key_is_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Watched()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()
        subnet = held.record.subnet

        async def rewrite() -> None:
            store.put_raw(store.keys.lease(subnet), "lease value is not JSON: " + "x" * 5000)
            await until(lambda: store.stored(subnet).record == held.record)

        async with node.watching():
            await keeping(node, rewrite)

    run(body)
    (line,) = [w for w in warnings(caplog) if "rewritten" in w]
    assert "undecodable" in line and len(line) < 300


def test_changes_older_than_our_write_are_ignored(tmp_path: Path) -> None:
    store = Watched()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        async with node.watching():
            held = await node.keeper.acquire()
            older = StoredLease(
                held.record.subnet, replace(held.record, node="x"), None, 7, held.revision - 1
            )
            node.keeper.notice(older, older.subnet)
            node.keeper.notice(None, older.subnet, held.revision - 1)
            await keeping(node, lambda: asyncio.sleep(0.2))
            assert store.version(held.record.subnet) == 1 and node.changes == [held]

    run(body)


def test_deleted_key_is_reacquired_and_the_old_lease_revoked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Watched()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()

        async def delete() -> None:
            assert await store.delete_lease(held.record.subnet)
            await until(lambda: len(node.changes) == 2)
            again = node.changes[1]
            assert again.record.subnet == held.record.subnet
            assert store.stored(held.record.subnet).lease_id == again.lease_id
            await until(lambda: store.revoked(held.lease_id))

        async with node.watching():
            await keeping(node, delete)

    run(body)
    assert len([w for w in warnings(caplog) if "was deleted" in w]) == 1


def test_restore_retries_after_a_store_error(tmp_path: Path) -> None:
    store = Watched()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()
        subnet = held.record.subnet

        async def rewrite() -> None:
            store.fail_rebinds = 1  # the first restore attempt meets an outage
            store.put_outside(replace(held.record, public_ip=OTHER_HOST), held.lease_id)
            await until(lambda: store.stored(subnet).record == held.record, 3.0)
            assert store.fail_rebinds == 0

        async with node.watching():
            await keeping(node, rewrite)

    run(body)


def test_republish_is_not_taken_for_a_foreign_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watch may deliver our own write before the transaction returns."""
    store = Watched()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()

        async def republish() -> None:
            await node.keeper.republish(replace(template(), public_ips=(OTHER_HOST,)))
            await asyncio.sleep(0.2)
            assert node.keeper.held is not None
            assert node.keeper.held.record.public_ips == (OTHER_HOST,)
            assert store.stored(held.record.subnet).record == node.keeper.held.record
            assert store.version(held.record.subnet) == 2

        async with node.watching():
            await keeping(node, republish)

    run(body)
    assert warnings(caplog) == []


def test_moved_subnet_releases_our_old_record(tmp_path: Path) -> None:
    """Our live record under a subnet no longer allocatable: we claim another one and
    revoke the old record's etcd lease (it would list us as our own peer)."""
    store = Watched()
    outside = replace(template(), subnet=IPv4Network("10.244.0.0/24"))  # .0 is not allocatable

    async def body() -> None:
        previous_run = await store.grant(TTL)
        store.put_outside(outside, previous_run)
        node = Node(store, tmp_path / "s")
        held = await node.keeper.acquire()
        assert held.record.subnet != outside.subnet
        assert await store.revoked(previous_run)
        assert store.get_raw(store.keys.lease(outside.subnet)) is None

    run(body)


def test_a_writer_in_a_loop_gets_one_warning_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Watched()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()
        subnet = held.record.subnet

        async def fight() -> None:
            for n in range(50):
                evil = replace(held.record, public_ip=OTHER_HOST + n)
                store.put_outside(evil, held.lease_id)
                await until(lambda: store.stored(subnet).record == held.record)

        async with node.watching():
            await keeping(node, fight)
        assert store.version(subnet) == 1 + 50 + 50  # every rewrite was restored

    run(body)
    lines = [w for w in warnings(caplog) if "rewritten" in w]
    assert 1 <= len(lines) <= 3, lines  # one a second (the loop takes about half a second)


def test_republish_meeting_a_foreign_value_restores_instead_of_moving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watch is slower than our republish: its guard fails on a foreign value we have
    not heard of yet. The keeper looks, restores (with the new facts), stays put."""
    store = Watched()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()
        subnet = held.record.subnet
        # no watch: events are late, nobody is told of the foreign write
        store.put_outside(replace(held.record, public_ip=OTHER_HOST), held.lease_id)
        newer = replace(template(), public_ips=(OTHER_HOST,))

        async def republish() -> None:
            await node.keeper.republish(newer)
            wanted = replace(newer, subnet=subnet)
            await until(lambda: store.stored(subnet).record == wanted)
            now = store.stored(subnet)
            assert node.keeper.held is not None and node.keeper.held.record == now.record

        await keeping(node, republish)
        assert node.changes[-1].record.subnet == subnet

    run(body)
    assert len([w for w in warnings(caplog) if "rewritten" in w]) == 1


def test_restore_under_a_lost_etcd_lease_reacquires(tmp_path: Path) -> None:
    """Our etcd lease expired and someone wrote our key: the restore fails (no such lease),
    the keeper notices the lease is gone and claims again instead of retrying forever."""
    store = Watched()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()

        async def rewrite() -> None:
            store.put_outside(replace(held.record, public_ip=OTHER_HOST))  # no etcd lease
            store.clock.advance(TTL + 1)  # and ours expires (our key no longer on it)
            await until(lambda: len(node.changes) == 2, 5.0)
            assert node.changes[1].lease_id != held.lease_id

        async with node.watching():
            await keeping(node, rewrite)

    run(body)
