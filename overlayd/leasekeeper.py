"""Acquires this node's subnet lease and keeps it: renewal, and re-acquisition when lost.

Every claim is one atomic etcd transaction (create-if-absent, or rebind our own key if
unchanged), so two nodes can never both hold a subnet. Store outages and an exhausted
pool are retried with backoff; they are logged, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Network

from overlayd.alloc import ClaimKind, plan_claims
from overlayd.config import NetworkConfig
from overlayd.errors import PoolExhaustedError, StoreError
from overlayd.identity import StateDir
from overlayd.lease import LeaseRecord
from overlayd.store_api import Snapshot, Store, StoredLease

log = logging.getLogger("overlayd.lease")

RACE_RETRIES = 8


@dataclass(frozen=True)
class HeldLease:
    record: LeaseRecord
    lease_id: int


class LeaseKeeper:
    """Holds this node's lease. ``template`` is our record with a placeholder subnet."""

    def __init__(
        self,
        store: Store,
        cfg: NetworkConfig,
        template: LeaseRecord,
        state_dir: StateDir,
        ttl: int,
        on_change: Callable[[HeldLease], None],
    ) -> None:
        self._store = store
        self._cfg = cfg
        self._template = template
        self._state_dir = state_dir
        self._ttl = ttl
        self._on_change = on_change
        self._rng = random.Random(f"{template.node_id}:{template.node}")
        self._lost = asyncio.Event()
        self.held: HeldLease | None = None
        self.snapshot: Snapshot | None = None  # the leases as last listed to claim one

    @property
    def renew_interval(self) -> float:
        """Renew well before expiry: every third of the TTL, at least hourly."""
        return max(1.0, min(self._ttl / 3, 3600.0))

    def notice(self, stored: StoredLease | None, subnet: IPv4Network) -> None:
        """Called by the store watcher for every change to ``subnet``'s key (None: deleted)."""
        held = self.held
        if held is None or subnet != held.record.subnet:
            return
        if stored is None or stored.lease_id != held.lease_id:
            log.warning("our lease %s was deleted or taken over; re-acquiring", subnet)
            self._lost.set()

    async def acquire(self) -> HeldLease:
        """Claim a subnet, retrying store errors and exhaustion until one is held."""
        delay = 1.0
        while True:
            try:
                held = await self.acquire_once()
            except PoolExhaustedError as exc:
                log.error("%s; retrying in %.0fs (hint: %s)", exc, delay, exc.hint)
            except StoreError as exc:
                log.warning("cannot acquire a lease yet: %s; retrying in %.0fs", exc, delay)
            else:
                self._set(held)
                return held
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def acquire_once(self) -> HeldLease:
        """One attempt to claim a subnet (``acquire`` retries it): raises PoolExhaustedError
        or StoreError; on success the lease is not yet taken as held (``acquire`` does that)."""
        granted: list[int] = []
        try:
            return await self._claim(granted)
        except BaseException:
            # nothing was claimed with the etcd lease we granted: don't leave it behind
            for lease_id in granted:
                with contextlib.suppress(StoreError):
                    await self._store.revoke(lease_id)
            raise

    async def _claim(self, granted: list[int]) -> HeldLease:
        lease_id = 0
        for _ in range(RACE_RETRIES):
            snapshot = self.snapshot = await self._store.list_leases()
            stored = {s.subnet: s for s in snapshot.leases}
            claims = plan_claims(
                self._cfg,
                node=self._template.node,
                node_id=self._template.node_id,
                leases={s.subnet: s.record for s in snapshot.leases},
                reservations=await self._store.list_reservations(),
                remembered=self._state_dir.remembered_subnet(),
                rng=self._rng,
            )
            if not claims:
                raise PoolExhaustedError(
                    f"no free subnet left in {self._cfg.network} "
                    f"({self._cfg.subnet_count()} subnets of /{self._cfg.subnet_len})"
                )
            if lease_id == 0:
                lease_id = await self._store.grant(self._ttl)
                granted.append(lease_id)
            for claim in claims:
                record = replace(self._template, subnet=claim.subnet)
                if claim.kind is ClaimKind.OWN_LEASE:
                    old = stored[claim.subnet]
                    ok = await self._store.rebind_lease(record, lease_id, old.mod_revision)
                    if ok and old.lease_id and old.lease_id != lease_id:
                        with contextlib.suppress(StoreError):
                            await self._store.revoke(old.lease_id)  # the key moved off it
                else:
                    ok = await self._store.create_lease(record, lease_id)
                if ok:
                    log.info("acquired subnet %s (%s)", claim.subnet, claim.kind.value)
                    return HeldLease(record, lease_id)
                log.info("lost the race for %s; retrying", claim.subnet)
        raise StoreError(f"could not claim a subnet after {RACE_RETRIES} races")

    async def republish(self, template: LeaseRecord) -> None:
        """Publish changed facts about this node (e.g. discovered public addresses)."""
        self._template = template
        held = self.held
        if held is None:
            return
        record = replace(template, subnet=held.record.subnet)
        if record == held.record:
            return
        if await self._store.replace_lease(held.record, record, held.lease_id):
            log.info("lease %s republished", record.subnet)
            self._set(HeldLease(record, held.lease_id))
        else:
            self._lost.set()  # changed behind our back: re-acquire with the new facts

    def _set(self, held: HeldLease) -> None:
        self.held = held
        self._lost.clear()
        self._state_dir.remember_subnet(held.record.subnet)
        self._on_change(held)

    async def keep(self) -> None:
        """Renew forever; re-acquire (same subnet if still free) when the lease is lost."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=self.renew_interval)
            held = self.held
            assert held is not None
            if not self._lost.is_set():
                try:
                    ttl = await self._store.keepalive(held.lease_id)
                except StoreError as exc:
                    log.warning("lease renewal failed (will retry): %s", exc)
                    continue
                if ttl > 0:
                    continue
                log.warning("our etcd lease %x expired; re-acquiring", held.lease_id)
            new = await self.acquire()
            if new.lease_id != held.lease_id:
                with contextlib.suppress(StoreError):  # it may hold nothing, or be gone
                    await self._store.revoke(held.lease_id)
