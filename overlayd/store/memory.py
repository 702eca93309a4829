"""An in-memory ``Store`` with etcd's semantics where overlayd depends on them.

For component tests of the daemon's parts and of overlayctl: no etcd, no sockets, no real
waiting. ``MemStore`` is the ``KeyedStore`` of ``EtcdStore`` (overlayd/store/keyed.py) over
``MemKV`` (overlayd/store/memory_kv.py: revisions, etcd leases on a clock, guarded
transactions, the watch fan-out) instead of etcd; tests/component/test_store_contract.py
runs both against the same checks.

Besides the ``Store`` methods it has test hooks: ``put_raw`` (what a person or another
tool might write), ``get_raw``, ``compact`` and ``expire_leases``. It must not import the
etcd client.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from typing import TypeVar

from overlayd.store.api import DEFAULT_PREFIX
from overlayd.store.keyed import KeyedStore
from overlayd.store.keyspace import Guard, KeyValue, RawWatch
from overlayd.store.memory_kv import MemKV

T = TypeVar("T")


class MemStore(KeyedStore):
    """All of the ``Store`` Protocol in memory; one instance is one etcd (its data)."""

    def __init__(
        self, prefix: str = DEFAULT_PREFIX, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._kv = MemKV(clock)
        super().__init__(prefix, _MemRaw(self._kv))

    @property
    def revision(self) -> int:
        """The store's current revision (an empty etcd is at 1)."""
        return self._kv.revision

    def endpoint_addresses(self) -> frozenset[IPv4Address]:
        return frozenset()  # no servers

    async def connect(self) -> None:
        """Nothing to connect to; the data outlives ``close`` (tests reopen the same store)."""

    async def close(self) -> None:
        pass

    # -- test hooks ------------------------------------------------------------------------

    def put_raw(self, key: str, value: str | bytes, lease: int = 0) -> None:
        """Write any value under any key, as ``etcdctl put`` would (for malformed data)."""
        self._kv.put(key, value, lease)

    def get_raw(self, key: str) -> KeyValue | None:
        return self._kv.get(key)

    def compact(self, revision: int | None = None) -> None:
        """Forget the history before ``revision`` (default: the current one), as etcd's
        compaction: a watch that needs it starts over from a snapshot."""
        self._kv.compact(revision)

    def expire_leases(self) -> None:
        """Expire every lease past its TTL (each one revision if it had keys)."""
        self._kv.expire_leases()


class _MemRaw:
    """``MemKV`` as the ``RawKV`` of a ``KeyedStore`` (its errors need no ``what``)."""

    def __init__(self, kv: MemKV) -> None:
        self._kv = kv

    async def get(self, what: str, key: str) -> tuple[int, KeyValue | None]:
        found = self._kv.get(key)
        return self._kv.revision, found

    async def range(self, what: str, prefix: str) -> tuple[int, list[KeyValue]]:
        found = self._kv.range(prefix)
        return self._kv.revision, found

    async def put(self, what: str, key: str, value: str, lease: int = 0) -> None:
        self._kv.put(key, value, lease)

    async def delete(self, what: str, key: str) -> bool:
        return self._kv.delete(key) > 0

    async def txn_put(self, what: str, key: str, value: str, lease: int, guard: Guard) -> int:
        return self._kv.txn_put(key, value, lease, guard)

    async def txn_delete(self, what: str, key: str, guard: Guard) -> bool:
        return self._kv.txn_delete(key, guard)

    def watch(
        self,
        prefix: str,
        relist: Callable[[], Awaitable[tuple[int, T]]],
        first: tuple[int, T] | None = None,
    ) -> RawWatch[T]:
        return self._kv.watch(prefix, relist, first)

    async def grant(self, ttl: int) -> int:
        return self._kv.grant(ttl)

    async def keepalive(self, lease_id: int) -> int:
        return self._kv.keepalive(lease_id)

    async def ttl_left(self, lease_id: int) -> int:
        return self._kv.ttl_left(lease_id)

    async def revoke(self, lease_id: int) -> None:
        self._kv.revoke(lease_id)
