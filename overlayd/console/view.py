"""What the console's pages show.

``read_stored`` reads what a page reads itself (the config's text, the reservations);
``view_of`` adds what the watches hold (``live.Observed``: leases, reports, gateways) and
``build`` (pure) turns it all into a ``NetworkView``: nodes and sites sorted, the config
redacted (the pre-shared key is never part of a view), the reports split into fresh and
stale, and the health findings of the whole network. Values from etcd are kept as they
are here: the templates escape them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from overlayd.console.live import Observed
from overlayd.console.matrix import Matrix, node_matrix, site_matrix
from overlayd.planning.report import ReportParams, is_stale
from overlayd.store.api import (
    ConfigStore,
    EtcdLeases,
    GatewayStore,
    LeaseStore,
    ReservationStore,
    Snapshot,
    StatusStore,
    StatusTable,
    StoredLease,
)
from overlayd.values.config import GATEWAY, NetworkConfig, parse_config
from overlayd.values.errors import ConfigError, ConfigMissingError
from overlayd.values.gateway_state import GatewayState
from overlayd.values.lease import subnet_key_name
from overlayd.values.report import NodeReport
from overlayd.values.text import quote

REPORTS = ReportParams()  # when a report is stale: as the daemons write them
ERROR_QUOTE = 120  # how much of a malformed record's error a page shows


class ConsoleStore(
    EtcdLeases, ConfigStore, LeaseStore, ReservationStore, GatewayStore, StatusStore, Protocol
):
    """What the console reads and writes."""


@dataclass(frozen=True)
class NodeView:
    """One lease, as the nodes page shows it; ``error``: why its record is malformed."""

    subnet: IPv4Network
    node: str
    site: str
    addresses: tuple[IPv4Address, ...]
    backend: str
    role: str
    error: str | None = None
    lease_id: int = 0

    @property
    def key(self) -> str:
        """The subnet in flannel's key form, as the node's page address uses it."""
        return subnet_key_name(self.subnet)


@dataclass(frozen=True)
class SiteView:
    """One site: its topology mode, gateway (node name) and member node names."""

    site: str
    mode: str
    gateway: str | None
    members: tuple[str, ...]
    unhealthy_reports: int = 0  # members saying the gateway does not forward their traffic


@dataclass(frozen=True)
class NetworkView:
    """Everything the pages show, at one read."""

    config: NetworkConfig | None
    config_error: str | None
    nodes: tuple[NodeView, ...]
    sites: tuple[SiteView, ...]
    reservations: tuple[tuple[IPv4Network, str], ...]
    reports: Reports
    health: tuple[str, ...] = ()  # problems found, in a stable order; empty: healthy

    @property
    def config_json(self) -> str:
        """The config as ``network show`` prints it (pre-shared key redacted)."""
        return self.config.to_json(redact=True) if self.config is not None else ""

    @functools.cached_property
    def malformed(self) -> int:
        return sum(1 for n in self.nodes if n.error is not None)

    @functools.cached_property
    def free_subnets(self) -> int | None:
        """Subnets neither leased nor reserved (None without a config)."""
        if self.config is None:
            return None
        taken = {n.subnet for n in self.nodes} | {s for s, _ in self.reservations}
        used = sum(1 for s in taken if self.config.is_allocatable(s))
        return self.config.subnet_count() - used

    def node(self, subnet: IPv4Network) -> NodeView | None:
        return next((n for n in self.nodes if n.subnet == subnet), None)

    @functools.cached_property
    def site_matrix(self) -> Matrix:
        sites_of = {n.node: n.site for n in self.nodes if n.error is None}
        return site_matrix(sites_of, self.reports.fresh)

    @functools.cached_property
    def node_matrix(self) -> Matrix | None:
        sites_of = {n.node: n.site for n in self.nodes if n.error is None}
        return node_matrix(sites_of, self.reports.fresh)


@dataclass(frozen=True)
class Reports:
    """The nodes' reports at one read: ``fresh`` by node, the ages (s) of all by node, the
    stale ones' names, and why malformed ones were refused (by key, quoted)."""

    fresh: dict[str, NodeReport]
    ages: dict[str, float]
    stale: tuple[str, ...] = ()
    errors: tuple[tuple[str, str], ...] = ()

    def age_text(self, node: str) -> str:
        """How old ``node``'s report is, for a page: ``"4 s"``, ``"stale (400 s)"``, ``"-"``."""
        if node not in self.ages:
            return "-"
        age = f"{max(0.0, self.ages[node]):.0f} s"
        return f"stale ({age})" if node in self.stale else age

    def paths_text(self, node: str) -> str:
        """``node``'s peers per path kind, as ``"private 3, public 2"`` (``"-"``: no report)."""
        report = self.fresh.get(node)
        if report is None:
            return "-"
        return ", ".join(f"{kind} {n}" for kind, n in report.paths) or "no peers"


def reports_at(table: StatusTable, now: float) -> Reports:
    """``table``'s reports split into fresh and stale at wall-clock ``now``."""
    fresh = {r.node: r for r in table.reports if not is_stale(r, now, REPORTS)}
    return Reports(
        fresh,
        {r.node: now - r.written_at for r in table.reports},
        tuple(sorted(r.node for r in table.reports if r.node not in fresh)),
        tuple((quote(k), quote(e, ERROR_QUOTE)) for k, e in table.errors),
    )


