"""EtcdStore and LeaseKeeper against a real etcd on 127.0.0.1 (free ports, throwaway data dir).

Only what needs the real etcd: the keys as etcdctl sees them, and the lease keeper racing,
expiring and being overwritten on it. What both stores do alike (transactions, leases,
listing, watches, compaction) is tests/component/test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import IPv4Network
from itertools import count
from pathlib import Path
from typing import Any, TypeVar

import pytest

from overlayd.disk.state_dir import StateDir
from overlayd.store.api import StoredLease
from overlayd.store.etcd import EtcdSettings, EtcdStore
from overlayd.store.lease_keeper import HeldLease, LeaseKeeper
from overlayd.values.config import NetworkConfig, parse_config
from overlayd.values.errors import PoolExhaustedError
from overlayd.values.lease import LeaseRecord, decode_lease, subnet_key_name
from tests.builders import keeper_template, record
from tests.lab.etcd import ETCDCTL, EtcdServer

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (integration test)"),
    pytest.mark.skipif(not Path(ETCDCTL).exists(), reason="needs etcd and etcdctl"),
]

T = TypeVar("T")
_prefixes = count()
TTL = 30


class Etcd:
    """The shared lab etcd plus ``etcdctl`` for writing what overlayd itself never writes."""

    def __init__(self, server: EtcdServer) -> None:
        self.server = server
        self.endpoint = server.endpoint

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ETCDCTL, f"--endpoints={self.server.url}", "--command-timeout=5s", *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=15,
            env={**os.environ, "ETCDCTL_API": "3"},
        )


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    try:
        server.start().wait_healthy()
        yield Etcd(server)
    finally:
        server.kill()


@pytest.fixture
def prefix() -> str:
    return f"/t{os.getpid()}-{next(_prefixes)}/network"


def run(coro_fn: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(main())


async def open_store(etcd: Etcd, prefix: str) -> EtcdStore:
    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,), prefix=prefix))
    await store.connect()
    return store


def run_with_store(etcd: Etcd, prefix: str, body: Callable[[EtcdStore], Awaitable[None]]) -> None:
    """Run ``body`` with a store connected to ``etcd`` under ``prefix``, closed afterwards."""

    async def main() -> None:
        store = await open_store(etcd, prefix)
        try:
            await body(store)
        finally:
            await store.close()

    run(main)


def cfg(**fields: Any) -> NetworkConfig:
    return parse_config(json.dumps(fields))


# -- what only etcd can tell: the keys as etcdctl (and flannel) see them ------------------


def test_keys_are_flannels_as_etcdctl_sees_them(etcd: Etcd, prefix: str) -> None:
    """The config is flannel's JSON, a lease key holds its record bound to its etcd lease,
    a reservation has no etcd lease; a config flannel wrote is read as-is. What the stores
    do with the keys is tests/component/test_store_contract.py, for MemStore and etcd."""

    async def body(store: EtcdStore) -> None:
        c = cfg(Network="10.50.0.0/16", SubnetLen=26, Backend={"Type": "vxlan", "VNI": 9})
        await store.put_config(c)
        raw = json.loads(etcd.ctl("get", "--print-value-only", f"{prefix}/config").stdout)
        assert raw["Network"] == "10.50.0.0/16" and raw["SubnetLen"] == 26
        etcd.ctl("put", f"{prefix}/config", '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
        assert (await store.get_config()).network == IPv4Network("10.5.0.0/16")
        a = record("10.244.3.0/24", "node-a", "id-a", 1)
        lease = await store.grant(TTL)
        assert await store.create_lease(a, lease)
        key = f"{prefix}/subnets/10.244.3.0-24"
        assert decode_lease(a.subnet, etcd.ctl("get", "--print-value-only", key).stdout) == a
        assert key in etcd.ctl("lease", "timetolive", f"{lease:x}", "--keys").stdout
        await store.put_reservation(a.subnet, "node-a")
        out = etcd.ctl("get", "-w", "json", f"{prefix}/reservations/10.244.3.0-24").stdout
        assert "lease" not in json.loads(out)["kvs"][0]  # permanent: no etcd lease attached

    run_with_store(etcd, prefix, body)


# -- LeaseKeeper ----------------------------------------------------------------------


class Keeper:
    """A LeaseKeeper with its own store connection, state dir and change log."""

    def __init__(
        self,
        etcd: Etcd,
        prefix: str,
        c: NetworkConfig,
        state: Path,
        node: str,
        node_id: str,
        ttl: int = TTL,
    ) -> None:
        self.etcd, self.prefix, self.cfg, self.state, self.ttl = etcd, prefix, c, state, ttl
        self.node, self.node_id = node, node_id
        self.changes: list[HeldLease] = []
        self.store: EtcdStore | None = None
        self.keeper: LeaseKeeper | None = None

    async def __aenter__(self) -> LeaseKeeper:
        self.store = await open_store(self.etcd, self.prefix)
        template = keeper_template(self.node, self.node_id, self.cfg.backend.vni)
        self.keeper = LeaseKeeper(
            self.store, self.cfg, template, StateDir(self.state), self.ttl, self.changes.append
        )
        return self.keeper

    async def __aexit__(self, *exc: object) -> None:
        assert self.store is not None
        await self.store.close()


POOL3 = {"Network": "10.244.0.0/22"}  # three allocatable /24s: .1 .2 .3
POOL1 = {
    "Network": "10.1.0.0/26",
    "SubnetLen": 28,
    "SubnetMin": "10.1.0.32",
    "SubnetMax": "10.1.0.32",
}  # exactly one allocatable subnet


async def leases_in(etcd: Etcd, prefix: str) -> dict[IPv4Network, StoredLease]:
    store = await open_store(etcd, prefix)
    try:
        return {s.subnet: s for s in (await store.list_leases()).leases}
    finally:
        await store.close()


def test_keeper_acquire_rebind_and_new_identity(etcd: Etcd, prefix: str, tmp_path: Path) -> None:
    c = cfg(**POOL3)

    async def body() -> None:
        k1 = Keeper(etcd, prefix, c, tmp_path / "s1", "node-a", "id-1")
        async with k1 as keeper:
            held = await keeper.acquire()
            assert c.is_allocatable(held.record.subnet)
            assert keeper.held == held and k1.changes == [held]
            assert StateDir(tmp_path / "s1").remembered_subnet() == held.record.subnet
            stored = (await leases_in(etcd, prefix))[held.record.subnet]
            assert stored.record == held.record and stored.lease_id == held.lease_id
            assert held.record.node == "node-a" and held.record.node_id == "id-1"

        # a restart (same name and id, even with a fresh state dir) rebinds the same subnet
        k2 = Keeper(etcd, prefix, c, tmp_path / "s2", "node-a", "id-1")
        async with k2 as keeper2:
            again = await keeper2.acquire()
            assert again.record.subnet == held.record.subnet
            assert again.lease_id != held.lease_id
            now = await leases_in(etcd, prefix)
            assert len(now) == 1 and now[held.record.subnet].lease_id == again.lease_id
            assert k2.store is not None
            assert await k2.store.ttl_left(held.lease_id) <= 0  # the old etcd lease revoked

        # same name, new node id (lost state dir): a new node, another subnet
        k3 = Keeper(etcd, prefix, c, tmp_path / "s3", "node-a", "id-2")
        async with k3 as keeper3:
            other = await keeper3.acquire()
            assert other.record.subnet != held.record.subnet
            assert c.is_allocatable(other.record.subnet)
        assert len(await leases_in(etcd, prefix)) == 2

    run(body)


def test_keeper_remembered_subnet_after_expiry(etcd: Etcd, prefix: str, tmp_path: Path) -> None:
    c = cfg(Network="10.244.0.0/16")

    async def body() -> None:
        state = tmp_path / "s"
        StateDir(state).remember_subnet(IPv4Network("10.244.77.0/24"))
        async with Keeper(etcd, prefix, c, state, "node-a", "id-1") as keeper:
            held = await keeper.acquire()
        assert held.record.subnet == IPv4Network("10.244.77.0/24")

    run(body)


def test_keeper_honours_reservations(etcd: Etcd, prefix: str, tmp_path: Path) -> None:
    c = cfg(**POOL3)
    reserved = IPv4Network("10.244.2.0/24")

    async def body() -> None:
        admin = await open_store(etcd, prefix)
        await admin.put_reservation(reserved, "special")
        await admin.close()
        got = []
        for i in range(2):
            async with Keeper(etcd, prefix, c, tmp_path / f"o{i}", f"other{i}", f"i{i}") as k:
                got.append((await k.acquire()).record.subnet)
        assert reserved not in got and len(set(got)) == 2
        # the pool is full for everyone but the reserved node
        async with Keeper(etcd, prefix, c, tmp_path / "x", "late", "ix") as k:
            with pytest.raises(PoolExhaustedError):
                await k.acquire_once()
        async with Keeper(etcd, prefix, c, tmp_path / "sp", "special", "isp") as k:
            assert (await k.acquire()).record.subnet == reserved

    run(body)


def test_keepers_race_for_last_subnet(etcd: Etcd, tmp_path: Path) -> None:
    c = cfg(**POOL1)

    create_results: list[int] = []

    def spy(store: EtcdStore | None) -> None:
        assert store is not None
        real = store.create_lease

        async def create_lease(record: LeaseRecord, lease_id: int) -> int:
            ok = await real(record, lease_id)
            create_results.append(ok)
            return ok

        # a spy on the public create transaction: the race must really reach it on both sides
        store.create_lease = create_lease  # type: ignore[method-assign]

    async def one_round(prefix: str, n: int) -> None:
        ka = Keeper(etcd, prefix, c, tmp_path / f"a{n}", f"a{n}", f"ia{n}")
        kb = Keeper(etcd, prefix, c, tmp_path / f"b{n}", f"b{n}", f"ib{n}")
        async with ka as a, kb as b:
            spy(ka.store)
            spy(kb.store)
            results = await asyncio.gather(
                a.acquire_once(), b.acquire_once(), return_exceptions=True
            )
        wins = [r for r in results if isinstance(r, HeldLease)]
        losses = [r for r in results if isinstance(r, PoolExhaustedError)]
        assert len(wins) == 1 and len(losses) == 1, results
        assert wins[0].record.subnet == IPv4Network("10.1.0.32/28")
        assert "no free subnet" in str(losses[0])
        stored = await leases_in(etcd, prefix)
        assert list(stored) == [IPv4Network("10.1.0.32/28")]
        assert stored[IPv4Network("10.1.0.32/28")].record == wins[0].record

    async def body() -> None:
        for n in range(3):
            await one_round(f"/race{os.getpid()}-{next(_prefixes)}/network", n)
        # both really raced: both tried the create transaction, one of them lost it
        assert sum(r > 0 for r in create_results) == 3
        assert create_results.count(0) >= 1, create_results

    run(body, timeout=30)


def test_acquire_keeps_retrying_when_exhausted(
    etcd: Etcd, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = cfg(**POOL1)
    caplog.set_level(logging.ERROR, logger="overlayd.lease")

    async def body() -> None:
        kw = Keeper(etcd, prefix, c, tmp_path / "w", "winner", "iw")
        async with kw as winner:
            won = await winner.acquire()
            async with Keeper(etcd, prefix, c, tmp_path / "l", "loser", "il") as loser:
                # does not crash, does not return: it waits for a subnet
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(loser.acquire(), timeout=1.5)
                errors = [r for r in caplog.records if "no free subnet" in r.getMessage()]
                assert len(errors) >= 2  # tried at least twice
                assert loser.held is None
                # once the winner's lease goes, the waiting node gets the subnet
                task = asyncio.create_task(loser.acquire())
                await asyncio.sleep(0.2)
                assert not task.done()
                assert winner.held is not None
                assert kw.store is not None
                await kw.store.revoke(won.lease_id)
                got = await asyncio.wait_for(task, timeout=5)
                assert got.record.subnet == won.record.subnet
                assert got.record.node == "loser"

    run(body, timeout=30)


def test_deleted_lease_is_reacquired(etcd: Etcd, prefix: str, tmp_path: Path) -> None:
    c = cfg(Network="10.244.0.0/16")

    async def body() -> None:
        k = Keeper(etcd, prefix, c, tmp_path / "s", "node-a", "id-a")
        async with k as keeper:
            held = await keeper.acquire()
            keep = asyncio.create_task(keeper.keep())
            try:
                assert k.store is not None
                assert await k.store.delete_lease(held.record.subnet)
                keeper.notice(None, held.record.subnet)  # what the store watcher does
                for _ in range(100):
                    if len(k.changes) >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert len(k.changes) == 2
                again = k.changes[1]
                assert again.record.subnet == held.record.subnet  # the same one
                assert keeper.held == again
                stored = (await leases_in(etcd, prefix))[held.record.subnet]
                assert stored.lease_id == again.lease_id and stored.record == again.record
                assert not keep.done()
                # notices about other subnets or our own current key change nothing
                keeper.notice(None, IPv4Network("10.244.200.0/24"))
                keeper.notice(stored, stored.subnet)
                await asyncio.sleep(0.2)
                assert len(k.changes) == 2
            finally:
                keep.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await keep

    run(body, timeout=30)


def test_lease_taken_over_is_restored(etcd: Etcd, prefix: str, tmp_path: Path) -> None:
    """Another writer's value in our key (here under no etcd lease) is overwritten with ours
    (real etcd: the guarded transaction and the revisions; tests/unit/test_leasekeeper.py
    covers the cases)."""
    c = cfg(**POOL3)

    async def body() -> None:
        k = Keeper(etcd, prefix, c, tmp_path / "s", "node-a", "id-a")
        async with k as keeper:
            held = await keeper.acquire()
            keep = asyncio.create_task(keeper.keep())
            try:
                key = f"{prefix}/subnets/{subnet_key_name(held.record.subnet)}"
                intruder = record(str(held.record.subnet), "intruder", "ii", 9)
                etcd.ctl("put", key, intruder.to_json())
                stored = (await leases_in(etcd, prefix))[held.record.subnet]
                keeper.notice(stored, stored.subnet)
                for _ in range(100):
                    now = (await leases_in(etcd, prefix))[held.record.subnet]
                    if now.mod_revision > stored.mod_revision:
                        break
                    await asyncio.sleep(0.05)
                assert now.record == held.record and now.lease_id == held.lease_id
                assert len(k.changes) == 1  # the same subnet, nothing re-acquired
            finally:
                keep.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await keep

    run(body, timeout=30)


def test_expired_etcd_lease_is_reacquired_by_keep(etcd: Etcd, prefix: str, tmp_path: Path) -> None:
    c = cfg(Network="10.244.0.0/16")

    async def body() -> None:
        k = Keeper(etcd, prefix, c, tmp_path / "s", "node-a", "id-a", ttl=3)  # renews every second
        async with k as keeper:
            held = await keeper.acquire()
            keep = asyncio.create_task(keeper.keep())
            try:
                assert k.store is not None
                await k.store.revoke(held.lease_id)  # as if it expired
                for _ in range(60):
                    if len(k.changes) >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert len(k.changes) == 2
                assert k.changes[1].record.subnet == held.record.subnet
                assert k.changes[1].lease_id != held.lease_id
                assert await k.store.ttl_left(k.changes[1].lease_id) > 0
            finally:
                keep.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await keep

    run(body, timeout=30)
