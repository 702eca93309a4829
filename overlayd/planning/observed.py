"""The observed network as a whole (pure): leases, the nodes' reports and the gateway
claims folded into one value for ``overlayctl status``, ``overlayctl graph`` and the
console.

Nodes are matched to their reports by name. A node with a lease and no report is
``missing`` (its daemon is down, or older than reports); a report not rewritten for
``stale_after`` seconds is ``stale``; a report whose node holds no lease is ``unleased``.
Unreachable pairs are the reporters' own lists (capped per report: ``more`` counts the
pairs a report counted but did not name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from overlayd.planning.report import ReportParams, is_stale
from overlayd.values.lease import LeaseRecord
from overlayd.values.report import NodeReport

OK, STALE, MISSING, UNLEASED = "ok", "stale", "missing", "unleased"


@dataclass(frozen=True)
class NodeState:
    """One node: from its lease (``subnet`` None: none) and its report (None: none)."""

    node: str
    site: str
    subnet: IPv4Network | None
    gateway: bool  # its site's elected gateway
    report: NodeReport | None
    health: str  # OK | STALE | MISSING | UNLEASED


@dataclass(frozen=True)
class SiteState:
    """One site: its topology mode, elected gateway (None: none) and nodes (sorted)."""

    site: str
    mode: str
    gateway: str | None
    nodes: tuple[str, ...]


@dataclass(frozen=True, order=True)
class Pair:
    """``reporter`` has no verified path to ``peer``."""

    reporter: str
    peer: str


@dataclass(frozen=True)
class ObservedNetwork:
    """The network as its nodes see it; every tuple sorted."""

    nodes: tuple[NodeState, ...]
    sites: tuple[SiteState, ...]
    unreachable: tuple[Pair, ...]
    more: int  # unreachable pairs counted by reports beyond the names they list
    malformed: tuple[tuple[str, str], ...] = ()  # (key name, why) of refused reports

    def count(self, health: str) -> int:
        """How many nodes' reports are ``health``."""
        return sum(1 for n in self.nodes if n.health == health)


def observe_network(
    leases: Iterable[LeaseRecord],
    reports: Iterable[NodeReport],
    gateways: Mapping[str, str],
    mode_of: Callable[[str], str],
    now: float,
    params: ReportParams | None = None,
    malformed: Iterable[tuple[str, str]] = (),
) -> ObservedNetwork:
    """The network at wall-clock ``now``: ``leases`` (well-formed ones), ``reports`` (by
    node), ``gateways`` (site → elected gateway's node name), ``mode_of(site)`` (the
    config's topology mode)."""
    by_node: dict[str, LeaseRecord] = {}
    for record in sorted(leases, key=lambda r: r.subnet):
        by_node.setdefault(record.node, record)  # two leases of one name: the lower subnet
    reported = {r.node: r for r in reports}
    nodes = []
    for name in sorted(by_node.keys() | reported.keys()):
        lease, report = by_node.get(name), reported.get(name)
        site = lease.site if lease is not None else report.site if report is not None else ""
        nodes.append(
            NodeState(
                name, site, lease.subnet if lease is not None else None,
                gateways.get(site) == name, report, _health(lease, report, now, params),
            )
        )  # fmt: skip
    sites = tuple(
        SiteState(
            site, mode_of(site), gateways.get(site), tuple(n.node for n in nodes if n.site == site)
        )
        for site in sorted({n.site for n in nodes} | gateways.keys())
    )
    pairs = sorted(Pair(r.node, peer) for r in reported.values() for peer in r.unreachable)
    more = sum(r.unreachable_total - len(r.unreachable) for r in reported.values())
    return ObservedNetwork(tuple(nodes), sites, tuple(pairs), more, tuple(sorted(malformed)))


def _health(
    lease: LeaseRecord | None, report: NodeReport | None, now: float, params: ReportParams | None
) -> str:
    if report is None:
        return MISSING
    if lease is None:
        return UNLEASED
    return STALE if is_stale(report, now, params) else OK
