"""Acquires this node's subnet lease and keeps it: renewal, repair, and re-acquisition.

Every claim is one atomic etcd transaction (create-if-absent, or rebind our own key if
unchanged), so two nodes can never both hold a subnet. Store outages and an exhausted
pool are retried with backoff; they are logged, never fatal.

Own-lease integrity: the daemon's store watch hands every change of our key to ``notice``.
A value we did not write (another record, or ours under another etcd lease) is logged once
and overwritten with ours by a transaction guarded by the revision we saw; a deleted key is
re-acquired. Changes at or before our own last write (a snapshot listed before our claim,
a late event) are ours and ignored: that is what keeps a restart from "noticing" itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Network

from overlayd.disk.state_dir import StateDir
from overlayd.planning.alloc import ClaimKind, plan_claims
from overlayd.runtime.logs import Throttle
from overlayd.runtime.retry import Backoff, Retry, retry
from overlayd.store.api import KeeperStore, Snapshot, StoredLease
from overlayd.values.config import NetworkConfig
from overlayd.values.errors import OverlaydError, PoolExhaustedError, StoreError
from overlayd.values.lease import LeaseRecord, subnet_key_name
from overlayd.values.text import quote

log = logging.getLogger("overlayd.lease")

RACE_RETRIES = 8
RESTORE_RETRY = 1.0  # seconds before retrying a restore the store failed (doubling to 30)
FOREIGN_WARN_INTERVAL = 1.0  # seconds: at most one "rewritten" warning per interval


@dataclass(frozen=True)
class HeldLease:
    """Our record, the etcd lease it is bound to, and the revision of our last write."""

    record: LeaseRecord
    lease_id: int
    revision: int = 0


class LeaseKeeper:
    """Holds this node's lease. ``template`` is our record with a placeholder subnet."""

    def __init__(
        self,
        store: KeeperStore,
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
        self._wake = asyncio.Event()  # something for ``keep`` to do before the next renewal
        self._lost = False  # our key is gone (or unusable): claim again
        self._foreign: StoredLease | None = None  # a value in our key we did not write
        self._writing: tuple[LeaseRecord, int] | None = None  # (record, etcd lease) in flight
        self._foreign_log = Throttle(FOREIGN_WARN_INTERVAL)
        # doubles while the store fails a restore
        self._restore_backoff = Retry(Backoff(first=RESTORE_RETRY, cap=30.0), running=True)
        self.held: HeldLease | None = None
        self._expires: float | None = None  # time.monotonic() when our etcd lease runs out
        self.snapshot: Snapshot | None = None  # the leases as last listed to claim one

    @property
    def renew_interval(self) -> float:
        """Renew well before expiry: every third of the TTL, at least hourly."""
        return max(1.0, min(self._ttl / 3, 3600.0))

    def notice(self, stored: StoredLease | None, subnet: IPv4Network, revision: int = 0) -> None:
        """Called by the store watcher for every change to ``subnet``'s key.

        ``stored`` None: the key was deleted (at ``revision``, 0 if unknown).
        """
        held = self.held
        if held is None or subnet != held.record.subnet:
            return
        seen = stored.mod_revision if stored is not None else revision
        if seen and seen <= held.revision:
            return  # our own write or older: a snapshot listed before our claim, a late event
        if stored is None:
            if not self._lost:
                log.warning("our lease %s was deleted; re-acquiring", subnet)
            self._lost = True
        elif self._ours(held, stored):
            return
        else:
            self._foreign = stored
            self._warn_foreign(stored)
        self._wake.set()

    def _warn_foreign(self, stored: StoredLease) -> None:
        """One warning per foreign write; a writer rewriting in a loop gets one per interval
        (saying how many more), not a flood."""
        dropped = self._foreign_log.allow(stored.subnet)
        if dropped is None:
            return
        more = f"; {dropped} more rewrites since the last warning" if dropped else ""
        log.warning(
            "our lease key %s was rewritten at revision %d by another writer (%s, etcd lease "
            "%x); restoring our record%s",
            f"subnets/{subnet_key_name(stored.subnet)}", stored.mod_revision, _describe(stored),
            stored.lease_id, more,
        )  # fmt: skip

    def _ours(self, held: HeldLease, stored: StoredLease) -> bool:
        written = (stored.record, stored.lease_id)
        return written == (held.record, held.lease_id) or written == self._writing

    async def acquire(self) -> HeldLease:
        """Claim a subnet, retrying store errors and exhaustion until one is held."""

        def failed(exc: OverlaydError, delay: float) -> None:
            if isinstance(exc, PoolExhaustedError):
                log.error("%s; retrying in %.0fs (hint: %s)", exc, delay, exc.hint)
            else:
                log.warning("cannot acquire a lease yet: %s; retrying in %.0fs", exc, delay)

        held = await retry(self.acquire_once, Retry(Backoff(cap=30.0), running=True), failed)
        self._set(held)
        return held

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
                old = stored.get(claim.subnet)
                revision = await self._write_claim(claim.kind, record, lease_id, old)
                if revision:
                    log.info("acquired subnet %s (%s)", claim.subnet, claim.kind.value)
                    await self._release_stale(snapshot, record, lease_id)
                    return HeldLease(record, lease_id, revision)
                log.info("lost the race for %s; retrying", claim.subnet)
        raise StoreError(f"could not claim a subnet after {RACE_RETRIES} races")

    async def _write_claim(
        self, kind: ClaimKind, record: LeaseRecord, lease_id: int, old: StoredLease | None
    ) -> int:
        """One claim transaction; the revision written, 0 if another writer was first."""
        self._writing = (record, lease_id)
        try:
            if kind is not ClaimKind.OWN_LEASE or old is None:
                return await self._store.create_lease(record, lease_id)
            revision = await self._store.rebind_lease(record, lease_id, old.mod_revision)
            if revision and old.lease_id and old.lease_id != lease_id:
                with contextlib.suppress(StoreError):
                    await self._store.revoke(old.lease_id)  # the key moved off it
            return revision
        finally:
            self._writing = None

    async def _release_stale(self, snapshot: Snapshot, mine: LeaseRecord, lease_id: int) -> None:
        """Revoke the etcd leases of our own records under other subnets (left by an earlier
        run whose subnet was no longer allocatable): they are us, not peers."""
        for s in snapshot.leases:
            rec = s.record
            if rec is None or s.subnet == mine.subnet or not s.lease_id or s.lease_id == lease_id:
                continue
            if rec.node == mine.node and rec.node_id == mine.node_id:
                log.info("releasing our old subnet %s (etcd lease %x)", s.subnet, s.lease_id)
                with contextlib.suppress(StoreError):
                    await self._store.revoke(s.lease_id)

    async def republish(self, template: LeaseRecord) -> None:
        """Publish changed facts about this node (e.g. discovered public addresses)."""
        self._template = template
        held = self.held
        if held is None:
            return
        record = replace(template, subnet=held.record.subnet)
        if record == held.record:
            return
        self._writing = (record, held.lease_id)
        try:
            revision = await self._store.replace_lease(held.record, record, held.lease_id)
        finally:
            self._writing = None
        if revision:
            log.info("lease %s republished", record.subnet)
            self._set(HeldLease(record, held.lease_id, revision))
        else:  # changed behind our back: act as the watch will (restore or re-acquire)
            snapshot = await self._store.list_leases()
            now = next((s for s in snapshot.leases if s.subnet == record.subnet), None)
            self.notice(now, record.subnet, snapshot.revision)

    def ttl_left(self) -> float | None:
        """Seconds our etcd lease has left, as of its grant or last renewal (None: no lease
        held); for metrics."""
        if self.held is None or self._expires is None:
            return None
        return max(0.0, self._expires - time.monotonic())

    def _set(self, held: HeldLease) -> None:
        if self.held is None or held.lease_id != self.held.lease_id:
            self._expires = time.monotonic() + self._ttl  # granted just before
        self.held = held
        self._lost = False
        self._foreign = None
        self._state_dir.remember_subnet(held.record.subnet)
        self._on_change(held)

    def _lose(self) -> None:
        self._lost = True
        self._wake.set()

    async def keep(self) -> None:
        """Renew forever; restore our value when another writer changes it; re-acquire
        (same subnet if still free) when the lease is lost."""
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self.renew_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, renew_at - loop.time()))
            self._wake.clear()
            held = self.held
            assert held is not None
            if self._lost:
                new = await self.acquire()
                if new.lease_id != held.lease_id:
                    with contextlib.suppress(StoreError):  # it may hold nothing, or be gone
                        await self._store.revoke(held.lease_id)
                renew_at = loop.time() + self.renew_interval
            elif self._foreign is not None:
                await self._restore(held, self._foreign)
            elif loop.time() >= renew_at:
                renew_at = loop.time() + self.renew_interval
                await self._renew(held)

    async def _renew(self, held: HeldLease) -> None:
        try:
            ttl = await self._store.keepalive(held.lease_id)
        except StoreError as exc:
            log.warning("lease renewal failed (will retry): %s", exc)
            return
        self._expires = time.monotonic() + max(0, ttl)
        if ttl <= 0:
            log.warning("our etcd lease %x expired; re-acquiring", held.lease_id)
            self._lose()

    async def _restore(self, held: HeldLease, seen: StoredLease) -> None:
        """Overwrite a foreign value in our key, unless it changed again since ``seen``."""
        self._foreign = None
        record = replace(self._template, subnet=held.record.subnet)  # with the latest facts
        self._writing = (record, held.lease_id)
        try:
            revision = await self._store.rebind_lease(record, held.lease_id, seen.mod_revision)
        except StoreError as exc:
            if not self._restore_backoff.retries(exc):
                raise
            delay = self._restore_backoff.next_delay()
            log.warning("cannot restore lease %s yet: %s; retrying in %.0fs", seen.subnet, exc,
                        delay)  # fmt: skip
            await self._renew(held)  # our etcd lease itself may be gone: then re-acquire
            await self._restore_backoff.pause(delay)
            if self._foreign is None:
                self._foreign = seen  # nothing newer came in: try again with what we saw
            self._wake.set()
            return
        finally:
            self._writing = None
        self._restore_backoff.reset()
        if revision and self.held == held:
            if record == held.record:
                self.held = replace(held, revision=revision)
            else:
                self._set(HeldLease(record, held.lease_id, revision))
        # else the key changed again since ``seen``: its newer event brings us back here


def _describe(stored: StoredLease) -> str:
    """What a foreign value in our key says, short (its fields come from outside)."""
    if stored.record is None:
        return f"an undecodable value: {quote(stored.error)}"
    return f"node {quote(stored.record.node)} at {stored.record.public_ip}"
