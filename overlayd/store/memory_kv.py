"""The key-value core of ``MemStore`` (overlayd/store/memory.py): one etcd's data and clock.

What is modelled, as etcd does it (checked against a real etcd by
tests/component/test_store_contract.py):

- one global revision, bumped once per successful write (put, delete, lease revoke or
  expiry with keys); failed transactions and deletes of absent keys do not bump it;
- per key: create revision, mod revision, version (1 on create, +1 per put) and the etcd
  lease it is bound to;
- etcd leases with a TTL measured on the ``clock`` passed in (``ManualClock`` in tests); a
  lease past its TTL expires (noticed on the next call, or by a waiting watch) and its keys
  vanish with it, as on revoke; writing with an unknown lease fails with ``StoreError``;
- guarded transactions (``Guard``: a value compare on an absent key fails, as in etcd);
- the watch fan-out: every watch of a key range gets a listing, then each change after its
  revision; after ``compact`` past that revision, a fresh listing.

Every read and write first expires the leases past their TTL. Must not import the etcd
client; knows nothing of what the keys mean (overlayd/store/keyspace.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from overlayd.store.api import EventKind
from overlayd.store.keyspace import Guard, KeyValue, RawEvent, RawWatch
from overlayd.values.errors import StoreError

T = TypeVar("T")
FIRST_LEASE_ID = 0x10000  # etcd's ids are random 64-bit numbers; ours count, for determinism


class ManualClock:
    """A clock that moves only when told: ``MemStore(clock=ManualClock())``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class _Lease:
    ttl: int
    expires: float
    keys: set[str] = field(default_factory=set)


class MemKV:
    """Keys, revisions, etcd leases and watches in memory."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._kvs: dict[str, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_lease = FIRST_LEASE_ID
        self.revision = 1  # an empty etcd is at revision 1
        self.compact_revision = 0
        self._history: list[RawEvent] = []  # each event's kv carries its revision
        self._wakeups: set[asyncio.Event] = set()

    # -- reads -------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        self.expire_leases()
        return self._kvs.get(key)

    def range(self, prefix: str) -> list[KeyValue]:
        """The keys starting with ``prefix``, sorted."""
        self.expire_leases()
        return [kv for key, kv in sorted(self._kvs.items()) if key.startswith(prefix)]

    # -- writes ------------------------------------------------------------------------

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        """Write ``value`` under ``key`` (bound to ``lease``, 0: none); the revision."""
        self.expire_leases()
        if lease and lease not in self._leases:
            raise StoreError(f"etcd put {key} failed: requested lease {lease:x} not found")
        data = value.encode() if isinstance(value, str) else value
        self.revision += 1
        old = self._kvs.get(key)
        created = old.create_revision if old is not None else self.revision
        version = old.version + 1 if old is not None else 1
        self._commit([(EventKind.PUT, KeyValue(key, data, created, self.revision, version, lease))])
        return self.revision

    def delete(self, *keys: str) -> int:
        """Delete the keys that exist, in one revision; how many there were."""
        self.expire_leases()
        return self._delete(keys)

    def _delete(self, keys: tuple[str, ...]) -> int:
        present = [self._kvs[k] for k in keys if k in self._kvs]
        if present:
            self.revision += 1
            self._commit([(EventKind.DELETE, _deleted(kv, self.revision)) for kv in present])
        return len(present)

    def txn_put(self, key: str, value: str, lease: int, guard: Guard) -> int:
        """Put if ``guard`` holds: the revision written, 0 if it does not."""
        if not guard.holds(self.get(key)):
            return 0
        return self.put(key, value, lease)

    def txn_delete(self, key: str, guard: Guard) -> bool:
        """Delete ``key`` if ``guard`` holds on it."""
        if not guard.holds(self.get(key)):
            return False
        return self._delete((key,)) > 0

    def _commit(self, changes: list[RawEvent]) -> None:
        """Apply ``changes`` as one revision (already stamped with it) and wake watchers."""
        for kind, kv in changes:
            old = self._kvs.get(kv.key)
            if old is not None and old.lease in self._leases:
                self._leases[old.lease].keys.discard(kv.key)
            if kind is EventKind.DELETE:
                del self._kvs[kv.key]
            else:
                self._kvs[kv.key] = kv
                if kv.lease:
                    self._leases[kv.lease].keys.add(kv.key)
            self._history.append((kind, kv))
        self._wake()

    def compact(self, revision: int | None = None) -> None:
        """Forget the history before ``revision`` (default: the current one), as etcd's
        compaction: a watch that needs it starts over from a listing."""
        self.compact_revision = self.revision if revision is None else revision
        self._history = [e for e in self._history if e[1].mod_revision >= self.compact_revision]
        self._wake()

    # -- etcd leases ---------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        self.expire_leases()
        lease_id, self._next_lease = self._next_lease, self._next_lease + 1
        self._leases[lease_id] = _Lease(ttl, self._clock() + ttl)
        return lease_id

    def keepalive(self, lease_id: int) -> int:
        """Renew once: the TTL, 0 if the lease is gone."""
        self.expire_leases()
        lease = self._leases.get(lease_id)
        if lease is None:
            return 0
        lease.expires = self._clock() + lease.ttl
        return lease.ttl

    def ttl_left(self, lease_id: int) -> int:
        self.expire_leases()
        lease = self._leases.get(lease_id)
        if lease is None:
            return -1  # etcd's answer for a lease it does not know
        return int(lease.expires - self._clock())

    def revoke(self, lease_id: int) -> None:
        self.expire_leases()
        if lease_id not in self._leases:
            raise StoreError(f"etcd lease revoke failed: requested lease {lease_id:x} not found")
        self._drop_lease(lease_id)

    def expire_leases(self) -> None:
        """Expire every lease past its TTL (each one revision if it had keys)."""
        now = self._clock()
        for lease_id in sorted(i for i, lease in self._leases.items() if lease.expires <= now):
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            self._delete(tuple(sorted(lease.keys)))

    def _next_expiry(self) -> float | None:
        """Seconds of ``clock`` until the next lease expires: a waiting watch wakes for it."""
        if not self._leases:
            return None
        return max(0.01, min(lease.expires for lease in self._leases.values()) - self._clock())

    # -- the watch fan-out ---------------------------------------------------------------

    async def watch(
        self,
        prefix: str,
        relist: Callable[[], Awaitable[tuple[int, T]]],
        first: tuple[int, T] | None = None,
    ) -> RawWatch[T]:
        """As etcd's: (listing, []) from ``relist`` (or ``first``), then
        (None, events) after its revision; a fresh listing when that history was compacted."""
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        try:
            while True:
                self.expire_leases()
                seen, listing = first or await relist()
                first = None
                yield listing, []
                # etcd refuses a watch from before the compaction (start < compact revision)
                while seen + 1 >= self.compact_revision:
                    self.expire_leases()
                    mine = [
                        e
                        for e in self._history
                        if e[1].mod_revision > seen and e[1].key.startswith(prefix)
                    ]
                    seen = self.revision
                    if mine:
                        yield None, mine
                        continue
                    wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), self._next_expiry())
        finally:
            self._wakeups.discard(wakeup)

    def _wake(self) -> None:
        for wakeup in self._wakeups:
            wakeup.set()


def _deleted(kv: KeyValue, revision: int) -> KeyValue:
    """A delete event's key as etcd sends it: the key and the revision, nothing else."""
    return KeyValue(kv.key, b"", 0, revision, 0, 0)
