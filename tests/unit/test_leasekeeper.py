"""The lease keeper against the in-memory store (tests/fake_store.py): own-lease integrity,
restarts that do not notice themselves, deletion and re-acquisition. No etcd, no root."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from overlayd.disk.state_dir import StateDir
from overlayd.store.api import StoredLease
from overlayd.store.lease_keeper import HeldLease, LeaseKeeper
from overlayd.values.config import NetworkConfig, parse_config
from overlayd.values.lease import LeaseRecord
from tests.builders import keeper_template
from tests.fake_store import FakeLeaseStore

CFG: NetworkConfig = parse_config('{"Network": "10.244.0.0/22"}')  # .1 .2 .3 allocatable
TTL = 60
OTHER_HOST = IPv4Address("192.0.2.66")


def template(node: str = "node-a", node_id: str = "id-a") -> LeaseRecord:
    return replace(keeper_template(node, node_id), private_ips=(IPv4Address("192.0.2.10"),))


class Node:
    """A keeper wired to the fake store as the daemon wires it: every change reaches
    ``notice`` through the store's watch."""

    def __init__(self, store: FakeLeaseStore, state: Path, ttl: int = TTL) -> None:
        self.store = store
        self.changes: list[HeldLease] = []
        self.keeper = LeaseKeeper(store, CFG, template(), StateDir(state), ttl, self.changes.append)
        store.watch(lambda subnet, stored, rev: self.keeper.notice(stored, subnet, rev))


def run(body: Callable[[], Awaitable[None]], timeout: float = 10) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), timeout)

    asyncio.run(main())


async def until(check: Callable[[], bool], timeout: float = 2.0) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not check():
        if loop.time() - t0 > timeout:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)
    return loop.time() - t0


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
    store = FakeLeaseStore()
    mine = replace(template(), subnet=IPv4Network("10.244.2.0/24"))

    async def body() -> None:
        previous_run = await store.grant(TTL)
        store.put_outside(mine, previous_run, by="previous run")
        node = Node(store, tmp_path / "s")
        held = await node.keeper.acquire()
        assert held.record == mine and held.lease_id != previous_run
        assert len(store.ours()) == 1  # one write of the key
        assert previous_run in store.revoked and held.lease_id not in store.revoked
        # the daemon's watch starts from the listing the claim was made from
        assert node.keeper.snapshot is not None
        for stale in node.keeper.snapshot.leases:
            node.keeper.notice(stale, stale.subnet)
        await keeping(node, lambda: asyncio.sleep(0.3))
        assert len(store.ours()) == 1 and node.changes == [held]

    caplog.set_level(logging.INFO, logger="overlayd.lease")
    run(body)
    assert warnings(caplog) == []


@pytest.mark.parametrize("other_lease", [False, True], ids=["same-etcd-lease", "other-lease"])
def test_foreign_value_is_restored_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, other_lease: bool
) -> None:
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()

        async def rewrite() -> None:
            lease = await store.grant(TTL) if other_lease else held.lease_id
            evil = replace(held.record, public_ip=OTHER_HOST, private_ips=(OTHER_HOST,))
            seen = store.put_outside(evil, lease)
            took = await until(
                lambda: store.keys[held.record.subnet].mod_revision > seen.mod_revision
            )
            now = store.keys[held.record.subnet]
            assert now.record == held.record and now.lease_id == held.lease_id
            assert took < 1.0
            assert store.ours()[-1].revision == now.mod_revision  # the keeper wrote it back
            found = [w for w in warnings(caplog) if "rewritten" in w]
            assert len(found) == 1, found
            assert "subnets/10.244." in found[0] and f"revision {seen.mod_revision}" in found[0]
            assert "192.0.2.66" in found[0]
            assert node.keeper.held is not None and node.keeper.held.revision == now.mod_revision
            await asyncio.sleep(0.2)  # nothing more: our own restore is not "foreign"
            assert len([w for w in warnings(caplog) if "rewritten" in w]) == 1
            assert len(node.changes) == 1  # same subnet, no re-acquisition

        await keeping(node, rewrite)

    run(body)


def test_undecodable_value_in_our_key_is_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()

        async def rewrite() -> None:
            store.put_raw_outside(held.record.subnet, "lease value is not JSON: " + "x" * 5000)
            await until(lambda: store.keys[held.record.subnet].record == held.record)

        await keeping(node, rewrite)

    run(body)
    (line,) = [w for w in warnings(caplog) if "rewritten" in w]
    assert "undecodable" in line and len(line) < 300


def test_changes_older_than_our_write_are_ignored(tmp_path: Path) -> None:
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()
        older = StoredLease(
            held.record.subnet, replace(held.record, node="x"), None, 7, held.revision - 1
        )
        node.keeper.notice(older, older.subnet)
        node.keeper.notice(None, older.subnet, held.revision - 1)
        await keeping(node, lambda: asyncio.sleep(0.2))
        assert len(store.ours()) == 1 and node.changes == [held]

    run(body)


