"""Gateway election and data-plane health for sites in gateway mode.

Election: ``gw/site/<site>`` is created if absent (one etcd transaction) and bound to a
short etcd lease this node keeps alive, so a dead gateway's claim is gone within the
lease TTL. Candidates with a public address claim at once, others after a second (so a
site whose hosts have no public address still elects one). A holder keeps the claim
while it lives: restarts of other nodes never move it (no flapping).

Health is judged on the data plane, not on etcd liveness: every non-gateway member
probes the other sites' entry points at their overlay addresses, so the probes cross
its gateway. When every such path that had worked stops answering, the member reports
the gateway (``gw/health/<site>/<member>``); a gateway blamed by a majority of its
site's members resigns and stays out of the election for ``COOLDOWN`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network

from overlayd.agent.metrics import Metrics
from overlayd.agent.through import ThroughProbes
from overlayd.disk.node_key import NodeKey
from overlayd.planning.gateway import entry_points
from overlayd.runtime.retry import FIXED_1S, Retry
from overlayd.store.api import Store
from overlayd.values.config import GATEWAY, NetworkConfig
from overlayd.values.errors import StoreError
from overlayd.values.gateway_state import GatewayClaim, GatewayState, HealthReport
from overlayd.values.lease import LeaseRecord

log = logging.getLogger("overlayd.gateway")

CLAIM_TTL = 2  # seconds: how long a dead gateway's claim outlives it (etcd's minimum)
RENEW_EVERY = 0.5
NO_PUBLIC_DELAY = 1.0  # candidates without a public address let the others claim first
COOLDOWN = 60.0  # a deposed gateway stays out of the election this long
THROUGH_TARGETS = 4  # remote entry points each member probes through its gateway


@dataclass(frozen=True)
class GatewayOptions:
    candidate: bool = True  # may this node be its site's gateway?


class GatewayAgent:
    """Runs this node's part of its site's election and health checking."""

    def __init__(
        self,
        store: Store,
        cfg: NetworkConfig,
        key: NodeKey,
        options: GatewayOptions,
        on_change: Callable[[], None],
        metrics: Metrics,
    ) -> None:
        """``metrics``: where our elections and resignations are counted."""
        self._store = store
        self._metrics = metrics
        self._cfg = cfg
        self._options = options
        self._on_change = on_change
        self.state = GatewayState()
        self._lease_id = 0
        self._cooldown_until = 0.0
        self._reported: str | None = None  # gateway id we currently blame
        self._me: LeaseRecord | None = None
        self._leases: dict[IPv4Network, LeaseRecord] = {}
        self._wake = asyncio.Event()
        self._through_gateway: str | None = None  # the gateway our through-probes cross
        # probes to other sites' overlay addresses: they cross our gateway
        self.through = ThroughProbes(key, self._wake.set)

    @property
    def active(self) -> bool:
        return self._cfg.topology.uses_gateways

    def update(self, me: LeaseRecord, leases: dict[IPv4Network, LeaseRecord]) -> None:
        """The daemon's current lease of this node and of its peers (for targets, quorum)."""
        self._me, self._leases = me, leases
        self._wake.set()

    async def run(self) -> None:
        await self.through.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch())
                tasks.create_task(self._keep_lease())
                tasks.create_task(self._loop())
        finally:
            await self.through.close()

    async def _watch(self) -> None:
        backoff = Retry(FIXED_1S, running=True)
        while True:
            try:
                async for state in self._store.watch_gateways():
                    self.state = state
                    self._wake.set()
                    self._on_change()
            except StoreError as exc:
                if not backoff.retries(exc):
                    raise
                log.warning("gateway watch failed: %s; retrying", exc)
                await backoff.pause()

    async def _keep_lease(self) -> None:
        while True:
            try:
                if self._lease_id == 0:
                    self._lease_id = await self._store.grant(CLAIM_TTL)
                elif await self._store.keepalive(self._lease_id) <= 0:
                    self._lease_id = 0  # expired (e.g. etcd was away): claims on it are gone
                    continue
            except StoreError as exc:
                log.warning("gateway lease renewal failed: %s", exc)
            await asyncio.sleep(RENEW_EVERY)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=RENEW_EVERY)
            self._wake.clear()
            me = self._me
            if me is None or self._cfg.topology.mode_of(me.site) != GATEWAY or not self._lease_id:
                continue
            try:
                await self._step(me)
            except StoreError as exc:
                log.warning("gateway election step failed: %s", exc)

    async def _step(self, me: LeaseRecord) -> None:
        claim = self.state.claims.get(me.site)
        mine = claim is not None and claim.node_id == me.node_id
        gateway_id = claim.node_id if claim is not None and not mine else None
        # another gateway: what the probes said about the old one says nothing of it
        fresh = gateway_id != self._through_gateway
        self._through_gateway = gateway_id
        self._set_through_targets(me, member=gateway_id is not None, fresh=fresh)
        if claim is None:
            await self._maybe_claim(me)
        elif mine:
            await self._maybe_resign(me, claim)
        else:
            await self._report(me, claim)

    async def _maybe_claim(self, me: LeaseRecord) -> None:
        if not self._options.candidate or time.monotonic() < self._cooldown_until:
            return
        if not me.public_ips:
            await asyncio.sleep(NO_PUBLIC_DELAY)
            if self.state.claims.get(me.site) is not None:
                return
        claim = GatewayClaim(me.site, me.node, me.node_id, me.subnet)
        if await self._store.claim_gateway(me.site, claim, self._lease_id):
            log.info("elected gateway of site %s", me.site)
            self._metrics.gateway_election("won")

    async def _maybe_resign(self, me: LeaseRecord, claim: GatewayClaim) -> None:
        members = [
            r for r in self._leases.values() if r.site == me.site and r.node_id != me.node_id
        ]
        blamed = self.state.blame(me.site, me.node_id)
        if members and len(blamed) >= len(members) // 2 + 1:
            log.error(
                "resigning as gateway of site %s: %d of %d members report it does not forward",
                me.site, len(blamed), len(members),
            )  # fmt: skip
            self._cooldown_until = time.monotonic() + COOLDOWN
            await self._store.resign_gateway(me.site, claim)
            self._metrics.gateway_election("resigned")

    def _set_through_targets(self, me: LeaseRecord, *, member: bool, fresh: bool) -> None:
        targets: dict[IPv4Network, LeaseRecord] = {}
        if member:
            for site in sorted({r.site for r in self._leases.values()} - {me.site}):
                for entry in entry_points(self._cfg, self._leases, self.state.claims, site):
                    if entry.public_key and entry.probe_port:
                        targets[entry.subnet] = entry
        chosen = dict(sorted(targets.items())[:THROUGH_TARGETS])
        self.through.set_targets(chosen, fresh=self.through.targets if fresh else ())

    def forwarding(self) -> bool | None:
        """Whether our gateway forwards: None until a path through it has ever worked."""
        return self.through.forwarding()

    async def _report(self, me: LeaseRecord, claim: GatewayClaim) -> None:
        forwarding = self.forwarding()
        if forwarding is False and self._reported != claim.node_id:
            log.warning("gateway %s of site %s stopped forwarding; reporting", claim.node, me.site)
            report = HealthReport(me.site, me.node_id, me.node, claim.node_id)
            await self._store.report_gateway(me.site, report, self._lease_id)
            self._reported = claim.node_id
        elif forwarding is not False and self._reported is not None:
            report = HealthReport(me.site, me.node_id, me.node, self._reported, healthy=True)
            await self._store.report_gateway(me.site, report, self._lease_id)
            self._reported = None
