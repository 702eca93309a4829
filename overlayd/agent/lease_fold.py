"""The lease-event fold: the store's lease watch folded into the records the planner reads.

Owns the current leases by subnet (as stored, as records, their create revisions), which
subnets changed since the last pass, the scope check of peers' records, the one error
line per malformed record, and the churn lines of peers joining, changing and leaving.
Every lease is told to the lease keeper (which repairs our own) and to the path keeper
(which probes peers). It plans nothing and touches no device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Network

from overlayd.agent.churnlog import activity_churn, key_counts, lease_counts
from overlayd.agent.path_api import PathKeeping
from overlayd.agent.rotation import key_change
from overlayd.agent.status_docs import Status
from overlayd.runtime.logs import Churn
from overlayd.runtime.retry import Backoff, Retry
from overlayd.store.api import EventKind, LeaseStore, StoredLease, WatchBatch
from overlayd.store.lease_keeper import LeaseKeeper
from overlayd.values.errors import OverlaydError
from overlayd.values.lease import LeaseRecord
from overlayd.values.lease_rules import check_scope
from overlayd.values.text import quote

log = logging.getLogger("overlayd")


class LeaseFold:
    """The leases of ``network`` as the watch delivers them; ``node_id``: ours."""

    def __init__(
        self,
        network: IPv4Network,
        node_id: str,
        keeper: LeaseKeeper,
        paths: PathKeeping,
        churn: Churn,
        status: Status,
    ) -> None:
        self._network, self._node_id = network, node_id
        self._keeper, self._paths, self._churn, self._status = keeper, paths, churn, status
        # a peer's new key is a security event: its line must not drown in the churn of
        # the republished leases and kernel passes a rotation causes (its own burst budget)
        self._keys = activity_churn(log)
        self.leases: dict[IPv4Network, StoredLease] = {}
        self.records: dict[IPv4Network, LeaseRecord] = {}
        self.created: dict[IPv4Network, int] = {}  # etcd create_revision: older wins conflicts
        self._bad_seen: set[tuple[IPv4Network, int]] = set()
        self._changed: set[IPv4Network] = set()  # subnets whose lease changed since the last plan

    def take_changed(self) -> set[IPv4Network]:
        """The subnets whose lease changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    async def watch(self, store: LeaseStore, on_batch: Callable[[bool], None]) -> None:
        """Fold the store's lease watch forever (retried on our errors); ``on_batch(full)``
        after each batch, ``full`` when it carried a snapshot."""
        backoff = Retry(Backoff(cap=10.0), running=True)
        first, self._keeper.snapshot = self._keeper.snapshot, None
        while True:
            try:
                async for batch in store.watch_leases(first):
                    first = None
                    on_batch(self.absorb(batch))
                    backoff.reset()
            except OverlaydError as exc:
                if not backoff.retries(exc):
                    raise
                delay = backoff.next_delay()
                log.warning("lease watch failed: %s; retrying in %.0fs", exc, delay)
                await backoff.pause(delay)

    def absorb(self, batch: WatchBatch) -> bool:
        """Fold one batch; True when it carried a snapshot (everything is replanned)."""
        if batch.snapshot is not None:
            fresh = {s.subnet: s for s in batch.snapshot.leases}
            for subnet in self.leases.keys() - fresh.keys():
                self._forget(subnet, batch.snapshot.revision)
            for stored in fresh.values():
                self._remember(stored, quiet=True)
            if not self._status.snapshot_loaded:
                log.info("store snapshot loaded: %d leases", len(fresh))
            self._status.snapshot_loaded = True
        for event in batch.events:
            if event.kind is EventKind.DELETE:
                self._forget(event.lease.subnet, event.lease.mod_revision)
            else:
                self._remember(event.lease)
        return batch.snapshot is not None

    def _me(self) -> LeaseRecord:
        assert self._keeper.held is not None
        return self._keeper.held.record

    def _remember(self, stored: StoredLease, *, quiet: bool = False) -> None:
        """Take a lease as current; ``quiet``: part of a snapshot, summarised by the caller."""
        self._keeper.notice(stored, stored.subnet)  # as written: scope is about peers, not us
        stored = self._scoped(stored)
        old = self.leases.get(stored.subnet)
        self.leases[stored.subnet] = stored
        if old is not None and old.mod_revision == stored.mod_revision:
            return  # unchanged: keep the old record object (the planner memoises by identity)
        self._changed.add(stored.subnet)
        self._paths.lease_changed(self._me(), stored.subnet, stored.record)
        if stored.record is None:
            self.records.pop(stored.subnet, None)
            self.created.pop(stored.subnet, None)
            if (stored.subnet, stored.mod_revision) not in self._bad_seen:
                self._bad_seen.add((stored.subnet, stored.mod_revision))
                log.error("ignoring malformed lease %s: %s", stored.subnet, stored.error)
            return
        self.records[stored.subnet] = stored.record
        self.created[stored.subnet] = stored.create_revision
        if stored.record.node_id == self._node_id or quiet:
            return
        self._note_change(old.record if old is not None else None, stored)

    def _note_change(self, old: LeaseRecord | None, stored: StoredLease) -> None:
        """The churn line of a peer's lease written (not ours, not in a snapshot)."""
        assert stored.record is not None
        node = quote(stored.record.node)
        if old is None or old.node != stored.record.node:
            self._churn.note(lease_counts("joined"), f"peer {node} joined with {stored.subnet}")
        elif rotated := key_change(old, stored.record):
            self._keys.note(key_counts(), rotated)  # overlayd/agent/rotation.py
        elif old != stored.record:
            self._churn.note(
                lease_counts("changed"), f"peer {node} changed its lease {stored.subnet}"
            )

    def _scoped(self, stored: StoredLease) -> StoredLease:
        """``stored``, refused (as malformed) if its addresses are out of scope here."""
        if stored.record is None:
            return stored
        why = check_scope(stored.record, self._network)
        if why is None:
            return stored
        return replace(stored, record=None, error=f"lease {stored.subnet}: {why}")

    def _forget(self, subnet: IPv4Network, revision: int = 0) -> None:
        """Drop a lease deleted at store ``revision`` (0: unknown)."""
        old = self.leases.pop(subnet, None)
        self.records.pop(subnet, None)
        self.created.pop(subnet, None)
        self._changed.add(subnet)
        self._keeper.notice(None, subnet, revision)
        self._paths.lease_changed(self._me(), subnet, None)
        if old is not None and old.record is not None:
            self._churn.note(lease_counts("left"), f"peer {quote(old.record.node)} left ({subnet})")
