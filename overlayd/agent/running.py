"""The parts of a running daemon that exist once the network config is read and our lease
is held (``Daemon._compose`` wires them; the status routes and the loop read them)."""

from __future__ import annotations

from dataclasses import dataclass

from overlayd.agent.devices import Devices
from overlayd.agent.election import GatewayAgent
from overlayd.agent.lease_fold import LeaseFold
from overlayd.agent.lease_publish import LeasePublisher
from overlayd.agent.names import NameService
from overlayd.agent.reconcile import ReconcilePass
from overlayd.agent.relay_keeper import RelayKeeper
from overlayd.agent.reporting import StatusReporter
from overlayd.agent.rotation import KeyRotation
from overlayd.agent.traffic import TrafficSampler
from overlayd.store.lease_keeper import LeaseKeeper
from overlayd.values.config import NetworkConfig


@dataclass(frozen=True)
class Running:
    """The parts that exist once the config is read and a lease is held."""

    cfg: NetworkConfig
    keeper: LeaseKeeper
    rotation: KeyRotation
    fold: LeaseFold
    devices: Devices
    publisher: LeasePublisher
    reconcile: ReconcilePass
    gateway: GatewayAgent | None
    site_local: bool  # our underlay address reaches only inside our site
    relays: RelayKeeper | None  # WireGuard backends: stranded pairs, relay checks
    traffic: TrafficSampler  # which peers carry traffic, for the probe pace
    names: NameService | None  # the DNS responder and container names (docs/dns.md)
    reporter: StatusReporter  # our observed state in etcd (status/<node>)
