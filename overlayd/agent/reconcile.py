"""The reconcile pass: ``plan_node``'s result applied to the devices.

Owns the planner's memo (the incremental VXLAN fast path), the diff of the VXLAN plan
against the mirror of what the device has, the WireGuard peers and their routes, the
VXLAN ingress filter's sync, the per-pass facts in ``Status`` and the log lines about the
plan (role changes, skipped peers, peers of other sites over plain VXLAN). Nothing is
deleted before the store's first snapshot has loaded. When it runs, and what the pass
before it sets up (devices, our lease), is the daemon's (overlayd/agent/daemon.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlayd.agent.churnlog import change_counts, wireguard_counts
from overlayd.agent.devices import Device, Devices
from overlayd.agent.election import GatewayAgent
from overlayd.agent.host import Clock
from overlayd.agent.metrics import Metrics
from overlayd.agent.path_api import PathKeeping
from overlayd.agent.relay_keeper import RelayKeeper
from overlayd.agent.status_docs import Status
from overlayd.dataplane.api import DataPlaneApi
from overlayd.dataplane.ingress_nft import IngressFilter
from overlayd.planning.cleartext import plain_cross_site
from overlayd.planning.ingress import VxlanPeers
from overlayd.planning.node import NodePlan, PlanMemo, plan_node
from overlayd.planning.wireguard import WireGuardPlan
from overlayd.runtime.logs import Churn
from overlayd.values.config import NetworkConfig
from overlayd.values.kernel_state import Changes, KernelState, diff, diff_keys
from overlayd.values.lease import LeaseRecord

log = logging.getLogger("overlayd")


class CrossSiteWarning:
    """Says when peers of other sites start, and stop, going over plain VXLAN."""

    def __init__(self) -> None:
        self._plain = False

    def update(
        self,
        me: LeaseRecord,
        leases: Mapping[IPv4Network, LeaseRecord],
        skipped: tuple[tuple[IPv4Network, str], ...],
    ) -> None:
        """One warning when peers of other sites start going over plain VXLAN, not one
        per reconcile; one info line when none do any more."""
        found = plain_cross_site(me, leases, (subnet for subnet, _ in skipped))
        if bool(found) == self._plain:
            return
        self._plain = bool(found)
        if found:
            log.warning("%s", found.warning())
        else:
            log.info("no peer of another site is reached over plain VXLAN any more")


@dataclass(frozen=True)
class Planned:
    """One pass's plan, and the peers that changed since the previous one (leases,
    probes and chosen paths); ``full``: planned from scratch."""

    me: LeaseRecord
    plan: NodePlan
    changed: set[IPv4Network]
    full: bool


class ReconcilePass:
    """Plans this node under ``cfg`` and applies the plan to ``devices``."""

    def __init__(
        self,
        cfg: NetworkConfig,
        devices: Devices,
        dataplane: DataPlaneApi,
        paths: PathKeeping,
        gateway: GatewayAgent | None,
        ingress: IngressFilter,
        churn: Churn,
        clock: Clock,
        status: Status,
        unguessable: frozenset[IPv4Address],
        metrics: Metrics,
        relays: RelayKeeper | None = None,
    ) -> None:
        """``unguessable``: addresses never guessed as a path (our etcd endpoints');
        ``relays``: stranded peers and relay checks (None: this network relays nothing);
        ``metrics``: where kernel operations are counted."""
        self._metrics = metrics
        self._unguessable = unguessable
        self._cfg, self._devices, self._dp, self._paths = cfg, devices, dataplane, paths
        self._gateway, self._ingress, self._churn = gateway, ingress, churn
        self._clock, self._status = clock, status
        self._memo = PlanMemo()  # plan_node's memo: the incremental VXLAN fast path
        self._plain = CrossSiteWarning()
        self._warned: set[IPv4Network] = set()  # skipped peers already logged
        self.via: dict[IPv4Network, str] = {}  # peers reached through our site's gateway
        self._relays = relays
        self.relayed: dict[IPv4Network, str] = {}  # peers reached through a relay
        self.unrelayed: Mapping[IPv4Network, str] = {}  # stranded, no relay: why

    @property
    def _may_delete(self) -> bool:
        """Nothing is deleted before the first full snapshot of the store has loaded."""
        return self._status.snapshot_loaded

    def plan(
        self,
        me: LeaseRecord,
        records: dict[IPv4Network, LeaseRecord],
        created: Mapping[IPv4Network, int],
        changed: set[IPv4Network],
        probed: set[IPv4Network],
        full: bool,
    ) -> Planned:
        """Rechoose the paths of the peers whose lease (``changed``) or probe state
        (``probed``) changed, of all when ``full``, and plan. ``records`` is the lease
        fold's own: the gateway agent keeps reading it."""
        backend, paths = self._cfg.backend, self._paths
        full |= backend.uses_wireguard  # WireGuard peers are always planned in full
        which = records.keys() if full else changed | probed
        changed |= paths.recompute(me, records, which)
        if self._gateway is not None:
            self._gateway.update(me, records)
        # which paths verified matters to WireGuard endpoints only: O(peers), so not per
        # event of a plain VXLAN network
        verified = paths.verified() if backend.uses_wireguard else frozenset()
        relays = self._relays
        stranded: frozenset[IPv4Network] = frozenset()
        if relays is not None:
            stranded = relays.stranded(records.keys() - {me.subnet}, verified)
            relays.judge(records)
        found = plan_node(
            self._cfg, me, records,
            claims=self._gateway.state.claims if self._gateway else None,
            paths=paths.paths, verified=verified, created=created,
            unguessable=self._unguessable, memo=self._memo, changed=None if full else changed,
            stranded=stranded, broken_relays=frozenset() if relays is None else relays.broken(),
        )  # fmt: skip
        if relays is not None:
            relays.watch(found.relays, records)
            self._relay_log(found)
        if self._gateway is not None and found.role != self._status.role:
            gw = found.gateway.node if found.gateway else "none"
            log.info("topology role in site %s: %s (gateway %s)", me.site, found.role, gw)
            self._status.role = found.role
        self.via = found.via
        return Planned(me, found, changed, full)

    def _relay_log(self, found: NodePlan) -> None:
        """One line per peer that starts or stops going through a relay."""
        relayed = found.relayed
        for subnet in sorted(relayed.keys() - self.relayed.keys()):
            log.info("peer %s: no direct path verified; via relay %s", subnet, relayed[subnet])
        for subnet in sorted(s for s in relayed.keys() & self.relayed.keys()):
            if relayed[subnet] != self.relayed[subnet]:
                was = self.relayed[subnet]
                log.info("peer %s: via relay %s (was %s)", subnet, relayed[subnet], was)
        for subnet in sorted(self.relayed.keys() - relayed.keys()):
            log.info("peer %s: no longer via relay %s", subnet, self.relayed[subnet])
        self.relayed, self.unrelayed = relayed, found.relays.none

    async def apply_vxlan(self, planned: Planned) -> VxlanPeers | None:
        """The VXLAN plan onto the device; returns its peers for the ingress filter
        (None: the backend has no VXLAN)."""
        if not self._cfg.backend.uses_vxlan:
            return None
        me, found, vxlan = planned.me, planned.plan, self._devices.vxlan
        plan, touched = found.vxlan, found.touched
        if touched is not None:
            changes = diff_keys(
                plan.state, vxlan.mirror.state, touched.routes, touched.neighs, touched.fdbs
            )
        else:
            changes = diff(plan.state, vxlan.mirror.state, allow_delete=self._may_delete)
        vxlan.desired = plan.state
        self._plain.update(me, found.vxlan_leases, plan.skipped)
        await self._apply(vxlan, changes, found.peers)
        return VxlanPeers(
            found.vxlan_leases,
            plan.paths,
            None if touched is None else planned.changed,
            found.via_gateway,
            me.site,
            self._paths.lingering,
        )

    async def finish(self, planned: Planned, ingress: VxlanPeers | None) -> None:
        """The WireGuard side, the ingress filter, the log of skipped peers, ``Status``."""
        found = planned.plan
        if self._cfg.backend.uses_wireguard:
            await self._apply_wireguard(found.wireguard, found.peers)
        await self._sync_ingress(ingress)
        for subnet, reason in (*found.wireguard.skipped, *found.vxlan.skipped, *found.refused):
            if subnet not in self._warned:
                self._warned.add(subnet)
                log.warning("not programming peer %s: %s", subnet, reason)
        self._status.peers = found.peers
        self._status.reconciles += 1
        self._status.last_reconcile = self._clock.wall()

    async def _sync_ingress(self, vxlan: VxlanPeers | None) -> None:
        """The ingress filter for the VXLAN plan's peers (None: no VXLAN here, no table).
        Until the first snapshot has loaded, the table of the last run stays as it is."""
        spec = self._devices.vxlan_spec
        if vxlan is None:
            await self._ingress.remove()
        elif self._may_delete and spec is not None:
            await self._ingress.sync(spec.port, spec.name, vxlan)

    async def _apply(self, dev: Device, changes: Changes, peers: int) -> None:
        if not changes:
            return
        t0 = self._clock.monotonic()
        outcome = await self._dp.apply(dev.ifindex, changes)
        ms = (self._clock.monotonic() - t0) * 1000
        self._metrics.kernel_applied(dev.name, changes, len(outcome.errors))
        failed = f", {len(outcome.errors)} failed" if outcome.errors else ""
        self._churn.note(
            change_counts(dev.name, changes, len(outcome.errors)),
            f"reconciled {peers} peers on {dev.name}: {changes.summary()} in {ms:.1f} ms{failed}",
        )
        outcome.raise_for_errors()

    async def _apply_wireguard(self, plan: WireGuardPlan, peers: int) -> None:
        """WireGuard peers per peer (others' sessions untouched), then their routes."""
        done = await self._dp.apply_wireguard_peers(
            plan.peers.values(), allow_delete=self._may_delete
        )
        if done:
            add, remove = len(done.add), len(done.remove)
            update = len(done.update) + len(done.restart)  # a restart is an update to us
            self._metrics.wireguard_applied(add, update, remove)
            self._churn.note(
                wireguard_counts(add, update, remove),
                f"WireGuard peers: +{add} ~{update} -{remove}",
            )
        wg = self._devices.wg
        wg.desired = KernelState(routes=dict(plan.routes))
        routes = diff(wg.desired, wg.mirror.state, allow_delete=self._may_delete)
        await self._apply(wg, routes, peers)
