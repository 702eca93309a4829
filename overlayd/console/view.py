"""What the console's pages show, built from one read of the store.

``load`` reads the config, the leases, the reservations and the gateway state; ``build``
(pure) turns them into a ``NetworkView``: nodes and sites sorted, the config redacted (the
pre-shared key is never part of a view), and the health findings of the whole network.
Values from etcd are kept as they are here: the templates escape them.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from overlayd.store.api import (
    ConfigStore,
    EtcdLeases,
    GatewayStore,
    LeaseStore,
    ReservationStore,
    Snapshot,
    StoredLease,
)
from overlayd.values.config import GATEWAY, NetworkConfig, parse_config
from overlayd.values.errors import ConfigError, ConfigMissingError
from overlayd.values.gateway_state import GatewayState
from overlayd.values.lease import subnet_key_name
from overlayd.values.text import quote

ERROR_QUOTE = 120  # how much of a malformed record's error a page shows


class ConsoleStore(EtcdLeases, ConfigStore, LeaseStore, ReservationStore, GatewayStore, Protocol):
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
    health: tuple[str, ...]  # problems found, in a stable order; empty: healthy

    @property
    def config_json(self) -> str:
        """The config as ``network show`` prints it (pre-shared key redacted)."""
        return self.config.to_json(redact=True) if self.config is not None else ""

    @property
    def malformed(self) -> int:
        return sum(1 for n in self.nodes if n.error is not None)

    @property
    def free_subnets(self) -> int | None:
        """Subnets neither leased nor reserved (None without a config)."""
        if self.config is None:
            return None
        taken = {n.subnet for n in self.nodes} | {s for s, _ in self.reservations}
        used = sum(1 for s in taken if self.config.is_allocatable(s))
        return self.config.subnet_count() - used

    def node(self, subnet: IPv4Network) -> NodeView | None:
        return next((n for n in self.nodes if n.subnet == subnet), None)


async def load(store: ConsoleStore) -> NetworkView:
    """Read the store once and build the view."""
    config: NetworkConfig | None = None
    error: str | None = None
    try:
        config = parse_config(await store.get_config_text())
    except ConfigMissingError:
        pass
    except ConfigError as exc:
        error = quote(str(exc), ERROR_QUOTE)
    snapshot = await store.list_leases()
    reservations = await store.list_reservations()
    gateways = await store.list_gateways()
    return build(config, error, snapshot, reservations, gateways)


def build(
    config: NetworkConfig | None,
    config_error: str | None,
    snapshot: Snapshot,
    reservations: dict[IPv4Network, str],
    gateways: GatewayState,
) -> NetworkView:
    """The view of these store contents (pure)."""
    claims = {site: claim.node_id for site, claim in gateways.claims.items()}
    nodes = tuple(_node(s, claims) for s in sorted(snapshot.leases, key=lambda s: s.subnet))
    sites = _sites(config, nodes, gateways)
    reserved = tuple(sorted(reservations.items()))
    view = NetworkView(config, config_error, nodes, sites, reserved, ())
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
    return tuple(found)
