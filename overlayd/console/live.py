"""The leases, the nodes' reports and the gateway state, kept current by the store's
watches while the console runs: a page then costs a view and a render, not a decode of
every record in etcd (at 5,000 nodes that read alone took longer than the page may).

The config and the reservations are read per request instead: two small keys' worth, and
what the management forms have just written must show at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Protocol, TypeVar

from overlayd.store.api import (
    EventKind,
    GatewayStore,
    LeaseStore,
    Snapshot,
    StatusStore,
    StatusTable,
    StoredLease,
    WatchBatch,
)
from overlayd.values.errors import StoreError
from overlayd.values.gateway_state import GatewayState

log = logging.getLogger("overlayd.console")
T = TypeVar("T")
RETRY = 1.0  # seconds before a watch that failed is opened again


class LiveStore(LeaseStore, GatewayStore, StatusStore, Protocol):
    """What the live state watches."""


@dataclass(frozen=True)
class Observed:
    """The watched state at one moment."""

    leases: Snapshot
    reports: StatusTable
    gateways: GatewayState
    trouble: str | None = None  # why a watch is failing now (its data may be old)
    version: int = 0  # counts the changes seen: the same version, the same state


class Live:
    """Follows three watches; ``observed`` waits for the first snapshot of each."""

    def __init__(self, store: LiveStore) -> None:
        self._store = store
        self._leases: dict[IPv4Network, StoredLease] = {}
        self._revision = 0
        self._reports = StatusTable(0, ())
        self._gateways = GatewayState()
        self._trouble: dict[str, str] = {}
        self._version = 0
        self._seen = {name: asyncio.Event() for name in ("leases", "reports", "gateways")}

    async def observed(self) -> Observed:
        """The current state, once every watch delivered its first snapshot."""
        for seen in self._seen.values():
            await seen.wait()
        trouble = "; ".join(f"{k}: {v}" for k, v in sorted(self._trouble.items())) or None
        snapshot = Snapshot(self._revision, tuple(self._leases.values()))
        return Observed(snapshot, self._reports, self._gateways, trouble, self._version)

    async def run(self) -> None:
        """Follow the watches until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow("leases", self._store.watch_leases, self._batch))
            tasks.create_task(
                self._follow("reports", self._store.watch_status_reports, self._table)
            )
            tasks.create_task(self._follow("gateways", self._store.watch_gateways, self._state))

    async def _follow(
        self, name: str, watch: Callable[[], AsyncIterator[T]], take: Callable[[T], None]
    ) -> None:
        while True:
            try:
                async for item in watch():
                    take(item)
                    self._version += 1
                    self._trouble.pop(name, None)
                    self._seen[name].set()
            except StoreError as exc:
                if name not in self._trouble:
                    log.warning("console: the %s watch failed: %s; retrying", name, exc)
                self._trouble[name] = str(exc)[:200]
            self._seen[name].set()  # serve what is known (or nothing) rather than hang
            await asyncio.sleep(RETRY)

    def _batch(self, batch: WatchBatch) -> None:
        if batch.snapshot is not None:
            self._leases = {s.subnet: s for s in batch.snapshot.leases}
            self._revision = batch.snapshot.revision
        for event in batch.events:
            if event.kind is EventKind.DELETE:
                self._leases.pop(event.lease.subnet, None)
            else:
                self._leases[event.lease.subnet] = event.lease
            self._revision = max(self._revision, event.lease.mod_revision)

    def _table(self, table: StatusTable) -> None:
        self._reports = table

    def _state(self, state: GatewayState) -> None:
        self._gateways = state