def test_deleted_key_is_reacquired_and_the_old_lease_revoked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()

        async def delete() -> None:
            store.delete_outside(held.record.subnet)
            await until(lambda: len(node.changes) == 2)
            again = node.changes[1]
            assert again.record.subnet == held.record.subnet
            assert store.keys[held.record.subnet].lease_id == again.lease_id
            await until(lambda: held.lease_id in store.revoked)

        await keeping(node, delete)

    run(body)
    assert len([w for w in warnings(caplog) if "was deleted" in w]) == 1


def test_restore_retries_after_a_store_error(tmp_path: Path) -> None:
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()

        async def rewrite() -> None:
            store.fail_next = 1  # the first restore attempt meets an outage
            store.put_outside(replace(held.record, public_ip=OTHER_HOST), held.lease_id)
            await until(lambda: store.keys[held.record.subnet].record == held.record, 3.0)

        await keeping(node, rewrite)

    run(body)


def test_republish_is_not_taken_for_a_foreign_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watch may deliver our own write before the transaction returns."""
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()

        async def republish() -> None:
            await node.keeper.republish(replace(template(), public_ips=(OTHER_HOST,)))
            await asyncio.sleep(0.2)
            assert node.keeper.held is not None
            assert node.keeper.held.record.public_ips == (OTHER_HOST,)
            assert store.keys[held.record.subnet].record == node.keeper.held.record
            assert len(store.ours()) == 2

        await keeping(node, republish)

    run(body)
    assert warnings(caplog) == []


def test_expired_etcd_lease_is_reacquired(tmp_path: Path) -> None:
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s", ttl=3)  # renewed every second

    async def body() -> None:
        held = await node.keeper.acquire()
        store.alive.pop(held.lease_id)  # expired (its key stays in this fake)

        async def wait() -> None:
            await until(lambda: len(node.changes) == 2, 3.0)

        await keeping(node, wait)

    run(body)


def test_moved_subnet_releases_our_old_record(tmp_path: Path) -> None:
    """Our live record under a subnet no longer allocatable: we claim another one and
    revoke the old record's etcd lease (it would list us as our own peer)."""
    store = FakeLeaseStore()
    outside = replace(template(), subnet=IPv4Network("10.244.0.0/24"))  # .0 is not allocatable

    async def body() -> None:
        previous_run = await store.grant(TTL)
        store.put_outside(outside, previous_run, by="previous run")
        node = Node(store, tmp_path / "s")
        held = await node.keeper.acquire()
        assert held.record.subnet != outside.subnet
        assert previous_run in store.revoked and outside.subnet not in store.keys

    run(body)


def test_a_writer_in_a_loop_gets_one_warning_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()

        async def fight() -> None:
            for n in range(50):
                evil = replace(held.record, public_ip=OTHER_HOST + n)
                store.put_outside(evil, held.lease_id)
                await until(lambda: store.keys[held.record.subnet].record == held.record)

        await keeping(node, fight)

    run(body)
    lines = [w for w in warnings(caplog) if "rewritten" in w]
    assert 1 <= len(lines) <= 3, lines  # one a second (the loop takes about half a second)
    assert len(store.ours()) == 51  # every rewrite was restored


def test_republish_meeting_a_foreign_value_restores_instead_of_moving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watch is slower than our republish: its guard fails on a foreign value we have
    not heard of yet. The keeper looks, restores (with the new facts), stays put."""
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()
        store.unwatch_all()  # events are late: nobody is told of the foreign write
        store.put_outside(replace(held.record, public_ip=OTHER_HOST), held.lease_id)
        newer = replace(template(), public_ips=(OTHER_HOST,))

        async def republish() -> None:
            await node.keeper.republish(newer)
            wanted = replace(newer, subnet=held.record.subnet)
            await until(lambda: store.keys[held.record.subnet].record == wanted)
            now = store.keys[held.record.subnet]
            assert node.keeper.held is not None and node.keeper.held.record == now.record

        await keeping(node, republish)
        assert node.changes[-1].record.subnet == held.record.subnet

    run(body)
    assert len([w for w in warnings(caplog) if "rewritten" in w]) == 1


def test_restore_under_a_lost_etcd_lease_reacquires(tmp_path: Path) -> None:
    """Our etcd lease expired and someone wrote our key: the restore fails (no such lease),
    the keeper notices the lease is gone and claims again instead of retrying forever."""
    store = FakeLeaseStore()
    node = Node(store, tmp_path / "s")

    async def body() -> None:
        held = await node.keeper.acquire()
        store.alive.pop(held.lease_id)  # expired; in this fake its key stays

        async def rewrite() -> None:
            store.put_outside(replace(held.record, public_ip=OTHER_HOST))
            await until(lambda: len(node.changes) == 2, 5.0)
            assert node.changes[1].lease_id != held.lease_id

        await keeping(node, rewrite)

    run(body)
