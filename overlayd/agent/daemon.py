"""The overlayd daemon: starts the agent's parts and runs the one reconcile loop.

It is given its collaborators (store, data plane, state dir, node key, path keeper, host
effects, clock) by the composition root, overlayd/cli/daemon_main.py; it constructs none
of those itself. It owns the start-up sequence (underlay, config, our lease, devices,
readiness), the control tasks beside the loop and the dirty marks. The parts: the
lease-event fold (``lease_fold``), device set-up (``devices``), the reconcile pass
(``reconcile``), our lease's republishing (``lease_publish``), the running parts
(``running``), the status routes (``status_routes``) and their documents (``status_docs``).

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
from functools import partial
from ipaddress import IPv4Address, IPv4Network

from prometheus_client import CollectorRegistry

from overlayd.agent.churnlog import activity_churn
from overlayd.agent.devices import Devices
from overlayd.agent.discovery import AddressDiscovery
from overlayd.agent.election import GatewayAgent, GatewayOptions
from overlayd.agent.host import Clock, Host
from overlayd.agent.lease_fold import LeaseFold
from overlayd.agent.lease_publish import LeasePublisher, lease_template
from overlayd.agent.metrics import (
    Metrics,
    node_families,
)
from overlayd.agent.names import NameService, name_service
from overlayd.agent.options import DaemonOptions
from overlayd.agent.path_api import PathKeeping
from overlayd.agent.reconcile import ReconcilePass
from overlayd.agent.relay_keeper import RelayKeeper
from overlayd.agent.reporting import StatusReporter
from overlayd.agent.rotation import KeyRotation
from overlayd.agent.running import Running
from overlayd.agent.status import HealthServer
from overlayd.agent.status_docs import Status
from overlayd.agent.status_routes import StatusRoutes
from overlayd.agent.traffic import TrafficSampler
from overlayd.dataplane.api import DataPlaneApi, Underlay
from overlayd.dataplane.ingress_nft import IngressFilter, IngressTable
from overlayd.disk.node_key import NodeKey
from overlayd.disk.state_dir import NodeIdentity, StateDir
from overlayd.runtime.phases import Phase, PhaseClock
from overlayd.runtime.retry import FIXED_1S, Backoff, Retry, retry
from overlayd.store.api import Store
from overlayd.store.lease_keeper import HeldLease, LeaseKeeper
from overlayd.values.config import NetworkConfig
from overlayd.values.errors import ConfigMissingError, OverlaydError
from overlayd.values.keys import PublicKey
from overlayd.values.paths import is_site_local
from overlayd.values.wireguard import WgPeerState

log = logging.getLogger("overlayd")
HEALTH_DEFER = 2.0  # seconds: the status port's aiohttp is not a start-up cost (status.py)

WIREGUARD_SEEN_INTERVAL = 1.0
"""Seconds between reads of the endpoints our WireGuard device learned (docs/nat.md)."""


class Daemon:
    """One node's agent. ``store`` is connected by the caller, which also closes it and
    the data plane after ``run``; ``key`` is the node key loaded from ``state_dir``;
    ``paths`` chooses each peer's underlay path (started and closed by ``run``);
    ``discovery`` learns our public address by itself (None: ``--public-ip`` given);
    ``phases``: the start-up phase clock the composition root began (None: one of our own);
    ``metrics``: the families ``/metrics`` serves (None: on a registry of our own)."""

    def __init__(
        self,
        opts: DaemonOptions,
        store: Store,
        dataplane: DataPlaneApi,
        state_dir: StateDir,
        key: NodeKey,
        paths: PathKeeping,
        host: Host | None = None,
        clock: Clock | None = None,
        discovery: AddressDiscovery | None = None,
        phases: PhaseClock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.opts = opts
        self.dp = dataplane
        self.store = store
        self.state_dir = state_dir
        self.paths = paths
        self.discovery = discovery
        self.host = host or Host()
        self.clock = clock or Clock()
        self.status = Status(started=self.clock.monotonic())
        self.phases = phases or PhaseClock(log, clock=self.clock.monotonic)
        self.metrics = metrics or Metrics(CollectorRegistry())
        self._key = key
        self._running: Running | None = None  # from ``_start``
        self._probing = False  # the path keeper was started (``/peers`` answers)
        self.views = StatusRoutes(
            opts.node_name, self.status, paths, self.clock, self.metrics, discovery,
            lambda: self._running, lambda: self._probing,
        )  # fmt: skip
        self.metrics.scrape(lambda: node_families(self.views.metric_state()))
        self._dirty = asyncio.Event()
        self._first_pass = asyncio.Event()  # the first reconcile pass ran (the status port serves)
        self._stop = asyncio.Event()  # set by SIGTERM/SIGINT or ``stop()``
        self._full = True  # replan and diff everything (not just what changed)
        self._device_stale = True
        self._probed: set[IPv4Network] = set()  # peers whose probe state changed
        self._reflexive_changed = False
        self._churn = activity_churn(log)  # a line per change; a summary per second under churn
        self._health: HealthServer | None = None
        self._ingress = IngressFilter(  # who may send us VXLAN (backends.md)
            IngressTable(self.host.run_nft, self.host.read_nft), churn=self._churn
        )

    # -- wiring ------------------------------------------------------------------------

    @property
    def names(self) -> NameService | None:
        """The DNS responder and container names, once the lease is held (docs/dns.md)."""
        return self._running.names if self._running is not None else None

    def mark_dirty(self, *, dump: bool = False, device: bool = False, full: bool = False) -> None:
        """Wake the loop; ``dump``: read the devices and the ingress table back,
        ``device``: set the devices up again, ``full``: replan every peer."""
        if dump:
            if self._running is not None:
                self._running.devices.mark_dump()
            self._ingress.mark_stale()
        self._device_stale |= device
        self._full |= full or dump or device
        self._dirty.set()

    async def run(self) -> None:
        """Run until ``stop`` (or SIGTERM/SIGINT); raises what ended the agent otherwise."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        health = self._health = HealthServer(
            self.opts.healthz_listen, self.opts.healthz_port, self.views.routes()
        )
        serving = None
        if self.opts.healthz_port:
            health.listen()  # now: a port another overlayd holds ends us before any change
            # served once the first pass has run, or after HEALTH_DEFER seconds of a start-up
            # that waits (for its config, a lease): the daemon is alive
            serving = asyncio.create_task(health.serve_after(self._first_pass, HEALTH_DEFER))
        main = asyncio.create_task(self._main())
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (main, serving):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await health.close()
        await self.paths.close()
        if main in done and main.exception() is not None:
            raise main.exception()  # type: ignore[misc]
        # SIGTERM leaves the data plane in place: peers keep working while we restart
        log.info("stopped; data plane left in place")

    def stop(self) -> None:
        """End ``run`` as SIGTERM does: the data plane stays in place."""
        self._stop.set()

    async def _main(self) -> None:
        run, held = await self._start()
        async with asyncio.TaskGroup() as tasks:
            # the lease watch first: its snapshot starts the probes to peers while the
            # devices are set up, so paths verify in parallel with that work
            tasks.create_task(run.fold.watch(self.store, self._on_batch))
            await self._configure(run, held)
            self.phases.reach(Phase.DEVICES)
            self.host.notify("READY=1")
            if run.cfg.topology.uses_gateways or held.record.relay:
                # gateways forward between the in-site VXLAN and WireGuard (any host may become
                # one); a relay between its WireGuard peers
                await asyncio.to_thread(self.host.enable_forwarding)
            if run.gateway is not None:
                tasks.create_task(run.gateway.run())
            if run.relays is not None:
                tasks.create_task(run.relays.run())
            tasks.create_task(run.keeper.keep())
            tasks.create_task(run.rotation.watch())
            if run.names is not None:
                tasks.create_task(run.names.run())
            tasks.create_task(self._resync_timer())
            tasks.create_task(run.reporter.run())
            tasks.create_task(run.traffic.run())
            if self.discovery is not None:
                tasks.create_task(self._discover(self.discovery, run))
            if run.cfg.backend.uses_wireguard:
                tasks.create_task(self._watch_wireguard(run))
            tasks.create_task(self.reconcile_loop())

    async def _watch_wireguard(self, run: Running) -> None:
        """Our WireGuard device's peers, every ``WIREGUARD_SEEN_INTERVAL`` while a peer is
        behind NAT: the path keeper publishes the endpoints the device learned of them,
        and the relay keeper finds the peers no handshake reaches (relay_keeper.py)."""
        while True:
            await asyncio.sleep(WIREGUARD_SEEN_INTERVAL)
            peers: Mapping[PublicKey, WgPeerState] = {}
            if self.paths.nat_peers():  # else nothing to learn: no device read (idle stays idle)
                with contextlib.suppress(OverlaydError):  # not set up yet: the loop repairs it
                    peers = await self.dp.wireguard_peers()
                endpoints = {k: p.config.endpoint for k, p in peers.items()}
                self.paths.wireguard_seen({k: e for k, e in endpoints.items() if e is not None})
            if run.relays is not None:
                run.relays.wireguard_read(peers, run.fold.records, self.clock.wall())

    async def _discover(self, discovery: AddressDiscovery, run: Running) -> None:
        """Learn our public address ourselves (a warning if one is missing and needed)."""

        def needed() -> bool:
            held = run.keeper.held
            if held is None or held.record.public_ips:
                return False
            return any(r.site != held.record.site for r in run.fold.records.values())

        await discovery.run(
            self.paths.share_socket, self._on_reflexive, site_local=run.site_local,
            needed=needed,
        )  # fmt: skip

    async def _start(self) -> tuple[Running, HeldLease]:
        """Probing, the underlay, the config, our lease (``_main`` sets the devices up)."""
        identity = self.state_dir.identity()
        # resolving endpoint names may block: not on the event loop
        unguessable = await asyncio.to_thread(self.store.endpoint_addresses)
        self._probing = True
        await self.paths.start(self._on_probe, unguessable)
        self.phases.reach(Phase.PROBES)
        underlay = await self.dp.underlay(self.opts.iface)
        log.info(
            "node %s (id %s…), underlay %s on %s, mtu %d",
            self.opts.node_name,
            identity.node_id[:8],
            underlay.address,
            underlay.link.name,
            underlay.link.mtu,
        )
        rotation = KeyRotation(self.store, self.opts.node_name, self.mark_dirty)
        cfg = await self._wait_config()
        self.phases.reach(Phase.CONFIG)
        keeper = LeaseKeeper(
            self.store,
            cfg,
            lease_template(self.opts, cfg, identity, underlay, self._key, self.paths.port),
            self.state_dir,
            self.opts.lease_ttl,
            lambda _held: self.mark_dirty(device=True),
        )
        held = await keeper.acquire()
        self.phases.reach(Phase.LEASE)
        run = self._running = self._compose(cfg, identity, underlay, keeper, rotation, unguessable)
        return run, held

    def _compose(
        self,
        cfg: NetworkConfig,
        identity: NodeIdentity,
        underlay: Underlay,
        keeper: LeaseKeeper,
        rotation: KeyRotation,
        unguessable: frozenset[IPv4Address],
    ) -> Running:
        """The parts that need the config and our lease, wired to each other."""
        devices = Devices(
            self.opts, cfg, underlay, identity.node_id, self.dp, self.host, self.status,
            self._health, self.mark_dirty,
        )  # fmt: skip
        gateway = None
        if cfg.topology.uses_gateways:
            gateway = GatewayAgent(
                self.store,
                cfg,
                self._key,
                GatewayOptions(candidate=self.opts.gateway_candidate),
                lambda: self.mark_dirty(full=True),
                self.metrics,
            )
        fold = LeaseFold(
            cfg.network, identity.node_id, keeper, self.paths, self._churn, self.status
        )
        relays = None
        if cfg.backend.uses_wireguard:
            relays = RelayKeeper(self._key, self.mark_dirty, self.clock.monotonic)
        reconcile = ReconcilePass(
            cfg, devices, self.dp, self.paths, gateway, self._ingress, self._churn, self.clock,
            self.status, unguessable, self.metrics, relays,
        )  # fmt: skip
        publisher = LeasePublisher(keeper, rotation, self.paths, cfg.network, self.opts.public_ips)
        traffic = TrafficSampler(
            cfg.backend, lambda: devices.vxlan.ifindex, self.dp, self.paths, lambda: fold.records
        )
        names = name_service(self.opts, cfg, self.store, fold, keeper, self.host.route_zone)
        reporter = StatusReporter(
            self.store, lambda: keeper.held.record if keeper.held else None,
            lambda: self.views.peer_reports(fold, reconcile), self.status, self.clock,
        )  # fmt: skip
        return Running(
            cfg, keeper, rotation, fold, devices, publisher, reconcile, gateway,
            is_site_local(underlay.address), relays, traffic, names, reporter,
        )  # fmt: skip

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

    async def _configure(self, run: Running, held: HeldLease) -> None:
        await run.devices.configure(held, self._key)
        if run.names is not None:  # the overlay address is on the device now
            await run.names.follow(held, run.devices.used()[0].ifindex)
        self._device_stale = False

    # -- inputs ------------------------------------------------------------------------

    def _on_batch(self, full: bool) -> None:
        """The lease fold absorbed a watch batch; ``full``: it carried a snapshot."""
        if full:
            self.phases.reach(Phase.SNAPSHOT)
        # names first: their update takes milliseconds, a reconcile pass of thousands of
        # peers may take a hundred, and the loop runs them in the order they were woken
        if self._running is not None and self._running.names is not None:
            self._running.names.leases_changed()
        self.mark_dirty(full=full)

    def _on_probe(self, peer: IPv4Network | None) -> None:
        """A path of ``peer`` became (un)verified or settled; None: our reflexive address."""
        if peer is None:
            self._on_reflexive()
            return
        self._probed.add(peer)
        if not self.phases.done(Phase.FIRST_PATH) and peer in self.paths.verified():
            self.phases.reach(Phase.FIRST_PATH)
        self.mark_dirty()

    def _on_reflexive(self) -> None:
        """What peers see of us, or what we learned ourselves, changed: republish."""
        self._reflexive_changed = True
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
            started = self.clock.monotonic()
            try:
                await one_pass()
                self.status.last_error = None
                self.metrics.reconcile_pass(self.clock.monotonic() - started, ok=True)
            except OverlaydError as exc:
                self.metrics.reconcile_pass(self.clock.monotonic() - started, ok=False)
                # any of our own errors (kernel, store, WireGuard driver, …) is retried:
                # one failed pass must not end the daemon
                self.status.last_error = str(exc)
                log.error("reconcile failed: %s; retrying", exc)
                self._first_pass.set()  # /status says why
                await backoff.pause()
                self.mark_dirty(dump=True, device=True)
            self._first_pass.set()

    async def _reconcile(self) -> None:
        run = self._running
        assert run is not None and run.keeper.held is not None
        self._switch_key_if_requested(run)
        if self._device_stale or (self.status.subnet != run.keeper.held.record.subnet):
            await self._configure(run, run.keeper.held)
        await run.publisher.publish_key(self._key)
        await run.devices.dump_stale()
        if self._reflexive_changed:
            self._reflexive_changed = False
            if self.opts.public_ip_auto:
                learned = self.discovery.learned if self.discovery is not None else ()
                await run.publisher.publish_public_ips(learned)
            await run.publisher.publish_observed(run.fold.records)
        assert run.keeper.held is not None
        probed, self._probed = self._probed, set()
        fold = run.fold
        if run.relays is not None:
            report = partial(self.paths.report, via={})
            rtts = run.relays.rtts(run.keeper.held.record, fold.records, report)
            await run.publisher.publish_relay_rtts(rtts)
        planned = run.reconcile.plan(
            run.keeper.held.record, fold.records, fold.created, fold.take_changed(), probed,
            self._full,
        )  # fmt: skip
        ingress = await run.reconcile.apply_vxlan(planned)
        self._full = False
        await run.reconcile.finish(planned, ingress)
        self._phases_after_pass(run, bool(probed))

    def _phases_after_pass(self, run: Running, probed: bool) -> None:
        """The start-up phases a pass may end: the first one, and the one after which every
        peer's chosen path is verified and programmed (checked only after probe news)."""
        self.phases.reach(Phase.FIRST_RECONCILE)
        if self.phases.done(Phase.LAST_PEER) or not self.status.snapshot_loaded:
            return
        if probed or self.status.reconciles == 1:
            held = run.keeper.held
            me = held.record.node_id if held is not None else None
            peers = {s for s, r in run.fold.records.items() if r.node_id != me}
            if peers <= self.paths.verified():
                self.phases.reach(Phase.LAST_PEER)

    def _switch_key_if_requested(self, run: Running) -> None:
        """Serve a key rotation request (overlayd/agent/rotation.py): probes use the new key at
        once, the WireGuard device gets it in this pass, the lease right after."""
        if not run.rotation.due:
            return
        key = run.rotation.rotate(self._key)
        if key is None:
            return  # could not be written: logged, the old key stays in use everywhere
        self._key = key
        self.paths.set_key(key)
        if run.gateway is not None:
            run.gateway.through.set_key(key.private)
        if run.relays is not None:
            run.relays.set_key(key.private)
        self._device_stale = True
