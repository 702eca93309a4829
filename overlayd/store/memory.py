"""An in-memory ``Store`` with etcd's semantics where overlayd depends on them.

For component tests of the daemon's parts and of overlayctl: no etcd, no sockets, no real
waiting. ``MemStore`` is the ``Store`` Protocol over ``MemKV`` (overlayd/store/memory_kv.py:
revisions, etcd leases on a clock, guarded transactions, the watch fan-out), reading keys
as ``EtcdStore`` does (overlayd/store/keyspace.py); tests/component/test_store_contract.py
runs both against the same checks.

Besides the ``Store`` methods it has test hooks: ``put_raw`` (what a person or another
tool might write), ``get_raw``, ``compact`` and ``expire_leases``. It must not import the
etcd client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address, IPv4Network

from overlayd.store import keyspace
from overlayd.store.api import (
    DEFAULT_PREFIX,
    ControlValue,
    Snapshot,
    StoreKeys,
    WatchBatch,
    reservation_value,
)
from overlayd.store.keyspace import KeyValue
from overlayd.store.memory_kv import MemKV, absent, mod_is, value_is
from overlayd.values.config import NetworkConfig, parse_config
from overlayd.values.errors import ConfigMissingError
from overlayd.values.gateway_state import GatewayClaim, GatewayState, HealthReport
from overlayd.values.lease import LeaseRecord


class MemStore:
    """All of the ``Store`` Protocol in memory; one instance is one etcd (its data)."""

    def __init__(
        self, prefix: str = DEFAULT_PREFIX, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._keys = StoreKeys(prefix.rstrip("/"))
        self._kv = MemKV(clock)

    @property
    def prefix(self) -> str:
        return self._keys.prefix

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

    # -- etcd leases -------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        return self._kv.grant(ttl)

    async def keepalive(self, lease_id: int) -> int:
        return self._kv.keepalive(lease_id)

    async def ttl_left(self, lease_id: int) -> int:
        return self._kv.ttl_left(lease_id)

    async def revoke(self, lease_id: int) -> None:
        self._kv.revoke(lease_id)

    # -- config ----------------------------------------------------------------------------

    async def get_config_text(self) -> str:
        kv = self._kv.get(self._keys.config)
        if kv is None:
            raise ConfigMissingError(f"no network config at {self._keys.config}")
        return kv.value.decode("utf-8", errors="replace")

    async def get_config(self) -> NetworkConfig:
        return parse_config(await self.get_config_text())

    async def put_config(self, cfg: NetworkConfig) -> None:
        self._kv.put(self._keys.config, cfg.to_json())

    # -- leases ----------------------------------------------------------------------------

    def _snapshot(self) -> tuple[int, Snapshot]:
        leases = keyspace.stored_leases(self._keys, self._kv.range(self._keys.subnets))
        snapshot = Snapshot(self._kv.revision, tuple(leases))
        return snapshot.revision, snapshot

    async def list_leases(self) -> Snapshot:
        return self._snapshot()[1]

    async def create_lease(self, record: LeaseRecord, lease_id: int) -> int:
        key = self._keys.lease(record.subnet)
        return self._kv.txn_put(key, record.to_json(), lease_id, absent)

    async def rebind_lease(self, record: LeaseRecord, lease_id: int, mod_revision: int) -> int:
        key = self._keys.lease(record.subnet)
        return self._kv.txn_put(key, record.to_json(), lease_id, mod_is(mod_revision))

    async def replace_lease(self, old: LeaseRecord, new: LeaseRecord, lease_id: int) -> int:
        key = self._keys.lease(new.subnet)
        return self._kv.txn_put(key, new.to_json(), lease_id, value_is(old.to_json()))

    async def delete_lease(self, subnet: IPv4Network) -> bool:
        return self._kv.delete(self._keys.lease(subnet)) > 0

    def watch_leases(self, first: Snapshot | None = None) -> AsyncIterator[WatchBatch]:
        held = (first.revision, first) if first is not None else None
        raw = self._kv.watch(self._keys.subnets, self._snapshot, held)
        return keyspace.lease_batches(self._keys, raw)

    # -- gateways --------------------------------------------------------------------------

    async def claim_gateway(self, site: str, claim: GatewayClaim, lease_id: int) -> bool:
        return self._kv.txn_put(self._keys.gateway(site), claim.to_json(), lease_id, absent) > 0

    async def resign_gateway(self, site: str, claim: GatewayClaim) -> bool:
        return self._kv.txn_delete(self._keys.gateway(site), value_is(claim.to_json()))

    async def report_gateway(self, site: str, report: HealthReport, lease_id: int) -> None:
        key = self._keys.report(site, report.reporter_id)
        if report.healthy:
            self._kv.delete(key)
        else:
            self._kv.put(key, report.to_json(), lease_id)

    def _gateway_state(self) -> tuple[int, GatewayState]:
        kvs = self._kv.range(self._keys.gw)
        return self._kv.revision, keyspace.gateway_state(self._keys, kvs, self._kv.revision)

    async def list_gateways(self) -> GatewayState:
        return self._gateway_state()[1]

    def watch_gateways(self) -> AsyncIterator[GatewayState]:
        raw = self._kv.watch(self._keys.gw, self._gateway_state)
        return keyspace.gateway_states(self._keys, raw)

    # -- control requests ------------------------------------------------------------------

    def _control(self, key: str) -> tuple[int, ControlValue | None]:
        kv = self._kv.get(key)
        return self._kv.revision, None if kv is None else keyspace.control_value(kv)

    async def get_control(self, node: str, verb: str) -> ControlValue | None:
        return self._control(self._keys.control(node, verb))[1]

    async def put_control(self, node: str, verb: str, value: str) -> None:
        self._kv.put(self._keys.control(node, verb), value)

    async def delete_control(self, node: str, verb: str, mod_revision: int) -> bool:
        return self._kv.txn_delete(self._keys.control(node, verb), mod_is(mod_revision))

    def watch_control(self, node: str, verb: str) -> AsyncIterator[ControlValue | None]:
        key = self._keys.control(node, verb)
        return keyspace.control_values(key, self._kv.watch(key, lambda: self._control(key)))

    # -- reservations ----------------------------------------------------------------------

    async def list_reservations(self) -> dict[IPv4Network, str]:
        return keyspace.reservations(self._keys, self._kv.range(self._keys.reservations))

    async def put_reservation(self, subnet: IPv4Network, node: str) -> None:
        self._kv.put(self._keys.reservation(subnet), reservation_value(node))

    async def delete_reservation(self, subnet: IPv4Network) -> bool:
        return self._kv.delete(self._keys.reservation(subnet)) > 0
