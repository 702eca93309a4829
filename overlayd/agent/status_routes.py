"""The daemon's status routes (docs/status-port.md, docs/metrics.md): ``/healthz``,
``/readyz``, ``/status``, ``/peers`` and ``/metrics``, answered from the parts the daemon
runs. Each answer is built when asked, from the state as it is; nothing here changes it."""

from __future__ import annotations

from collections.abc import Callable

from overlayd.agent.discovery import AddressDiscovery
from overlayd.agent.host import Clock
from overlayd.agent.lease_fold import LeaseFold
from overlayd.agent.metrics import CONTENT_TYPE, Metrics, NodeState, WireGuardTotals, path_kinds
from overlayd.agent.path_api import PathKeeping
from overlayd.agent.path_keeper import PeerReport
from overlayd.agent.reconcile import ReconcilePass
from overlayd.agent.relay_keeper import annotate
from overlayd.agent.running import Running
from overlayd.agent.status import Handler, Reply, Text
from overlayd.agent.status_docs import Status, healthz, peersz, readyz, statusz


class StatusRoutes:
    """The routes of node ``node``; ``running`` gives the running parts (None before our
    lease is held), ``probing`` whether the path keeper has started."""

    def __init__(
        self,
        node: str,
        status: Status,
        paths: PathKeeping,
        clock: Clock,
        metrics: Metrics,
        discovery: AddressDiscovery | None,
        running: Callable[[], Running | None],
        probing: Callable[[], bool],
    ) -> None:
        self._node, self._status, self._paths, self._clock = node, status, paths, clock
        self._metrics, self._discovery = metrics, discovery
        self._running, self._probing = running, probing

    def routes(self) -> dict[str, Handler]:
        return {
            "/healthz": lambda: healthz(self._status, self._clock.monotonic()),
            "/readyz": lambda: readyz(self.ready()),
            "/status": self._statusz,
            "/peers": self._peersz,
            "/metrics": lambda: (200, Text(self._metrics.text(), CONTENT_TYPE)),
        }

    def ready(self) -> bool:
        """Our lease is held and a reconcile pass has run."""
        run = self._running()
        return run is not None and run.keeper.held is not None and self._status.reconciles > 0

    def peer_reports(self, fold: LeaseFold, reconcile: ReconcilePass) -> list[PeerReport]:
        """Each peer's path as ``/peers`` and our status report show it."""
        reports = self._paths.report(fold.records, reconcile.via)
        return annotate(reports, reconcile.relayed, reconcile.unrelayed)

    def metric_state(self) -> NodeState:
        """What the node families of ``/metrics`` show now."""
        run = self._running()
        if run is None:
            return NodeState()
        held = run.keeper.held
        me = held.record.node_id if held is not None else None
        peers = [s for s, r in run.fold.records.items() if r.node_id != me]
        reconcile = run.reconcile
        kinds = path_kinds(
            peers, self._paths.paths, self._paths.verified(), reconcile.via, reconcile.relayed
        )
        wireguard = WireGuardTotals.of(run.traffic.latest())
        dns = run.names.counters() if run.names is not None else None
        return NodeState(kinds, run.keeper.ttl_left(), self._status.role, wireguard, dns)

    def _peersz(self) -> Reply:
        run = self._running()
        if not self._probing():
            return peersz(None)
        if run is None:
            return peersz(self._paths.report({}, {}))
        return peersz(self.peer_reports(run.fold, run.reconcile))

    def _statusz(self) -> Reply:
        run = self._running()
        held = run.keeper.held if run is not None else None
        public_ips = held.record.public_ips if held else ()
        entries = run.devices.entries() if run is not None else 0
        discovery = self._discovery.summary if self._discovery is not None else None
        names = run.names.counters() if run is not None and run.names is not None else None
        return statusz(self._node, self._status, public_ips, entries, discovery, names)
