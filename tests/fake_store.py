"""An in-memory stand-in for the store methods the lease keeper uses (``KeeperStore``).

No etcd, no mocks: a dict of subnet keys with etcd's semantics where the keeper relies on
them — one revision counter for every write, guarded transactions that fail (0) when their
compare does not hold, keys deleted with their etcd lease. ``watch(callback)`` delivers
every change synchronously, *before* the write returns: the harshest order a real watch can
deliver in (the event before the transaction's response).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network

from overlayd.store.api import Snapshot, StoredLease
from overlayd.store.lease_keeper import KeeperStore
from overlayd.values.errors import StoreError
from overlayd.values.lease import LeaseRecord

Watcher = Callable[[IPv4Network, StoredLease | None, int], None]


@dataclass
class Write:
    """One write the fake saw: who wrote (``by``: "keeper" or "outside") what, where."""

    subnet: IPv4Network
    record: LeaseRecord | None  # None: deleted
    lease_id: int
    revision: int
    by: str


class FakeLeaseStore(KeeperStore):
    """Leases in memory; ``writes`` logs every put and delete in order."""

    def __init__(self) -> None:
        self.revision = 1
        self.keys: dict[IPv4Network, StoredLease] = {}
        self.reservations: dict[IPv4Network, str] = {}
        self.alive: dict[int, int] = {}  # etcd lease id -> ttl
        self.revoked: list[int] = []
        self.writes: list[Write] = []
        self.fail_next: int = 0  # how many following calls raise StoreError
        self._next_lease = 0x100
        self._watchers: list[Watcher] = []

    # -- test controls -----------------------------------------------------------------

    def watch(self, watcher: Watcher) -> None:
        """Call ``watcher(subnet, stored or None, revision)`` on every change."""
        self._watchers.append(watcher)

    def unwatch_all(self) -> None:
        """Tell no watcher of any later change (a watch that lags behind the writes)."""
        self._watchers.clear()

    def put_outside(
        self, record: LeaseRecord, lease_id: int = 0, by: str = "outside"
    ) -> StoredLease:
        """A write by someone else (an administrator, an attacker with etcd access, or a
        previous run of the node: ``by`` labels it in ``writes``)."""
        return self._put(record, lease_id, by)

    def put_raw_outside(self, subnet: IPv4Network, error: str, lease_id: int = 0) -> StoredLease:
        """An undecodable value written by someone else."""
        return self._store(StoredLease(subnet, None, error, lease_id, self._bump()), "outside")

    def delete_outside(self, subnet: IPv4Network) -> None:
        self._delete(subnet, "outside")

    def ours(self, by: str = "keeper") -> list[Write]:
        """The writes made by ``by``."""
        return [w for w in self.writes if w.by == by]

    # -- KeeperStore --------------------------------------------------------------------

    async def list_leases(self) -> Snapshot:
        self._maybe_fail()
        return Snapshot(self.revision, tuple(self.keys[s] for s in sorted(self.keys)))

    async def list_reservations(self) -> dict[IPv4Network, str]:
        self._maybe_fail()
        return dict(self.reservations)

    async def grant(self, ttl: int) -> int:
        self._maybe_fail()
        self._next_lease += 1
        self.alive[self._next_lease] = ttl
        return self._next_lease

    async def keepalive(self, lease_id: int) -> int:
        self._maybe_fail()
        return self.alive.get(lease_id, 0)

    async def revoke(self, lease_id: int) -> None:
        self._maybe_fail()
        self.revoked.append(lease_id)
        self.alive.pop(lease_id, None)
        for subnet in [s for s, v in self.keys.items() if v.lease_id == lease_id]:
            self._delete(subnet, "revoke")

    async def create_lease(self, record: LeaseRecord, lease_id: int) -> int:
        self._maybe_fail()
        if record.subnet in self.keys:
            return 0
        return self._put(record, lease_id, "keeper").mod_revision

    async def rebind_lease(self, record: LeaseRecord, lease_id: int, mod_revision: int) -> int:
        self._maybe_fail()
        now = self.keys.get(record.subnet)
        if now is None or now.mod_revision != mod_revision:
            return 0
        return self._put(record, lease_id, "keeper").mod_revision

    async def replace_lease(self, old: LeaseRecord, new: LeaseRecord, lease_id: int) -> int:
        self._maybe_fail()
        now = self.keys.get(new.subnet)
        if now is None or now.record != old:
            return 0
        return self._put(new, lease_id, "keeper").mod_revision

    # -- internals ---------------------------------------------------------------------

    def _maybe_fail(self) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise StoreError("etcd lease transaction failed: UNAVAILABLE: fake outage")

    def _bump(self) -> int:
        self.revision += 1
        return self.revision

    def _put(self, record: LeaseRecord, lease_id: int, by: str) -> StoredLease:
        if lease_id and lease_id not in self.alive:
            raise StoreError("etcd lease transaction failed: NOT_FOUND: requested lease not found")
        return self._store(StoredLease(record.subnet, record, None, lease_id, self._bump()), by)

    def _store(self, stored: StoredLease, by: str) -> StoredLease:
        self.keys[stored.subnet] = stored
        self.writes.append(
            Write(stored.subnet, stored.record, stored.lease_id, stored.mod_revision, by)
        )
        for watcher in list(self._watchers):
            watcher(stored.subnet, stored, stored.mod_revision)
        return stored

    def _delete(self, subnet: IPv4Network, by: str) -> None:
        if self.keys.pop(subnet, None) is None:
            return
        revision = self._bump()
        self.writes.append(Write(subnet, None, 0, revision, by))
        for watcher in list(self._watchers):
            watcher(subnet, None, revision)
