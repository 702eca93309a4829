"""The overlayd daemon: wires the store, the lease keeper, the planner and the data plane.

It is given its collaborators (store, data plane, state dir, node key, host effects,
clock) by the composition root, ``run_daemon``; it constructs none of those itself.

Recompute, don't react: store events, kernel notifications and timers only mark the state
dirty; one loop replans from the full state and applies the diff against the kernel state
we own. Nothing is deleted before the first full snapshot of the store has loaded, so a
restart never flushes live entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from overlayd.agent.churnlog import activity_churn, change_counts, lease_counts, wireguard_counts
from overlayd.agent.election import GatewayAgent, GatewayOptions
from overlayd.agent.host import Clock, Host
from overlayd.agent.path_keeper import PathKeeper
from overlayd.agent.rotation import KeyRotation, key_change
from overlayd.agent.status import HealthServer
from overlayd.agent.status_listen import LOOPBACK, ListenSpec
from overlayd.dataplane.api import DataPlane, DataPlaneApi, Underlay, VxlanSpec
from overlayd.dataplane.ingress_nft import IngressFilter, IngressTable
from overlayd.dataplane.masq import masq_ruleset
from overlayd.dataplane.mirror import KernelMirror
from overlayd.dataplane.netlink.monitor import KernelEvent
from overlayd.disk.node_key import NodeKey
from overlayd.disk.state_dir import NodeIdentity, StateDir
from overlayd.disk.subnet_file import SubnetFile, write_subnet_file
from overlayd.planning.cleartext import plain_cross_site
from overlayd.planning.ingress import VxlanPeers
from overlayd.planning.node import PlanMemo, plan_node
from overlayd.planning.wireguard import WireGuardPlan
from overlayd.probe.prober import ProbeConfig
from overlayd.probe.wire import DEFAULT_PORT as DEFAULT_PROBE_PORT
from overlayd.runtime.retry import FIXED_1S, Backoff, Retry, retry
from overlayd.store.api import EventKind, Store, StoredLease, WatchBatch
from overlayd.store.etcd import EtcdSettings, EtcdStore
from overlayd.store.lease_keeper import HeldLease, LeaseKeeper
from overlayd.values.config import NetworkConfig
from overlayd.values.errors import (
    ConfigMissingError,
    OverlaydError,
)
from overlayd.values.kernel_state import Changes, KernelState, diff, diff_keys
from overlayd.values.keys import PublicKey
from overlayd.values.lease import LeaseRecord
from overlayd.values.lease_rules import check_own_record, check_scope, publishable
from overlayd.values.text import quote
from overlayd.values.wireguard import WgDeviceConfig, interface_name

log = logging.getLogger("overlayd")

ANY_ADDRESS = IPv4Address("0.0.0.0")
RESYNC_INTERVAL = 30.0  # full read-back of the kernel state, besides netlink notifications


@dataclass(frozen=True)
class DaemonOptions:
    """Everything ``overlayd``'s flags say."""

    etcd: EtcdSettings
    node_name: str
    iface: str | None
    public_ips: tuple[IPv4Address, ...]
    site: str
    subnet_file: Path
    state_dir: Path
    healthz_port: int
    healthz_listen: ListenSpec = LOOPBACK
    ip_masq: bool = False
    lease_ttl: int = 86400
    resync_interval: float = RESYNC_INTERVAL
    probe_port: int = DEFAULT_PROBE_PORT
    public_ip_auto: bool = True  # publish public addresses that peers in other sites confirm
    gateway_candidate: bool = True  # may be elected its site's gateway (gateway topology)
    probe_bind: IPv4Address = ANY_ADDRESS  # tests: 127.0.0.1 (no flag)


@dataclass
class _Device:
    """A device whose entries we own: where it is, what we want on it, what it has."""

    name: str
    ifindex: int = 0
    desired: KernelState = field(default_factory=KernelState)
    mirror: KernelMirror = field(default_factory=KernelMirror)
    need_dump: bool = True


@dataclass
class _Status:
    """Facts the health endpoints report; mutated only by the daemon's own loop."""

    started: float = 0.0  # the clock's monotonic time at start
    subnet: IPv4Network | None = None
    reconciles: int = 0
    last_reconcile: float | None = None
    last_error: str | None = None
    peers: int = 0
    snapshot_loaded: bool = False


