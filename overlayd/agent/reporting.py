"""The daemon's status reporter: publishes what this node observes under
``<prefix>/status/<node>`` (docs/etcd-schema.md, "Status reports").

Every ``min_interval`` seconds it builds the report (overlayd/planning/report.py) from the
path keeper's peer reports and writes it if it changed (``due``), or when the last write
is ``refresh`` seconds old; nothing is written when nothing changed. The key is bound to
an etcd lease of its own, short (``ttl``) and kept alive here, so a dead node's report
vanishes within seconds while its subnet lease (24 h) stays. A failing store gives one
warning per minute (with how many more failures), never one a tick.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from overlayd.agent.host import Clock
from overlayd.agent.status_docs import Status
from overlayd.planning.report import PeerView, Reporter, ReportParams, due, node_report
from overlayd.runtime.logs import Throttle
from overlayd.store.api import EtcdLeases
from overlayd.values.errors import StoreError
from overlayd.values.lease import LeaseRecord
from overlayd.values.report import NodeReport

log = logging.getLogger("overlayd.report")
ERROR_LOG_EVERY = 60.0  # seconds between two warnings of a failing store
FIRST_LOOK = 0.25  # seconds between looks for a first report (cheap: no peers read)
MESH = "mesh"  # the role of a node outside the gateway topology


class ReportStore(EtcdLeases, Protocol):
    """What the reporter needs of the store: its own etcd lease, and the report key."""

    async def put_status_report(self, report: NodeReport, lease_id: int) -> None: ...


def versions() -> tuple[tuple[str, str], ...]:
    """The versions a report names: overlayd's own (``unknown`` when not installed)."""
    try:
        return (("overlayd", importlib.metadata.version("overlayd")),)
    except importlib.metadata.PackageNotFoundError:
        return (("overlayd", "unknown"),)


class StatusReporter:
    """Writes this node's report on change, at most every ``min_interval``, under its own
    short etcd lease. ``held``: our lease record (None: none yet, nothing reported);
    ``peers``: the path keeper's current peer reports; ``status``: the daemon's facts
    (role, last reconcile)."""

    def __init__(
        self,
        store: ReportStore,
        held: Callable[[], LeaseRecord | None],
        peers: Callable[[], Iterable[PeerView]],
        status: Status,
        clock: Clock,
        params: ReportParams | None = None,
    ) -> None:
        self._store = store
        self._held = held
        self._peers = peers
        self._status = status
        self._clock = clock
        self.params = params or ReportParams()
        self._versions = versions()
        self._lease: int | None = None
        self._renewed = 0.0
        self._written: NodeReport | None = None  # the last report written, and when
        self._written_when = 0.0
        self._errors = Throttle(ERROR_LOG_EVERY, clock.monotonic)

    async def run(self) -> None:
        """Tick every ``min_interval`` seconds, forever; until there is a first report
        to write (a lease, a reconcile pass), every ``FIRST_LOOK`` seconds."""
        while True:
            now = await self.tick()
            await asyncio.sleep(self.params.min_interval if now is not None else FIRST_LOOK)

    def report(self) -> NodeReport | None:
        """The report of now (None: no lease, or no reconcile pass yet: its peers are not
        all known)."""
        record = self._held()
        if record is None or self._status.reconciles == 0:
            return None
        me = Reporter(
            record.node, record.node_id, record.site, record.subnet,
            self._status.role or MESH, self._versions,
        )  # fmt: skip
        return node_report(me, self._peers(), self._status.last_reconcile, self._clock.wall())

    async def tick(self) -> NodeReport | None:
        """Keep the etcd lease alive and write the report if it is due; the report of
        now (None: nothing to report yet)."""
        report = self.report()
        if report is None:
            return None
        now = self._clock.monotonic()
        try:
            lease, fresh = await self._hold_lease(now)
            if fresh or due(self._written, self._written_when, report, now, self.params):
                await self._store.put_status_report(report, lease)
                self._written, self._written_when = report, now
        except StoreError as exc:
            self._written = None  # written again once the store answers
            dropped = self._errors.allow()
            if dropped is not None:
                more = f" ({dropped} more failures)" if dropped else ""
                log.warning("cannot publish the status report: %s%s; retrying", exc, more)
        return report

    async def _hold_lease(self, now: float) -> tuple[int, bool]:
        """Our etcd lease, renewed every third of its TTL; True when it is new (the
        report must be written under it: the old one took the key with it)."""
        if self._lease is not None and now - self._renewed < self.params.ttl / 3:
            return self._lease, False
        if self._lease is not None and await self._store.keepalive(self._lease) > 0:
            self._renewed = now
            return self._lease, False
        self._lease = None
        lease = await self._store.grant(self.params.ttl)
        self._lease, self._renewed = lease, now
        return lease, True
