"""One contract for both stores: every test runs against ``MemStore`` and a real etcd.

What overlayd relies on from etcd (revisions, leases with TTLs, transactions, watches,
compaction, errors) is written down here once, so the in-memory store the component and
CLI tests use cannot drift from the real thing. The etcd runs on 127.0.0.1 (no root).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from itertools import count
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from overlayd.store.api import EventKind, LeaseEvent, Store, WatchBatch
from overlayd.store.etcd import EtcdSettings, EtcdStore
from overlayd.store.memory import MemStore
from overlayd.store.memory_kv import ManualClock
from overlayd.values.errors import ConfigError, ConfigMissingError, StoreError
from overlayd.values.gateway_state import GatewayClaim, GatewayState, HealthReport
from overlayd.values.names import ContainerName
from tests.builders import config, record
from tests.lab.etcd import ETCD, ETCDCTL, EtcdServer
from tests.reports import node_report

T = TypeVar("T")
TTL = 30
_prefixes = count()

# mypy checks that both implementations satisfy the Protocol
_ETCD: Callable[[EtcdSettings], Store] = EtcdStore
_MEM: Callable[[], Store] = MemStore


class Backend(Protocol):
    """A store under test plus what only a test does to it."""

    store: Store
    prefix: str

    async def put_raw(self, key: str, value: str) -> None:
        """Write any value (as a person with etcdctl would)."""

    async def compact(self, revision: int) -> None: ...

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for the store's leases."""


class MemBackend:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.clock = ManualClock()
        self.mem = MemStore(prefix, clock=self.clock)
        self.store: Store = self.mem

    async def put_raw(self, key: str, value: str) -> None:
        self.mem.put_raw(key, value)

    async def compact(self, revision: int) -> None:
        self.mem.compact(revision)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.mem.expire_leases()  # what etcd's lessor does in the background


class EtcdBackend:
    def __init__(self, server: EtcdServer, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self.store: Store = EtcdStore(EtcdSettings(endpoints=(server.endpoint,), prefix=prefix))

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [ETCDCTL, f"--endpoints={self.server.url}", "--command-timeout=5s", *args],
            capture_output=True,
            check=True,
            timeout=15,
            env={**os.environ, "ETCDCTL_API": "3"},
        )

    async def put_raw(self, key: str, value: str) -> None:
        await asyncio.to_thread(self._ctl, "put", key, value)

    async def compact(self, revision: int) -> None:
        await asyncio.to_thread(self._ctl, "compact", str(revision))

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if not (Path(ETCD).exists() and Path(ETCDCTL).exists()):
        pytest.skip("needs etcd and etcdctl")
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    try:
        server.start().wait_healthy()
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["mem", "etcd"])
def backend(request: pytest.FixtureRequest) -> Backend:
    prefix = f"/c{os.getpid()}-{next(_prefixes)}/network"
    if request.param == "mem":
        return MemBackend(prefix)
    server: EtcdServer = request.getfixturevalue("etcd")
    return EtcdBackend(server, prefix)


def run(backend: Backend, body: Callable[[Store], Awaitable[None]]) -> None:
    async def main() -> None:
        await backend.store.connect()
        try:
            await asyncio.wait_for(body(backend.store), 30)
        finally:
            await backend.store.close()

    asyncio.run(main())


async def revision(store: Store) -> int:
    return (await store.list_leases()).revision


# -- config ---------------------------------------------------------------------------