class Daemon:
    """One node's agent. ``store`` is connected by the caller, which also closes it and
    the data plane after ``run``; ``key`` is the node key loaded from ``state_dir``."""

    def __init__(
        self,
        opts: DaemonOptions,
        store: Store,
        dataplane: DataPlaneApi,
        state_dir: StateDir,
        key: NodeKey,
        host: Host | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.opts = opts
        self.dp = dataplane
        self.store = store
        self.state_dir = state_dir
        self.host = host or Host()
        self.clock = clock or Clock()
        self.planner = PlanMemo()  # plan_node's memo: the incremental VXLAN fast path
        self.status = _Status(started=self.clock.monotonic())
        self.leases: dict[IPv4Network, StoredLease] = {}
        self.records: dict[IPv4Network, LeaseRecord] = {}
        self.created: dict[IPv4Network, int] = {}  # etcd create_revision: older wins conflicts
        self._unguessable: frozenset[IPv4Address] = frozenset()  # etcd endpoints' addresses
        self._bad_seen: set[tuple[IPv4Network, int]] = set()
        self.vxlan = _Device("vxlan")
        self.wg = _Device("wireguard")
        self._key = key
        self._rotation: KeyRotation | None = None  # ``overlayctl node rotate-key``
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()  # set by SIGTERM/SIGINT or ``stop()``
        self._changed: set[IPv4Network] = set()  # subnets whose lease changed since the last plan
        self._full = True  # replan and diff everything (not just ``_changed``)
        self._device_stale = True
        self._keeper: LeaseKeeper | None = None
        self._paths: PathKeeper | None = None
        self._gateway: GatewayAgent | None = None
        self._role: str | None = None
        self._via: dict[IPv4Network, str] = {}  # peers reached through our site's gateway
        self._probed: set[IPv4Network] = set()  # peers whose probe state changed
        self._reflexive_changed = False
        self._cfg: NetworkConfig | None = None
        self._underlay: Underlay | None = None
        self._identity: NodeIdentity | None = None
        self._churn = activity_churn(log)  # a line per change; a summary per second under churn
        self._plain_cross_site = False  # warned: peers of other sites over plain VXLAN
        self._health: HealthServer | None = None
        self._ingress = IngressFilter(  # who may send us VXLAN (backends.md)
            IngressTable(self.host.run_nft, self.host.read_nft), churn=self._churn
        )
        self._vxlan_spec: VxlanSpec | None = None

    # -- wiring ------------------------------------------------------------------------

    def mark_dirty(self, *, dump: bool = False, device: bool = False, full: bool = False) -> None:
        if dump:
            self.vxlan.need_dump = self.wg.need_dump = True
            self._ingress.mark_stale()
        self._device_stale |= device
        self._full |= full or dump or device
        self._dirty.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        health = self._health = HealthServer(
            self.opts.healthz_listen,
            self.opts.healthz_port,
            {
                "/healthz": self._healthz,
                "/readyz": self._readyz,
                "/status": self._statusz,
                "/peers": self._peersz,
            },
        )
        if self.opts.healthz_port:
            await health.start()
        main = asyncio.create_task(self._main())
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main
        await health.close()
        if self._paths is not None:
            await self._paths.close()
        if main in done and main.exception() is not None:
            raise main.exception()  # type: ignore[misc]
        # SIGTERM leaves the data plane in place: peers keep working while we restart
        log.info("stopped; data plane left in place")

    def stop(self) -> None:
        """End ``run`` as SIGTERM does: the data plane stays in place."""
        self._stop.set()

    async def _main(self) -> None:
        self._identity = self.state_dir.identity()
        key = self._key
        # resolving endpoint names may block: not on the event loop
        self._unguessable = await asyncio.to_thread(self.store.endpoint_addresses)
        self._paths = PathKeeper(
            key,
            ProbeConfig(port=self.opts.probe_port, bind=self.opts.probe_bind),
            self._on_probe,
            unguessable=self._unguessable,
        )
        await self._paths.start()
        self._underlay = await self.dp.underlay(self.opts.iface)
        log.info(
            "node %s (id %s…), underlay %s on %s, mtu %d",
            self.opts.node_name,
            self._identity.node_id[:8],
            self._underlay.address,
            self._underlay.link.name,
            self._underlay.link.mtu,
        )
        self._rotation = KeyRotation(self.store, self.opts.node_name, self.mark_dirty)
        self._cfg = await self._wait_config()
        template = LeaseRecord(
            subnet=self._cfg.network,  # placeholder: the keeper fills in the claimed subnet
            node=self.opts.node_name,
            node_id=self._identity.node_id,
            public_ip=self.opts.public_ips[0] if self.opts.public_ips else self._underlay.address,
            vtep_mac=self._identity.vtep_mac,
            vni=self._cfg.backend.vni,
            site=self.opts.site,
            private_ips=(self._underlay.address,),
            public_ips=self.opts.public_ips,
            backend_type=self._cfg.backend.type,
            public_key=key.public.base64,
            probe_port=self._paths.prober.port,
            wireguard_port=self._cfg.backend.listen_port
            if self._cfg.backend.uses_wireguard
            else None,
            gateway_candidate=self.opts.gateway_candidate
            if self._cfg.topology.uses_gateways
            else None,
        )
        check_own_record(template, self._cfg.network)  # peers would refuse it otherwise
        self._keeper = LeaseKeeper(
            self.store,
            self._cfg,
            template,
            self.state_dir,
            self.opts.lease_ttl,
            lambda _held: self.mark_dirty(device=True),
        )
        held = await self._keeper.acquire()
        await self._configure_devices(held)
        self.host.notify("READY=1")
        if self._cfg.topology.uses_gateways:
            # gateways forward between the in-site VXLAN and WireGuard; any host may become one
            await asyncio.to_thread(self.host.enable_forwarding)
            self._gateway = GatewayAgent(
                self.store,
                self._cfg,
                key,
                GatewayOptions(candidate=self.opts.gateway_candidate),
                lambda: self.mark_dirty(full=True),
            )
        async with asyncio.TaskGroup() as tasks:
            if self._gateway is not None:
                tasks.create_task(self._gateway.run())
            tasks.create_task(self._keeper.keep())
            tasks.create_task(self._rotation.watch())
            tasks.create_task(self._watch())
            tasks.create_task(self._resync_timer())
            tasks.create_task(self.reconcile_loop())

    async def _wait_config(self) -> NetworkConfig:
        def waiting(exc: OverlaydError, _delay: float) -> None:
            if isinstance(exc, ConfigMissingError):
                log.warning("%s; waiting (hint: %s)", exc, exc.hint)
            else:
                log.warning("cannot read the network config yet: %s", exc)

        # not retried (exc.retryable false): an invalid config (ConfigError) needs a person,
        # and a first contact refused over certificates (EtcdTlsError) ends with exit 2
        cfg = await retry(self.store.get_config, Retry(Backoff(cap=10.0)), waiting)
        log.info(
            "network %s, /%d subnets, backend %s (VNI %d, port %d)",
            cfg.network,
            cfg.subnet_len,
            cfg.backend.type,
            cfg.backend.vni,
            cfg.backend.port,
        )
        return cfg

    # -- device and subnet file ----------------------------------------------------------

    async def _configure_devices(self, held: HeldLease) -> None:
        cfg, underlay, identity = self._cfg, self._underlay, self._identity
        assert cfg is not None and underlay is not None and identity is not None
        backend = cfg.backend
        # flannel puts the subnet's .0 on the device as a /32: routes to peers are onlink
        address = IPv4Interface(f"{held.record.overlay_ip}/32")
        if backend.uses_vxlan:
            spec = VxlanSpec(
                name=f"overlay.{backend.vni}",
                vni=backend.vni,
                port=backend.port,
                local=underlay.address,
                underlay_index=underlay.link.index,
                mac=held.record.vtep_mac,
                mtu=cfg.vxlan_mtu(underlay.link.mtu),
            )
            self._attach(self.vxlan, await self.dp.ensure_device(spec, address), False)
            self._vxlan_spec = spec
        if backend.uses_wireguard:
            loop = asyncio.get_running_loop()
            device = WgDeviceConfig(
                private_key=self._key.private,
                listen_port=backend.listen_port,
                mtu=cfg.wireguard_mtu(underlay.link.mtu),
            )

            def wireguard_go_died() -> None:  # called on the driver's watcher thread
                loop.call_soon_threadsafe(lambda: self.mark_dirty(device=True))

            ifindex, created = await self.dp.ensure_wireguard(
                interface_name(identity.node_id),
                device,
                address,
                self.opts.state_dir / "wireguard-go.log",
                wireguard_go_died,
            )
            self._attach(self.wg, ifindex, created)
        if self.opts.ip_masq:
            await asyncio.to_thread(
                self.host.run_nft, masq_ruleset(cfg.network, held.record.subnet)
            )
        if self.status.subnet != held.record.subnet:
            mtu = cfg.subnet_mtu(underlay.link.mtu)
            content = SubnetFile(
                network=cfg.network,
                subnet=IPv4Interface(f"{held.record.subnet.network_address + 1}/{cfg.subnet_len}"),
                mtu=mtu,
                ipmasq=self.opts.ip_masq,
            )
            write_subnet_file(self.opts.subnet_file, content)
            log.info(
                "subnet file %s: subnet %s, mtu %d", self.opts.subnet_file, content.subnet, mtu
            )
            self.status.subnet = held.record.subnet
        if self._health is not None:  # --healthz-ip overlay: the address is on the device now
            await self._health.follow_overlay(held.record.overlay_ip, cfg.network)
        self._device_stale = False

    def _attach(self, dev: _Device, ifindex: int, recreated: bool) -> None:
        """Follow ``dev`` at ``ifindex``; read it back when it is new or was recreated."""
        if ifindex != dev.ifindex or recreated:
            dev.ifindex = ifindex
            dev.need_dump = True
            self.dp.start_monitor(ifindex, lambda events: self._on_kernel_events(dev, events))

    # -- inputs ------------------------------------------------------------------------

    async def _watch(self) -> None:
        backoff = Retry(Backoff(cap=10.0), running=True)
        assert self._keeper is not None
        first, self._keeper.snapshot = self._keeper.snapshot, None
        while True:
            try:
                async for batch in self.store.watch_leases(first):
                    first = None
                    self._absorb(batch)
                    backoff.reset()
            except OverlaydError as exc:
                if not backoff.retries(exc):
                    raise
                delay = backoff.next_delay()
                log.warning("lease watch failed: %s; retrying in %.0fs", exc, delay)
                await backoff.pause(delay)

    def _absorb(self, batch: WatchBatch) -> None:
        assert self._keeper is not None
        if batch.snapshot is not None:
            fresh = {s.subnet: s for s in batch.snapshot.leases}
            for subnet in self.leases.keys() - fresh.keys():
                self._forget(subnet, batch.snapshot.revision)
            for stored in fresh.values():
                self._remember(stored, quiet=True)
            if not self.status.snapshot_loaded:
                log.info("store snapshot loaded: %d leases", len(fresh))
            self.status.snapshot_loaded = True
            self._full = True
        for event in batch.events:
            if event.kind is EventKind.DELETE:
                self._forget(event.lease.subnet, event.lease.mod_revision)
            else:
                self._remember(event.lease)
        self.mark_dirty()

    def _remember(self, stored: StoredLease, *, quiet: bool = False) -> None:
        """Take a lease as current; ``quiet``: part of a snapshot, summarised by the caller."""
        assert self._keeper is not None and self._keeper.held is not None
        assert self._paths is not None
        self._keeper.notice(stored, stored.subnet)  # as written: scope is about peers, not us
        stored = self._scoped(stored)
        old = self.leases.get(stored.subnet)
        self.leases[stored.subnet] = stored
        if old is not None and old.mod_revision == stored.mod_revision:
            return  # unchanged: keep the old record object (the planner memoises by identity)
        self._changed.add(stored.subnet)
        self._paths.lease_changed(self._keeper.held.record, stored.subnet, stored.record)
        if stored.record is None:
            self.records.pop(stored.subnet, None)
            self.created.pop(stored.subnet, None)
            if (stored.subnet, stored.mod_revision) not in self._bad_seen:
                self._bad_seen.add((stored.subnet, stored.mod_revision))
                log.error("ignoring malformed lease %s: %s", stored.subnet, stored.error)
            return
        self.records[stored.subnet] = stored.record
        self.created[stored.subnet] = stored.create_revision
        is_me = self._identity is not None and stored.record.node_id == self._identity.node_id
        if is_me or quiet:
            return
        node = quote(stored.record.node)
        if old is None or old.record is None or old.record.node != stored.record.node:
            self._churn.note(lease_counts("joined"), f"peer {node} joined with {stored.subnet}")
        elif rotated := key_change(old.record, stored.record):
            self._churn.note(lease_counts("changed"), rotated)  # overlayd/agent/rotation.py
        elif old.record != stored.record:
            self._churn.note(
                lease_counts("changed"), f"peer {node} changed its lease {stored.subnet}"
            )

    def _scoped(self, stored: StoredLease) -> StoredLease:
        """``stored``, refused (as malformed) if its addresses are out of scope here."""
        if stored.record is None or self._cfg is None:
            return stored
        why = check_scope(stored.record, self._cfg.network)
        if why is None:
            return stored
        return replace(stored, record=None, error=f"lease {stored.subnet}: {why}")

    def _forget(self, subnet: IPv4Network, revision: int = 0) -> None:
        """Drop a lease deleted at store ``revision`` (0: unknown)."""
        old = self.leases.pop(subnet, None)
        self.records.pop(subnet, None)
        self.created.pop(subnet, None)
        self._changed.add(subnet)
        assert self._keeper is not None and self._keeper.held is not None
        assert self._paths is not None
        self._keeper.notice(None, subnet, revision)
        self._paths.lease_changed(self._keeper.held.record, subnet, None)
        if old is not None and old.record is not None:
            self._churn.note(lease_counts("left"), f"peer {quote(old.record.node)} left ({subnet})")

    def _on_kernel_events(self, dev: _Device, events: list[KernelEvent] | None) -> None:
        """Called on the event loop with kernel notifications for ``dev``.

        None means notifications were lost (socket overrun): read everything back.
        """
        if events is None:
            dev.need_dump = True
            self.mark_dirty(full=True)
            return
        changed = False
        for ev in events:
            changed |= dev.mirror.absorb(ev, dev.desired)
        if changed:
            self.mark_dirty(full=True)

    def _on_probe(self, peer: IPv4Network | None) -> None:
        """A path of ``peer`` became (un)verified or settled; None: our reflexive address."""
        if peer is None:
            self._reflexive_changed = True
        else:
            self._probed.add(peer)
        self.mark_dirty()

    async def _resync_timer(self) -> None:
        while True:
            await asyncio.sleep(self.opts.resync_interval)
            self.mark_dirty(dump=True, device=True)

    # -- the loop ----------------------------------------------------------------------

    async def reconcile_loop(self, reconcile: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run a reconcile pass each time the daemon is marked dirty, forever; a failed pass
        is retried. ``reconcile``: what a pass runs (default: the daemon's own pass)."""
        one_pass = reconcile or self._reconcile
        backoff = Retry(FIXED_1S)
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await one_pass()
                self.status.last_error = None
            except OverlaydError as exc:
                # any of our own errors (kernel, store, WireGuard driver, …) is retried:
                # one failed pass must not end the daemon
                self.status.last_error = str(exc)
                log.error("reconcile failed: %s; retrying", exc)
                await backoff.pause()
                self.mark_dirty(dump=True, device=True)

    async def _reconcile(self) -> None:
        keeper, cfg, paths_keeper = self._keeper, self._cfg, self._paths
        assert keeper is not None and keeper.held is not None
        assert cfg is not None and paths_keeper is not None
        self._switch_key_if_requested()
        if self._device_stale or (self.status.subnet != keeper.held.record.subnet):
            await self._configure_devices(keeper.held)
        await self._publish_key(keeper)
        for dev in self._devices():
            if dev.need_dump:
                dev.need_dump = False
                dev.mirror.replace(await self.dp.dump(dev.ifindex), dev.desired)
        if self._reflexive_changed and self.opts.public_ip_auto:
            self._reflexive_changed = False
            await self._publish_public_ips(keeper)
        me, backend = keeper.held.record, cfg.backend
        changed, self._changed = self._changed, set()
        probed, self._probed = self._probed, set()
        self._full |= backend.uses_wireguard  # WireGuard peers are always planned in full
        which = self.records.keys() if self._full else changed | probed
        changed |= paths_keeper.recompute(me, self.records, which)
        if self._gateway is not None:
            self._gateway.update(me, self.records)
        # which paths verified matters to WireGuard endpoints only: O(peers), so not per
        # event of a plain VXLAN network
        verified = paths_keeper.verified() if backend.uses_wireguard else frozenset()
        found = plan_node(
            cfg, me, self.records, claims=self._gateway.state.claims if self._gateway else None,
            paths=paths_keeper.paths, verified=verified, created=self.created,
            unguessable=self._unguessable, memo=self.planner,
            changed=None if self._full else changed,
        )  # fmt: skip
        if self._gateway is not None and found.role != self._role:
            gw = found.gateway.node if found.gateway else "none"
            log.info("topology role in site %s: %s (gateway %s)", me.site, found.role, gw)
            self._role = found.role
        self._via = found.via
        wireguard = found.wireguard if backend.uses_wireguard else None
        ingress = None
        if backend.uses_vxlan:
            plan, touched = found.vxlan, found.touched
            if touched is not None:
                changes = diff_keys(
                    plan.state, self.vxlan.mirror.state, touched.routes, touched.neighs,
                    touched.fdbs,
                )  # fmt: skip
            else:
                changes = diff(plan.state, self.vxlan.mirror.state, allow_delete=self._may_delete)
            self.vxlan.desired = plan.state
            self.warn_plain_cross_site(me, found.vxlan_leases, plan.skipped)
            await self._apply(self.vxlan, changes, found.peers)
            ingress = VxlanPeers(
                found.vxlan_leases,
                plan.paths,
                None if touched is None else changed,
                found.via_gateway,
                me.site,
                paths_keeper.linger.addresses,
            )
        self._full = False
        if wireguard is not None:
            await self._apply_wireguard(wireguard, found.peers)
        await self._sync_ingress(ingress)
        for subnet, reason in (*found.wireguard.skipped, *found.vxlan.skipped, *found.refused):
            if (subnet, -1) not in self._bad_seen:
                self._bad_seen.add((subnet, -1))
                log.warning("not programming peer %s: %s", subnet, reason)
        self.status.peers = found.peers
        self.status.reconciles += 1
        self.status.last_reconcile = self.clock.wall()

    def warn_plain_cross_site(
        self,
        me: LeaseRecord,
        leases: Mapping[IPv4Network, LeaseRecord],
        skipped: tuple[tuple[IPv4Network, str], ...],
    ) -> None:
        """One warning when peers of other sites start going over plain VXLAN, not one
        per reconcile; one info line when none do any more."""
        found = plain_cross_site(me, leases, (subnet for subnet, _ in skipped))
        if bool(found) == self._plain_cross_site:
            return
        self._plain_cross_site = bool(found)
        if found:
            log.warning("%s", found.warning())
        else:
            log.info("no peer of another site is reached over plain VXLAN any more")

    async def _sync_ingress(self, vxlan: VxlanPeers | None) -> None:
        """The ingress filter for the VXLAN plan's peers (None: no VXLAN here, no table).
        Until the first snapshot has loaded, the table of the last run stays as it is."""
        if vxlan is None:
            await self._ingress.remove()
        elif self._may_delete and self._vxlan_spec is not None:
            await self._ingress.sync(self._vxlan_spec.port, self._vxlan_spec.name, vxlan)

    def _switch_key_if_requested(self) -> None:
        """Serve a key rotation request (overlayd/agent/rotation.py): probes use the new key at
        once, the WireGuard device gets it in this pass, the lease right after."""
        if self._rotation is None or not self._rotation.due:
            return
        assert self._paths is not None
        key = self._rotation.rotate(self._key)
        if key is None:
            return  # could not be written: logged, the old key stays in use everywhere
        self._key = key
        self._paths.prober.set_key(key.private)
        if self._gateway is not None:
            self._gateway.through.set_key(key.private)
        self._device_stale = True

    async def _publish_key(self, keeper: LeaseKeeper) -> None:
        """Our lease carries the key our devices use (changed by a rotation); then the
        rotation request is acknowledged."""
        if self._rotation is None:
            return
        assert keeper.held is not None
        me, ours = keeper.held.record, self._key.public.base64
        if me.public_key != ours:
            await keeper.republish(replace(me, public_key=ours))
        published = keeper.held.record.public_key
        await self._rotation.acknowledge(PublicKey.from_base64(published) if published else None)

    @property
    def _may_delete(self) -> bool:
        """Nothing is deleted before the first full snapshot of the store has loaded."""
        return self.status.snapshot_loaded

    def _devices(self) -> list[_Device]:
        assert self._cfg is not None
        backend = self._cfg.backend
        return [
            d
            for d, used in ((self.vxlan, backend.uses_vxlan), (self.wg, backend.uses_wireguard))
            if used
        ]

    async def _apply(self, dev: _Device, changes: Changes, peers: int) -> None:
        if not changes:
            return
        t0 = self.clock.monotonic()
        outcome = await self.dp.apply(dev.ifindex, changes)
        ms = (self.clock.monotonic() - t0) * 1000
        failed = f", {len(outcome.errors)} failed" if outcome.errors else ""
        self._churn.note(
            change_counts(dev.name, changes, len(outcome.errors)),
            f"reconciled {peers} peers on {dev.name}: {changes.summary()} in {ms:.1f} ms{failed}",
        )
        outcome.raise_for_errors()

    async def _apply_wireguard(self, plan: WireGuardPlan, peers: int) -> None:
        """WireGuard peers per peer (others' sessions untouched), then their routes."""
        done = await self.dp.apply_wireguard_peers(
            plan.peers.values(), allow_delete=self._may_delete
        )
        if done.add or done.update or done.remove:
            add, update, remove = len(done.add), len(done.update), len(done.remove)
            self._churn.note(
                wireguard_counts(add, update, remove),
                f"WireGuard peers: +{add} ~{update} -{remove}",
            )
        self.wg.desired = KernelState(routes=dict(plan.routes))
        routes = diff(self.wg.desired, self.wg.mirror.state, allow_delete=self._may_delete)
        await self._apply(self.wg, routes, peers)

    async def _publish_public_ips(self, keeper: LeaseKeeper) -> None:
        """``--public-ip auto``: publish the addresses peers in other sites confirmed."""
        assert self._paths is not None and keeper.held is not None
        me = keeper.held.record
        assert self._cfg is not None
        found = publishable(self._paths.public_addresses(me), self._cfg.network)
        wanted = publishable(sorted({*self.opts.public_ips, *found}), self._cfg.network)
        if wanted != tuple(sorted(me.public_ips)):
            log.info("public addresses confirmed by peers: %s", ", ".join(map(str, found)))
            await keeper.republish(replace(me, public_ips=wanted))

    # -- health ------------------------------------------------------------------------

    def _ready(self) -> bool:
        keeper = self._keeper
        return keeper is not None and keeper.held is not None and self.status.reconciles > 0

    def _healthz(self) -> tuple[int, Any]:
        return 200, {
            "status": "ok",
            "uptime": round(self.clock.monotonic() - self.status.started, 1),
        }

    def _readyz(self) -> tuple[int, Any]:
        if self._ready():
            return 200, {"ready": True}
        return 503, {"ready": False}

    def _peersz(self) -> tuple[int, Any]:
        if self._paths is None:
            return 503, {"error": "not started"}
        return 200, {"peers": [r.to_json() for r in self._paths.report(self.records, self._via)]}

    def _statusz(self) -> tuple[int, Any]:
        s = self.status
        held = self._keeper.held if self._keeper is not None else None
        return 200, {
            "node": self.opts.node_name,
            "subnet": str(s.subnet) if s.subnet else None,
            "peers": s.peers,
            "reconciles": s.reconciles,
            "last_reconcile": s.last_reconcile,
            "last_error": s.last_error,
            "snapshot_loaded": s.snapshot_loaded,
            "public_ips": [str(a) for a in held.record.public_ips] if held else [],
            "role": self._role,
            "entries": sum(d.mirror.state.size() for d in (self.vxlan, self.wg)),
        }


async def _compose_and_run(opts: DaemonOptions, dataplane: DataPlane) -> None:
    """The composition root: the real store, state dir and node key, given to ``Daemon``."""
    store = EtcdStore(opts.etcd)
    try:
        await store.connect()  # first: bad TLS files end the daemon before side effects
        key = NodeKey.load_or_create(opts.state_dir)
        await Daemon(opts, store, dataplane, StateDir(opts.state_dir), key).run()
    finally:
        await store.close()
        dataplane.close()


def run_daemon(opts: DaemonOptions, dataplane: DataPlane) -> None:
    """Run until SIGTERM/SIGINT with the real collaborators; uvloop when available."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    runner(_compose_and_run(opts, dataplane))
