"""``KeyedStore``: the ``Store`` methods over a raw key-value service, once for both stores.

The key layout (``StoreKeys``), the guards of each transaction and the reading of what the
keys hold live here and in overlayd/store/keyspace.py; ``EtcdStore`` (overlayd/store/etcd.py)
and ``MemStore`` (overlayd/store/memory.py) add only their ``RawKV`` and connection.

Must not import the etcd client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import IPv4Network

from overlayd.store import keyspace
from overlayd.store.api import (
    ControlValue,
    NameTable,
    Snapshot,
    StatusTable,
    StoreKeys,
    WatchBatch,
    reservation_value,
)
from overlayd.store.keyspace import ABSENT, Guard, RawKV
from overlayd.values.config import NetworkConfig, parse_config
from overlayd.values.errors import ConfigMissingError
from overlayd.values.gateway_state import GatewayClaim, GatewayState, HealthReport
from overlayd.values.lease import LeaseRecord, subnet_key_name
from overlayd.values.names import ContainerName
from overlayd.values.report import NodeReport


class KeyedStore:
    """Config, leases, reservations, gateways and control requests under ``prefix``."""

    def __init__(self, prefix: str, raw: RawKV) -> None:
        self._keys = StoreKeys(prefix.rstrip("/"))
        self._raw = raw

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    # -- etcd leases ---------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        return await self._raw.grant(ttl)

    async def keepalive(self, lease_id: int) -> int:
        """Renew an etcd lease once; returns the TTL left (<= 0: the lease is gone)."""
        return await self._raw.keepalive(lease_id)

    async def ttl_left(self, lease_id: int) -> int:
        return await self._raw.ttl_left(lease_id)

    async def revoke(self, lease_id: int) -> None:
        await self._raw.revoke(lease_id)

    # -- config ------------------------------------------------------------------------

    async def get_config_text(self) -> str:
        key = self._keys.config
        found = (await self._raw.get("get config", key))[1]
        if found is None:
            raise ConfigMissingError(f"no network config at {key}")
        return found.value.decode("utf-8", errors="replace")

    async def get_config(self) -> NetworkConfig:
        return parse_config(await self.get_config_text())

    async def put_config(self, cfg: NetworkConfig) -> None:
        await self._raw.put("put config", self._keys.config, cfg.to_json())

    # -- subnet leases -------------------------------------------------------------------

    async def list_leases(self) -> Snapshot:
        """Every lease at one revision (a consistent snapshot)."""
        revision, kvs = await self._raw.range("list leases", self._keys.subnets)
        return Snapshot(revision, tuple(keyspace.stored_leases(self._keys, kvs)))

    async def _relist_leases(self) -> tuple[int, Snapshot]:
        snapshot = await self.list_leases()
        return snapshot.revision, snapshot

    # The lease writes return the store revision of the write (0: the guard failed, nothing
    # written): the keeper tells its own writes from others' by it.

    async def create_lease(self, record: LeaseRecord, lease_id: int) -> int:
        """Atomically write ``record`` if its subnet key does not exist; 0 if it does."""
        return await self._write_lease(record, lease_id, ABSENT)

    async def rebind_lease(self, record: LeaseRecord, lease_id: int, mod_revision: int) -> int:
        """Overwrite our own lease key if nobody changed it since ``mod_revision``."""
        return await self._write_lease(record, lease_id, Guard(mod_revision=mod_revision))

    async def replace_lease(self, old: LeaseRecord, new: LeaseRecord, lease_id: int) -> int:
        """Overwrite our lease with ``new`` if it still holds exactly ``old``."""
        return await self._write_lease(new, lease_id, Guard(value=old.to_json()))

    async def _write_lease(self, record: LeaseRecord, lease_id: int, guard: Guard) -> int:
        key = self._keys.lease(record.subnet)
        return await self._raw.txn_put("lease transaction", key, record.to_json(), lease_id, guard)

    async def delete_lease(self, subnet: IPv4Network) -> bool:
        return await self._raw.delete("delete lease", self._keys.lease(subnet))

    def watch_leases(self, first: Snapshot | None = None) -> AsyncIterator[WatchBatch]:
        """A snapshot, then the changes after it; a fresh snapshot after a compaction.

        ``first`` is a snapshot the caller already holds (it saves listing every lease
        again at start-up). Connection losses are retried inside the client;
        ``StoreError`` only when a snapshot cannot be read.
        """
        held = (first.revision, first) if first is not None else None
        raw = self._raw.watch(self._keys.subnets, self._relist_leases, held)
        return keyspace.lease_batches(self._keys, raw)

    # -- gateways ------------------------------------------------------------------------

    async def claim_gateway(self, site: str, claim: GatewayClaim, lease_id: int) -> bool:
        """Become ``site``'s gateway if it has none (atomic); bound to ``lease_id``."""
        key, value = self._keys.gateway(site), claim.to_json()
        return await self._raw.txn_put("lease transaction", key, value, lease_id, ABSENT) > 0

    async def resign_gateway(self, site: str, claim: GatewayClaim) -> bool:
        """Give up ``site``'s gateway key if it is still ``claim``."""
        key = self._keys.gateway(site)
        return await self._raw.txn_delete("gateway resign", key, Guard(value=claim.to_json()))

    async def report_gateway(self, site: str, report: HealthReport, lease_id: int) -> None:
        """Publish (or clear, with ``report.healthy``) our view of ``site``'s gateway."""
        key = self._keys.report(site, report.reporter_id)
        if report.healthy:
            await self._raw.delete("clear report", key)
        else:
            await self._raw.put("put report", key, report.to_json(), lease_id)

    async def list_gateways(self) -> GatewayState:
        revision, kvs = await self._raw.range("list gateways", self._keys.gw)
        return keyspace.gateway_state(self._keys, kvs, revision)

    async def _relist_gateways(self) -> tuple[int, GatewayState]:
        state = await self.list_gateways()
        return state.revision, state

    def watch_gateways(self) -> AsyncIterator[GatewayState]:
        """The gateways and health reports of every site, again after each change."""
        raw = self._raw.watch(self._keys.gw, self._relist_gateways)
        return keyspace.gateway_states(self._keys, raw)

    # -- control requests (overlayd/agent/rotation.py) ------------------------------------

    async def _control(self, key: str) -> tuple[int, ControlValue | None]:
        revision, found = await self._raw.get("get control", key)
        return revision, keyspace.control_value(found) if found is not None else None

    async def get_control(self, node: str, verb: str) -> ControlValue | None:
        """The request ``verb`` pending for ``node``, None if there is none."""
        return (await self._control(self._keys.control(node, verb)))[1]

    async def put_control(self, node: str, verb: str, value: str) -> None:
        """Write (or renew) the request ``verb`` for ``node``; no etcd lease: it waits."""
        await self._raw.put("put control", self._keys.control(node, verb), value)

    async def delete_control(self, node: str, verb: str, mod_revision: int) -> bool:
        """Acknowledge a request: delete it if it is still the one at ``mod_revision``.

        A newer request written meanwhile stays (False), to be served in turn.
        """
        key = self._keys.control(node, verb)
        return await self._raw.txn_delete("delete control", key, Guard(mod_revision=mod_revision))

    def watch_control(self, node: str, verb: str) -> AsyncIterator[ControlValue | None]:
        """The request ``verb`` for ``node`` (None: none) now, then again after each change."""
        key = self._keys.control(node, verb)
        return keyspace.control_values(key, self._raw.watch(key, lambda: self._control(key)))

    # -- container names (overlayd/agent/names.py) --------------------------------------

    async def put_name(self, name: ContainerName, lease_id: int) -> None:
        """Publish a container's name, bound to ``lease_id`` (it goes with the node's lease)."""
        await self._raw.put(
            "put name", self._keys.names + name.key_part(), name.to_json(), lease_id
        )

    async def delete_name(self, subnet: IPv4Network, container_id: str) -> bool:
        key = f"{self._keys.names}{subnet_key_name(subnet)}/{container_id}"
        return await self._raw.delete("delete name", key)

    async def list_names(self) -> NameTable:
        revision, kvs = await self._raw.range("list names", self._keys.names)
        return keyspace.name_table(self._keys, kvs, revision)

    async def _relist_names(self) -> tuple[int, NameTable]:
        table = await self.list_names()
        return table.revision, table

    def watch_names(self) -> AsyncIterator[NameTable]:
        """Every container name now, then the whole table again after each change."""
        raw = self._raw.watch(self._keys.names, self._relist_names)
        return keyspace.name_tables(self._keys, raw)

    # -- status reports (overlayd/agent/reporting.py) -----------------------------------

    async def put_status_report(self, report: NodeReport, lease_id: int) -> None:
        """Publish ``report`` under ``status/<node>``, bound to ``lease_id``."""
        key = self._keys.status(report.node)
        await self._raw.put("put status report", key, report.to_json(), lease_id)

    async def list_status_reports(self) -> StatusTable:
        revision, kvs = await self._raw.range("list status reports", self._keys.statuses)
        return keyspace.status_table(self._keys, kvs, revision)

    async def _relist_status(self) -> tuple[int, StatusTable]:
        table = await self.list_status_reports()
        return table.revision, table

    def watch_status_reports(self) -> AsyncIterator[StatusTable]:
        """Every report now, then the whole table again after each change."""
        raw = self._raw.watch(self._keys.statuses, self._relist_status)
        return keyspace.status_tables(self._keys, raw)

    # -- reservations ------------------------------------------------------------------

    async def list_reservations(self) -> dict[IPv4Network, str]:
        kvs = (await self._raw.range("list reservations", self._keys.reservations))[1]
        return keyspace.reservations(self._keys, kvs)

    async def put_reservation(self, subnet: IPv4Network, node: str) -> None:
        key = self._keys.reservation(subnet)
        await self._raw.put("put reservation", key, reservation_value(node))

    async def delete_reservation(self, subnet: IPv4Network) -> bool:
        return await self._raw.delete("delete reservation", self._keys.reservation(subnet))
