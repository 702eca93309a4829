"""An in-memory ``Store`` with etcd's semantics where overlayd depends on them.

For component tests of the daemon's parts and of overlayctl: no etcd, no sockets, no real
waiting. What is modelled (checked against a real etcd by
tests/component/test_store_contract.py):

- one global revision, bumped once per successful write (put, delete, lease revoke or
  expiry with keys); failed transactions and deletes of absent keys do not bump it;
- per key: create revision, mod revision, version (1 on create, +1 per put) and the etcd
  lease it is bound to;
- etcd leases with a TTL measured on the ``clock`` passed in; a lease past its TTL
  expires (noticed on the next call, or by a waiting watch) and its keys vanish with it,
  as on revoke; writing with an unknown lease fails with ``StoreError``;
- transactions comparing version == 0, mod revision, or value (a value compare on an
  absent key fails, as in etcd);
- watches: a snapshot, then every change after its revision; after ``compact`` past
  that revision, a fresh snapshot.

Besides the ``Store`` methods it has test hooks: ``put_raw`` (what a person or another
tool might write), ``compact`` and ``expire_leases``. It must not import the etcd client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

from overlayd.store.api import (
    DEFAULT_PREFIX,
    ControlValue,
    EventKind,
    LeaseEvent,
    Snapshot,
    StoredLease,
    StoreKeys,
    WatchBatch,
    decode_reservation,
    decode_stored,
    reservation_value,
)
from overlayd.values.config import NetworkConfig, parse_config
from overlayd.values.errors import ConfigMissingError, StoreError
from overlayd.values.gateway_state import GatewayClaim, GatewayState, HealthReport
from overlayd.values.lease import LeaseRecord

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


_gateway_log = logging.getLogger("overlayd.gateway")


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd keeps it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass
class _Lease:
    ttl: int
    expires: float
    keys: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Event:
    revision: int
    kind: EventKind
    kv: KeyValue  # for a delete: only the key and the delete's revision (as etcd)


class MemStore:
    """All of the ``Store`` Protocol in memory; one instance is one etcd (its data)."""

    def __init__(
        self, prefix: str = DEFAULT_PREFIX, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._keys = StoreKeys(prefix.rstrip("/"))
        self._clock = clock
        self._kvs: dict[str, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_lease = FIRST_LEASE_ID
        self.revision = 1  # an empty etcd is at revision 1
        self.compact_revision = 0
        self._history: list[_Event] = []
        self._wakeups: set[asyncio.Event] = set()

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    def endpoint_addresses(self) -> frozenset[IPv4Address]:
        return frozenset()  # no servers

    async def connect(self) -> None:
        """Nothing to connect to; the data outlives ``close`` (tests reopen the same store)."""

    async def close(self) -> None:
        pass

    # -- the key-value core --------------------------------------------------------------

    def _range(self, prefix: str) -> list[KeyValue]:
        return [kv for key, kv in sorted(self._kvs.items()) if key.startswith(prefix)]

    def _commit(self, changes: list[tuple[EventKind, KeyValue]]) -> None:
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
            self._history.append(_Event(self.revision, kind, kv))
        for wakeup in self._wakeups:
            wakeup.set()

    def _put(self, key: str, value: str | bytes, lease: int) -> None:
        if lease and lease not in self._leases:
            raise StoreError(f"etcd put {key} failed: requested lease {lease:x} not found")
        data = value.encode() if isinstance(value, str) else value
        self.revision += 1
        old = self._kvs.get(key)
        created = old.create_revision if old is not None else self.revision
        version = old.version + 1 if old is not None else 1
        self._commit([(EventKind.PUT, KeyValue(key, data, created, self.revision, version, lease))])

    def _delete(self, keys: list[str]) -> int:
        present = [self._kvs[k] for k in keys if k in self._kvs]
        if present:
            self.revision += 1
            self._commit([(EventKind.DELETE, _deleted(kv, self.revision)) for kv in present])
        return len(present)

    def _txn_put(
        self,
        key: str,
        value: str,
        lease: int,
        *,
        version: int | None = None,
        mod_revision: int | None = None,
        value_was: str | None = None,
    ) -> int:
        """The revision written, 0 if the compare failed (as ``EtcdStore._txn_put``)."""
        self.expire_leases()
        kv = self._kvs.get(key)
        if value_was is not None:
            ok = kv is not None and kv.value == value_was.encode()
        elif version is not None:
            ok = (kv.version if kv is not None else 0) == version
        else:
            ok = (kv.mod_revision if kv is not None else 0) == mod_revision
        if not ok:
            return 0
        self._put(key, value, lease)
        return self.revision

    # -- test hooks ------------------------------------------------------------------------

    def put_raw(self, key: str, value: str | bytes, lease: int = 0) -> None:
        """Write any value under any key, as ``etcdctl put`` would (for malformed data)."""
        self.expire_leases()
        self._put(key, value, lease)

    def get_raw(self, key: str) -> KeyValue | None:
        self.expire_leases()
        return self._kvs.get(key)

    def compact(self, revision: int | None = None) -> None:
        """Forget the history before ``revision`` (default: the current one), as etcd's
        compaction: a watch that needs it starts over from a snapshot."""
        self.compact_revision = self.revision if revision is None else revision
        self._history = [e for e in self._history if e.revision >= self.compact_revision]
        for wakeup in self._wakeups:
            wakeup.set()

    def expire_leases(self) -> None:
        """Expire every lease past its TTL (each one revision if it had keys)."""
        now = self._clock()
        for lease_id in sorted(i for i, lease in self._leases.items() if lease.expires <= now):
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            self._delete(sorted(lease.keys))

    # -- etcd leases -------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        self.expire_leases()
        lease_id, self._next_lease = self._next_lease, self._next_lease + 1
        self._leases[lease_id] = _Lease(ttl, self._clock() + ttl)
        return lease_id

    async def keepalive(self, lease_id: int) -> int:
        self.expire_leases()
        lease = self._leases.get(lease_id)
        if lease is None:
            return 0
        lease.expires = self._clock() + lease.ttl
        return lease.ttl

    async def ttl_left(self, lease_id: int) -> int:
        self.expire_leases()
        lease = self._leases.get(lease_id)
        if lease is None:
            return -1  # etcd's answer for a lease it does not know
        return int(lease.expires - self._clock())

    async def revoke(self, lease_id: int) -> None:
        self.expire_leases()
        if lease_id not in self._leases:
            raise StoreError(f"etcd lease revoke failed: requested lease {lease_id:x} not found")
        self._drop_lease(lease_id)

    # -- config ----------------------------------------------------------------------------

    async def get_config_text(self) -> str:
        kv = self.get_raw(self._keys.config)
        if kv is None:
            raise ConfigMissingError(f"no network config at {self._keys.config}")
        return kv.value.decode("utf-8", errors="replace")

    async def get_config(self) -> NetworkConfig:
        return parse_config(await self.get_config_text())

    async def put_config(self, cfg: NetworkConfig) -> None:
        self.put_raw(self._keys.config, cfg.to_json())

    # -- leases ----------------------------------------------------------------------------

    def _stored(self, kv: KeyValue) -> StoredLease | None:
        name = kv.key[len(self._keys.subnets) :]
        return decode_stored(name, kv.value, kv.lease, kv.mod_revision, kv.create_revision)

    def _snapshot(self) -> Snapshot:
        found = (self._stored(kv) for kv in self._range(self._keys.subnets))
        return Snapshot(self.revision, tuple(s for s in found if s is not None))

    async def list_leases(self) -> Snapshot:
        self.expire_leases()
        return self._snapshot()

    async def create_lease(self, record: LeaseRecord, lease_id: int) -> int:
        key = self._keys.lease(record.subnet)
        return self._txn_put(key, record.to_json(), lease_id, version=0)

    async def rebind_lease(self, record: LeaseRecord, lease_id: int, mod_revision: int) -> int:
        key = self._keys.lease(record.subnet)
        return self._txn_put(key, record.to_json(), lease_id, mod_revision=mod_revision)

    async def replace_lease(self, old: LeaseRecord, new: LeaseRecord, lease_id: int) -> int:
        key = self._keys.lease(new.subnet)
        return self._txn_put(key, new.to_json(), lease_id, value_was=old.to_json())

    async def delete_lease(self, subnet: IPv4Network) -> bool:
        self.expire_leases()
        return self._delete([self._keys.lease(subnet)]) > 0

    async def _watch_range(
        self,
        prefix: str,
        relist: Callable[[], tuple[int, T]],
        first: tuple[int, T] | None = None,
    ) -> AsyncIterator[tuple[T | None, list[_Event]]]:
        """As ``EtcdStore._watch_range``: (listing, []) from ``relist`` (or ``first``), then
        (None, events) after its revision; a fresh listing when that history was compacted."""
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        try:
            while True:
                self.expire_leases()
                seen, listing = first or relist()
                first = None
                yield listing, []
                # etcd refuses a watch from before the compaction (start < compact revision)
                while seen + 1 >= self.compact_revision:
                    self.expire_leases()
                    mine = [
                        e
                        for e in self._history
                        if e.revision > seen and e.kv.key.startswith(prefix)
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

    def _next_expiry(self) -> float | None:
        """Seconds of ``clock`` until the next lease expires: a waiting watch wakes for it."""
        if not self._leases:
            return None
        return max(0.01, min(lease.expires for lease in self._leases.values()) - self._clock())

    async def watch_leases(self, first: Snapshot | None = None) -> AsyncIterator[WatchBatch]:
        def relist() -> tuple[int, Snapshot]:
            snapshot = self._snapshot()
            return snapshot.revision, snapshot

        held = (first.revision, first) if first is not None else None
        async for listing, events in self._watch_range(self._keys.subnets, relist, held):
            if listing is not None:
                yield WatchBatch(listing, ())
                continue
            batch = tuple(
                LeaseEvent(e.kind, stored) for e in events if (stored := self._stored(e.kv))
            )
            if batch:
                yield WatchBatch(None, batch)

    # -- gateways --------------------------------------------------------------------------

    async def claim_gateway(self, site: str, claim: GatewayClaim, lease_id: int) -> bool:
        return self._txn_put(self._keys.gateway(site), claim.to_json(), lease_id, version=0) > 0

    async def resign_gateway(self, site: str, claim: GatewayClaim) -> bool:
        self.expire_leases()
        key = self._keys.gateway(site)
        kv = self._kvs.get(key)
        if kv is None or kv.value != claim.to_json().encode():
            return False
        self._delete([key])
        return True

    async def report_gateway(self, site: str, report: HealthReport, lease_id: int) -> None:
        key = self._keys.report(site, report.reporter_id)
        self.expire_leases()
        if report.healthy:
            self._delete([key])
        else:
            self._put(key, report.to_json(), lease_id)

    def _gateway_state(self) -> GatewayState:
        state = GatewayState()
        for kv in self._range(self._keys.gw):
            _log_malformed(state.absorb(kv.key[len(self._keys.gw) :], kv.value))
        state.revision = self.revision
        return state

    async def list_gateways(self) -> GatewayState:
        self.expire_leases()
        return self._gateway_state()

    async def watch_gateways(self) -> AsyncIterator[GatewayState]:
        def relist() -> tuple[int, GatewayState]:
            state = self._gateway_state()
            return state.revision, state

        current = GatewayState()
        async for listing, events in self._watch_range(self._keys.gw, relist):
            if listing is not None:
                current = listing
            for e in events:
                name = e.kv.key[len(self._keys.gw) :]
                _log_malformed(
                    current.absorb(name, None if e.kind is EventKind.DELETE else e.kv.value)
                )
            yield current

    # -- control requests ------------------------------------------------------------------

    def _control(self, key: str) -> ControlValue | None:
        kv = self._kvs.get(key)
        return None if kv is None else _control_value(kv)

    async def get_control(self, node: str, verb: str) -> ControlValue | None:
        self.expire_leases()
        return self._control(self._keys.control(node, verb))

    async def put_control(self, node: str, verb: str, value: str) -> None:
        self.put_raw(self._keys.control(node, verb), value)

    async def delete_control(self, node: str, verb: str, mod_revision: int) -> bool:
        self.expire_leases()
        key = self._keys.control(node, verb)
        kv = self._kvs.get(key)
        if kv is None or kv.mod_revision != mod_revision:
            return False
        self._delete([key])
        return True

    async def watch_control(self, node: str, verb: str) -> AsyncIterator[ControlValue | None]:
        key = self._keys.control(node, verb)
        async for listing, events in self._watch_range(
            key, lambda: (self.revision, self._control(key))
        ):
            if not events:
                yield listing
            for e in events:
                if e.kv.key == key:  # the watched prefix also holds longer keys
                    yield None if e.kind is EventKind.DELETE else _control_value(e.kv)

    # -- reservations ----------------------------------------------------------------------

    async def list_reservations(self) -> dict[IPv4Network, str]:
        self.expire_leases()
        prefix = self._keys.reservations
        found = (decode_reservation(kv.key[len(prefix) :], kv.value) for kv in self._range(prefix))
        return dict(r for r in found if r is not None)

    async def put_reservation(self, subnet: IPv4Network, node: str) -> None:
        self.put_raw(self._keys.reservation(subnet), reservation_value(node))

    async def delete_reservation(self, subnet: IPv4Network) -> bool:
        self.expire_leases()
        return self._delete([self._keys.reservation(subnet)]) > 0


def _control_value(kv: KeyValue) -> ControlValue:
    return ControlValue(kv.mod_revision, kv.value.decode("utf-8", "replace"))


def _deleted(kv: KeyValue, revision: int) -> KeyValue:
    """A delete event's key as etcd sends it: the key and the revision, nothing else."""
    return KeyValue(kv.key, b"", 0, revision, 0, 0)


def _log_malformed(problem: str | None) -> None:
    """One line for a gateway record that could not be read (it counts as absent)."""
    if problem is not None:
        _gateway_log.error("%s", problem)