@dataclass(frozen=True)
class Stored:
    """What a page reads from the store itself: the config's text (None: there is none)
    and the reservations, sorted."""

    config_text: str | None
    reservations: tuple[tuple[IPv4Network, str], ...]


async def read_stored(store: ConsoleStore) -> Stored:
    try:
        text: str | None = await store.get_config_text()
    except ConfigMissingError:
        text = None
    return Stored(text, tuple(sorted((await store.list_reservations()).items())))


def view_of(stored: Stored, observed: Observed, now: float) -> NetworkView:
    """The view of ``stored`` and ``observed`` at wall-clock ``now`` (for report ages)."""
    config: NetworkConfig | None = None
    error: str | None = None
    if stored.config_text is not None:
        try:
            config = parse_config(stored.config_text)
        except ConfigError as exc:
            error = quote(str(exc), ERROR_QUOTE)
    reports = reports_at(observed.reports, now)
    reservations = dict(stored.reservations)
    view = build(config, error, observed.leases, reservations, observed.gateways, reports)
    if observed.trouble is None:
        return view
    trouble = f"the store's watch failed, what is shown may be old: {observed.trouble}"
    return dataclasses.replace(view, health=(trouble, *view.health))


def build(
    config: NetworkConfig | None,
    config_error: str | None,
    snapshot: Snapshot,
    reservations: dict[IPv4Network, str],
    gateways: GatewayState,
    reports: Reports,
) -> NetworkView:
    """The view of these store contents (pure)."""
    claims = {site: claim.node_id for site, claim in gateways.claims.items()}
    # by the subnet's number: ipaddress's own comparisons cost a third of a 5,000-node page
    ordered = sorted(snapshot.leases, key=lambda s: (int(s.subnet.network_address), s.subnet))
    nodes = tuple(_node(s, claims) for s in ordered)
    sites = _sites(config, nodes, gateways)
    reserved = tuple(sorted(reservations.items()))
    view = NetworkView(config, config_error, nodes, sites, reserved, reports)
    return dataclasses.replace(view, health=_health(view))


def _node(stored: StoredLease, claims: dict[str, str]) -> NodeView:
    rec = stored.record
    if rec is None:
        why = quote(stored.error, ERROR_QUOTE)
        return NodeView(stored.subnet, "", "", (), "", "", why, stored.lease_id)
    role = "gateway" if claims.get(rec.site) == rec.node_id else "member"
    if rec.relay:
        role += ", relay"
    addresses = tuple(dict.fromkeys((*rec.public_ips, *rec.private_ips))) or (rec.public_ip,)
    return NodeView(
        rec.subnet, rec.node, rec.site, addresses, rec.backend_type, role, None, stored.lease_id
    )


def _sites(
    config: NetworkConfig | None, nodes: tuple[NodeView, ...], gateways: GatewayState
) -> tuple[SiteView, ...]:
    members: dict[str, list[str]] = defaultdict(list)
    for node in nodes:
        if node.error is None:
            members[node.site].append(node.node)
    names = set(members) | set(gateways.claims)
    out = []
    for site in sorted(names):
        claim = gateways.claims.get(site)
        mode = config.topology.mode_of(site) if config is not None else "-"
        unhealthy = sum(
            1
            for (s, _), r in gateways.reports.items()
            if s == site and claim is not None and r.gateway_id == claim.node_id and not r.healthy
        )
        gateway = claim.node if claim is not None else None
        out.append(SiteView(site, mode, gateway, tuple(sorted(members[site])), unhealthy))
    return tuple(out)


def _health(view: NetworkView) -> tuple[str, ...]:
    found = []
    if view.config_error is not None:
        found.append(f"the network config is invalid: {view.config_error}")
    elif view.config is None:
        found.append("no network config: create the network")
    if view.malformed:
        found.append(f"{view.malformed} malformed lease record(s)")
    for site in view.sites:
        if site.mode == GATEWAY and site.gateway is None and site.members:
            found.append(f"site {quote(site.site)} is in gateway mode and has no gateway")
        if site.unhealthy_reports:
            found.append(
                f"{site.unhealthy_reports} member(s) of site {quote(site.site)} say its "
                "gateway does not forward their traffic"
            )
    if view.free_subnets == 0:
        found.append("no subnet left for a new node")
    found.extend(_report_health(view))
    return tuple(found)


def _report_health(view: NetworkView) -> list[str]:
    reports = view.reports
    found = []
    unreachable = sum(r.unreachable_total for r in reports.fresh.values())
    if unreachable:
        found.append(f"{unreachable} peer path(s) reported unreachable (see the matrix)")
    silent = [n.node for n in view.nodes if n.error is None and n.node not in reports.ages]
    if silent:
        found.append(f"{len(silent)} node(s) without a report: {quote(silent, 5)}")
    if reports.stale:
        found.append(f"{len(reports.stale)} stale report(s): {quote(list(reports.stale), 5)}")
    if reports.errors:
        found.append(f"{len(reports.errors)} malformed report(s)")
    return found