def test_config_missing_put_get_and_invalid(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert store.prefix == backend.prefix
        with pytest.raises(ConfigMissingError, match=f"{backend.prefix}/config"):
            await store.get_config_text()
        c = config(Network="10.50.0.0/16", SubnetLen=26, Backend={"Type": "vxlan", "VNI": 9})
        await store.put_config(c)
        assert await store.get_config() == c
        await backend.put_raw(f"{backend.prefix}/config", "not json")
        assert await store.get_config_text() == "not json"
        with pytest.raises(ConfigError, match="not JSON"):
            await store.get_config()

    run(backend, body)


# -- revisions and transactions ---------------------------------------------------------


def test_revision_moves_once_per_successful_write(backend: Backend) -> None:
    async def body(store: Store) -> None:
        r0 = await revision(store)
        lease = await store.grant(TTL)
        assert await revision(store) == r0  # granting writes no key
        a, b = record("10.244.3.0/24"), record("10.244.4.0/24")
        assert await store.create_lease(a, lease)
        assert await revision(store) == r0 + 1
        assert not await store.create_lease(a, lease)  # a failed transaction
        assert not await store.delete_lease(IPv4Network("10.244.9.0/24"))  # nothing there
        assert await revision(store) == r0 + 1
        assert await store.create_lease(b, lease)
        snap = await store.list_leases()
        assert snap.revision == r0 + 2
        assert [s.mod_revision for s in snap.leases] == [r0 + 1, r0 + 2]
        await store.revoke(lease)  # deletes both keys in one revision
        assert await revision(store) == r0 + 3

    run(backend, body)


def test_create_is_create_if_absent(backend: Backend) -> None:
    async def body(store: Store) -> None:
        a = record("10.244.3.0/24", "node-a", "id-a", 1)
        b = record("10.244.3.0/24", "node-b", "id-b", 2)
        la, lb = await store.grant(TTL), await store.grant(TTL)
        assert la != lb
        written = await store.create_lease(a, la)  # the revision of the write
        assert written > 0
        assert await store.create_lease(b, lb) == 0
        assert await store.create_lease(a, la) == 0  # not even the same record twice
        snap = await store.list_leases()
        (only,) = snap.leases
        assert only.record == a and only.error is None and only.lease_id == la
        assert only.mod_revision == written <= snap.revision
        assert await store.delete_lease(a.subnet) is True
        assert await store.delete_lease(a.subnet) is False
        assert await store.create_lease(b, lb) > 0  # free again

    run(backend, body)


def test_rebind_requires_current_mod_revision(backend: Backend) -> None:
    async def body(store: Store) -> None:
        a = record("10.244.3.0/24")
        old_lease, new_lease = await store.grant(TTL), await store.grant(TTL)
        assert await store.create_lease(a, old_lease)
        (stored,) = (await store.list_leases()).leases
        moved = dataclasses.replace(a, site="eu")
        assert await store.rebind_lease(moved, new_lease, stored.mod_revision) > 0
        (after,) = (await store.list_leases()).leases
        assert after.lease_id == new_lease and after.record == moved
        assert after.mod_revision > stored.mod_revision
        assert await store.rebind_lease(a, old_lease, stored.mod_revision) == 0  # stale
        ghost = record("10.244.9.0/24")
        assert await store.rebind_lease(ghost, new_lease, after.mod_revision) == 0
        assert await store.rebind_lease(ghost, new_lease, 0) > 0  # absent: mod revision 0
        # the key moved off the old lease: revoking it leaves the key alone
        await store.revoke(old_lease)
        assert len((await store.list_leases()).leases) == 2

    run(backend, body)


def test_replace_compares_the_value(backend: Backend) -> None:
    async def body(store: Store) -> None:
        lease = await store.grant(TTL)
        a = record("10.244.3.0/24")
        b = dataclasses.replace(a, site="b")
        c = dataclasses.replace(a, site="c")
        assert await store.replace_lease(a, b, lease) == 0  # absent: no value to match
        assert await store.create_lease(a, lease)
        assert await store.replace_lease(a, b, lease) > 0
        assert await store.replace_lease(a, c, lease) == 0  # holds b now
        (stored,) = (await store.list_leases()).leases
        assert stored.record == b

    run(backend, body)


# -- etcd leases ----------------------------------------------------------------------


def test_keepalive_ttl_and_revoke(backend: Backend) -> None:
    async def body(store: Store) -> None:
        lease = await store.grant(TTL)
        assert await store.create_lease(record("10.244.3.0/24"), lease)
        await store.put_reservation(IPv4Network("10.244.3.0/24"), "node-a")  # no lease
        assert 0 < await store.keepalive(lease) <= TTL
        assert 0 < await store.ttl_left(lease) <= TTL
        await store.revoke(lease)
        assert await store.keepalive(lease) <= 0
        assert await store.ttl_left(lease) <= 0
        assert (await store.list_leases()).leases == ()  # the key went with its lease
        assert await store.list_reservations() == {IPv4Network("10.244.3.0/24"): "node-a"}
        with pytest.raises(StoreError):
            await store.create_lease(record("10.244.4.0/24"), lease)  # an unknown lease
        with pytest.raises(StoreError):
            await store.revoke(lease)  # twice
        assert (await store.list_leases()).leases == ()

    run(backend, body)


def test_expired_lease_takes_its_keys(backend: Backend) -> None:
    async def body(store: Store) -> None:
        short, long = await store.grant(2), await store.grant(TTL)  # 2s: etcd's minimum
        assert await store.create_lease(record("10.244.3.0/24"), short)
        assert await store.create_lease(record("10.244.4.0/24", n=2), long)
        gen = store.watch_leases()
        first = await anext(gen)
        assert first.snapshot is not None and len(first.snapshot.leases) == 2
        await backend.advance(4.0)
        batch = await next_batch(gen)
        assert [(e.kind, e.lease.subnet) for e in batch.events] == [
            (EventKind.DELETE, IPv4Network("10.244.3.0/24"))
        ]
        await aclose(gen)
        assert await store.keepalive(short) <= 0
        assert [s.subnet for s in (await store.list_leases()).leases] == [
            IPv4Network("10.244.4.0/24")
        ]

    run(backend, body)


# -- listing --------------------------------------------------------------------------


def test_list_surfaces_malformed_and_ignores_stray_keys(backend: Backend) -> None:
    async def body(store: Store) -> None:
        p = backend.prefix
        good = record("10.244.3.0/24")
        assert await store.create_lease(good, await store.grant(TTL))
        await backend.put_raw(f"{p}/subnets/10.244.5.0-24", "{this is not json")
        await backend.put_raw(f"{p}/subnets/10.244.6.0-24", '{"PublicIP": "nope"}')
        await backend.put_raw(f"{p}/subnets/README", "stray")
        await backend.put_raw(f"{p}/subnets/10.244.7.5-24", "{}")  # not a subnet key
        await backend.put_raw(f"{p}/subnetsX/10.244.8.0-24", good.to_json())  # outside
        await backend.put_raw(f"{p}/subnets/10.244.9.0-24", "")  # empty: malformed too
        by_subnet = {s.subnet: s for s in (await store.list_leases()).leases}
        assert sorted(map(str, by_subnet)) == [
            "10.244.3.0/24", "10.244.5.0/24", "10.244.6.0/24", "10.244.9.0/24"
        ]  # fmt: skip
        bad = by_subnet[IPv4Network("10.244.5.0/24")]
        assert bad.record is None and bad.error is not None and "not JSON" in bad.error
        assert bad.lease_id == 0  # written without an etcd lease
        bad2 = by_subnet[IPv4Network("10.244.6.0/24")]
        assert bad2.record is None and bad2.error is not None and "PublicIP" in bad2.error
        empty = by_subnet[IPv4Network("10.244.9.0/24")]
        assert empty.record is None and empty.error is not None

    run(backend, body)


def test_reservations(backend: Backend) -> None:
    async def body(store: Store) -> None:
        p = backend.prefix
        assert await store.list_reservations() == {}
        s1, s2 = IPv4Network("10.244.3.0/24"), IPv4Network("10.244.4.0/24")
        await store.put_reservation(s1, "node-a")
        await store.put_reservation(s2, "node-b")
        await store.put_reservation(s2, "node-c")  # overwrite
        malformed = {"10.244.5.0-24": "nope", "10.244.6.0-24": '{"Node": ""}',
                     "10.244.7.0-24": '{"Node": 5}', "10.244.8.0-24": "[1]",
                     "junk": '{"Node": "x"}'}  # fmt: skip
        for name, value in malformed.items():
            await backend.put_raw(f"{p}/reservations/{name}", value)
        assert await store.list_reservations() == {s1: "node-a", s2: "node-c"}
        assert await store.delete_reservation(s1) is True
        assert await store.delete_reservation(s1) is False
        assert await store.list_reservations() == {s2: "node-c"}
        assert (await store.list_leases()).leases == ()

    run(backend, body)


# -- watches --------------------------------------------------------------------------


async def next_batch(gen: AsyncIterator[T], timeout: float = 10.0) -> T:
    return await asyncio.wait_for(anext(gen), timeout)


async def aclose(gen: AsyncIterator[object]) -> None:
    close = getattr(gen, "aclose", None)  # an async generator, in both stores
    assert close is not None
    await close()


def test_watch_snapshot_then_events(backend: Backend) -> None:
    async def body(store: Store) -> None:
        gen = store.watch_leases()
        try:
            a = record("10.244.3.0/24", "a", "ia", 1)
            lease = await store.grant(TTL)
            assert await store.create_lease(a, lease)
            first = await next_batch(gen)
            assert first.snapshot is not None and first.events == ()
            assert [s.record for s in first.snapshot.leases] == [a]
            b = record("10.244.4.0/24", "b", "ib", 2)
            assert await store.create_lease(b, lease)
            batch = await next_batch(gen)
            assert batch.snapshot is None
            assert [(e.kind, e.lease.record) for e in batch.events] == [(EventKind.PUT, b)]
            assert batch.events[0].lease.lease_id == lease
            # a malformed value arrives as an event with an error, a stray key not at all
            await backend.put_raw(f"{backend.prefix}/subnets/junk", "x")
            await backend.put_raw(f"{backend.prefix}/subnets/10.244.5.0-24", "garbage")
            (ev,) = await events_until(gen, 1)
            assert ev.kind is EventKind.PUT and ev.lease.record is None and ev.lease.error
            assert ev.lease.subnet == IPv4Network("10.244.5.0/24")
            assert await store.delete_lease(a.subnet)
            (ev,) = await events_until(gen, 1)
            assert ev.kind is EventKind.DELETE and ev.lease.subnet == a.subnet
            assert ev.lease.record is None and ev.lease.lease_id == 0  # etcd sends the key only
            await store.revoke(lease)  # takes b with it
            (ev,) = await events_until(gen, 1)
            assert ev.kind is EventKind.DELETE and ev.lease.subnet == b.subnet
        finally:
            await aclose(gen)

    run(backend, body)


async def events_until(gen: AsyncIterator[WatchBatch], n: int) -> list[LeaseEvent]:
    """The next ``n`` events, however the store batches them."""
    out: list[LeaseEvent] = []
    while len(out) < n:
        batch = await next_batch(gen)
        assert batch.snapshot is None
        out += batch.events
    return out


def test_watch_from_a_given_snapshot_replays_what_followed(backend: Backend) -> None:
    async def body(store: Store) -> None:
        lease = await store.grant(TTL)
        a, b = record("10.244.3.0/24", "a", "ia", 1), record("10.244.4.0/24", "b", "ib", 2)
        assert await store.create_lease(a, lease)
        held = await store.list_leases()
        assert await store.create_lease(b, lease)  # after the snapshot the caller holds
        gen = store.watch_leases(held)
        try:
            first = await next_batch(gen)
            assert first.snapshot == held
            (ev,) = await events_until(gen, 1)
            assert ev.kind is EventKind.PUT and ev.lease.record == b
        finally:
            await aclose(gen)

    run(backend, body)


def test_watch_after_compaction_yields_fresh_snapshot(backend: Backend) -> None:
    async def body(store: Store) -> None:
        gen = store.watch_leases()
        try:
            lease = await store.grant(TTL)
            a = record("10.244.3.0/24", "a", "ia", 1)
            assert await store.create_lease(a, lease)
            first = await next_batch(gen)
            assert first.snapshot is not None
            # the generator is parked at its first yield: its watch from the snapshot's
            # revision only starts on the next step. Change things and compact them away.
            b, c = record("10.244.4.0/24", "b", "ib", 2), record("10.244.5.0/24", "c", "ic", 3)
            assert await store.create_lease(b, lease)
            assert await store.create_lease(c, lease)
            assert await store.delete_lease(a.subnet)
            rev = await revision(store)
            await backend.compact(rev)
            second = await next_batch(gen)
            assert second.snapshot is not None, "expected a fresh snapshot after compaction"
            assert second.snapshot.revision >= rev
            assert sorted(s.subnet for s in second.snapshot.leases) == [b.subnet, c.subnet]
            d = record("10.244.6.0/24", "d", "id", 4)
            assert await store.create_lease(d, lease)
            third = await next_batch(gen)
            assert third.snapshot is None and [e.lease.record for e in third.events] == [d]
        finally:
            await aclose(gen)

    run(backend, body)


# -- gateways -------------------------------------------------------------------------


def test_gateway_claim_resign_report_and_watch(backend: Backend) -> None:
    async def body(store: Store) -> None:
        gen = store.watch_gateways()
        try:
            assert (await next_batch(gen)).claims == {}
            lease = await store.grant(TTL)
            mine = GatewayClaim("eu", "a", "ia", IPv4Network("10.244.3.0/24"))
            theirs = GatewayClaim("eu", "b", "ib", IPv4Network("10.244.4.0/24"))
            assert await store.claim_gateway("eu", mine, lease) is True
            assert await store.claim_gateway("eu", theirs, lease) is False
            state = await state_where(gen, lambda s: "eu" in s.claims)
            assert state.claims["eu"] == mine
            assert (await store.list_gateways()).claims == {"eu": mine}
            report = HealthReport("eu", "ib", "b", "ia")
            await store.report_gateway("eu", report, lease)
            state = await state_where(gen, lambda s: bool(s.reports))
            assert state.blame("eu", "ia") == [report]
            await store.report_gateway("eu", dataclasses.replace(report, healthy=True), lease)
            assert (await state_where(gen, lambda s: not s.reports)).claims == {"eu": mine}
            assert await store.resign_gateway("eu", theirs) is False  # not the holder
            assert await store.resign_gateway("eu", mine) is True
            assert (await state_where(gen, lambda s: not s.claims)).claims == {}
            # a claim is bound to its holder's lease
            assert await store.claim_gateway("eu", theirs, lease)
            await store.revoke(lease)
            assert (await store.list_gateways()).claims == {}
            await backend.put_raw(f"{backend.prefix}/gw/site/us", "{malformed")
            assert (await store.list_gateways()).claims == {}  # elects no one
        finally:
            await aclose(gen)

    run(backend, body)


async def state_where(
    gen: AsyncIterator[GatewayState], ok: Callable[[GatewayState], bool]
) -> GatewayState:
    while True:
        state = await next_batch(gen)
        if ok(state):
            return state


# -- control requests (key rotation) ------------------------------------------------------


def test_control_request_put_watch_and_acknowledge(backend: Backend) -> None:
    """A request is seen by the node's watch; it is acknowledged only if it is still the
    one at the revision served (a newer request stays); longer keys are not ours."""

    async def body(store: Store) -> None:
        gen = store.watch_control("a1", "rotate-key")
        try:
            assert await next_batch(gen) is None  # nothing pending
            assert await store.get_control("a1", "rotate-key") is None
            await store.put_control("a1", "rotate-key", '{"By": "ops"}')
            seen = await next_batch(gen)
            assert seen is not None and seen.value == '{"By": "ops"}'
            assert await store.get_control("a1", "rotate-key") == seen
            await store.put_control("a1", "rotate-key-later", "x")  # a longer key: skipped
            await store.put_control("a1", "rotate-key", '{"By": "again"}')
            newer = await next_batch(gen)
            assert newer is not None and newer.mod_revision > seen.mod_revision
            assert await store.delete_control("a1", "rotate-key", seen.mod_revision) is False
            assert await store.delete_control("a1", "rotate-key", newer.mod_revision) is True
            assert await next_batch(gen) is None
            assert await store.get_control("a1", "rotate-key") is None
        finally:
            await aclose(gen)

    run(backend, body)


# -- container names (docs/dns.md) -------------------------------------------------------


def test_container_names_put_delete_watch_and_go_with_their_lease(backend: Backend) -> None:
    subnet = IPv4Network("10.244.3.0/24")
    web = ContainerName(subnet, "c1", "web", IPv4Address("10.244.3.5"))
    db = ContainerName(subnet, "c2", "db", IPv4Address("10.244.3.6"))

    async def body(store: Store) -> None:
        gen = store.watch_names()
        try:
            assert (await next_batch(gen)).names == ()
            lease = await store.grant(TTL)
            await store.put_name(web, lease)
            await store.put_name(db, lease)
            table = await table_where(gen, lambda t: len(t.names) == 2)
            assert table.names == (web, db) and table.errors == ()  # sorted by key
            assert (await store.list_names()).names == (web, db)
            assert await store.delete_name(subnet, "c2") is True
            assert await store.delete_name(subnet, "c2") is False
            assert (await table_where(gen, lambda t: len(t.names) == 1)).names == (web,)
            await backend.put_raw(f"{backend.prefix}/names/10.244.3.0-24/bad", "{")
            table = await table_where(gen, lambda t: bool(t.errors))
            assert table.names == (web,) and table.errors[0][0] == "10.244.3.0-24/bad"
            await store.revoke(lease)  # the node's lease goes: its names with it
            assert (await table_where(gen, lambda t: not t.names)).names == ()
        finally:
            await aclose(gen)

    run(backend, body)


async def table_where(gen: AsyncIterator[T], ok: Callable[[T], bool]) -> T:
    while True:
        table = await next_batch(gen)
        if ok(table):
            return table


# -- status reports (overlayd/values/report.py) ------------------------------------------


def test_status_reports_put_list_watch_and_go_with_their_lease(backend: Backend) -> None:
    a1, b2 = node_report("a1"), node_report("b2", site="west", unreachable_total=3)

    async def body(store: Store) -> None:
        gen = store.watch_status_reports()
        try:
            assert (await next_batch(gen)).reports == ()
            short, other = await store.grant(TTL), await store.grant(TTL)
            await store.put_status_report(b2, other)
            await store.put_status_report(a1, short)
            table = await table_where(gen, lambda t: len(t.reports) == 2)
            assert table.reports == (a1, b2) and table.errors == ()  # sorted by node
            assert (await store.list_status_reports()).reports == (a1, b2)
            newer = dataclasses.replace(a1, written_at=a1.written_at + 5)
            await store.put_status_report(newer, short)
            assert (await table_where(gen, lambda t: newer in t.reports)).reports == (newer, b2)
            await backend.put_raw(f"{backend.prefix}/status/c3", '{"Node": 7}')
            await backend.put_raw(f"{backend.prefix}/status/d4", b2.to_json())  # not its own
            table = await table_where(gen, lambda t: len(t.errors) == 2)
            assert table.reports == (newer, b2)
            assert [k for k, _ in table.errors] == ["c3", "d4"]
            assert "names node 'b2'" in table.errors[1][1]
            await store.revoke(short)  # the reporter's lease goes: its report with it
            table = await table_where(gen, lambda t: len(t.reports) == 1)
            assert table.reports == (b2,)
            listed = await store.list_status_reports()
            assert listed.reports == (b2,) and len(listed.errors) == 2
        finally:
            await aclose(gen)

    run(backend, body)
