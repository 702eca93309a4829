"""What overlayd needs from its store, as Protocols, and the values the store hands out.

``EtcdStore`` (overlayd/store/etcd.py) is the real implementation, ``MemStore``
(overlayd/store/memory.py) the in-memory one for component and CLI tests. The Protocols are
split by concern so that a component can name only what it uses and a new method goes
into one small place: add it to the Protocol of its concern, ``EtcdStore`` and
``MemStore`` (the contract test, tests/component/test_store_contract.py, runs both).

This module is pure: values, key names and decoding, no I/O. It must not import the
etcd client, asyncio, sockets or logging.
"""

from __future__ import annotations

import enum
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from overlayd.values.config import NetworkConfig
from overlayd.values.errors import LeaseFormatError
from overlayd.values.gateway_state import GatewayClaim, GatewayState, HealthReport
from overlayd.values.lease import LeaseRecord, decode_lease, parse_subnet_key_name, subnet_key_name
from overlayd.values.names import ContainerName
from overlayd.values.report import NodeReport

DEFAULT_PREFIX = "/overlayd/network"


# -- values ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredLease:
    """One key under ``subnets/``: a decoded record, or why it could not be decoded."""

    subnet: IPv4Network
    record: LeaseRecord | None
    error: str | None
    lease_id: int
    mod_revision: int
    create_revision: int = 0  # when the key was created: the older lease wins a conflict


@dataclass(frozen=True)
class Snapshot:
    """All leases at one store revision."""

    revision: int
    leases: tuple[StoredLease, ...]


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class LeaseEvent:
    kind: EventKind
    lease: StoredLease


@dataclass(frozen=True)
class WatchBatch:
    """Either a full ``snapshot`` (first batch, and after a compaction) or incremental events."""

    snapshot: Snapshot | None
    events: tuple[LeaseEvent, ...]


@dataclass(frozen=True)
class StoreKeys:
    """The key layout under a prefix (see docs/etcd-schema.md)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def config(self) -> str:
        return f"{self.prefix}/config"

    @property
    def subnets(self) -> str:
        return f"{self.prefix}/subnets/"

    @property
    def reservations(self) -> str:
        return f"{self.prefix}/reservations/"

    @property
    def names(self) -> str:
        """Container names: ``names/<subnet-key>/<container id>`` (overlayd/values/names.py)."""
        return f"{self.prefix}/names/"

    @property
    def gw(self) -> str:
        """Everything of the gateway election: ``gw/site/…`` and ``gw/health/…``."""
        return f"{self.prefix}/gw/"

    @property
    def statuses(self) -> str:
        """Every node's observed state: ``status/<node>`` (overlayd/values/report.py)."""
        return f"{self.prefix}/status/"

    def status(self, node: str) -> str:
        """``status/<node>``: the report ``node``'s daemon publishes."""
        return self.statuses + node

    def lease(self, subnet: IPv4Network) -> str:
        return self.subnets + subnet_key_name(subnet)

    def reservation(self, subnet: IPv4Network) -> str:
        return self.reservations + subnet_key_name(subnet)

    def gateway(self, site: str) -> str:
        return f"{self.gw}site/{site}"

    def report(self, site: str, reporter_id: str) -> str:
        return f"{self.gw}health/{site}/{reporter_id}"

    def control(self, node: str, verb: str) -> str:
        """``control/<node>/<verb>``: where requests to ``node``'s daemon are written."""
        return f"{self.prefix}/control/{node}/{verb}"


@dataclass(frozen=True)
class NameTable:
    """Every container name under ``names/`` at one revision; ``errors``: why the
    malformed ones (by key) were refused."""

    revision: int
    names: tuple[ContainerName, ...]
    errors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StatusTable:
    """Every node's report under ``status/`` at one revision, sorted by node;
    ``errors``: why the malformed ones (by key name) were refused."""

    revision: int
    reports: tuple[NodeReport, ...]
    errors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ControlValue:
    """The current value of a control request key, and its mod revision (the request's id)."""

    mod_revision: int
    value: str


def decode_stored(
    name: str, value: bytes, lease_id: int, mod_revision: int, create_revision: int = 0
) -> StoredLease | None:
    """The lease under key ``subnets/<name>``; None if ``name`` is not a subnet key at all
    (a stray key: not ours to judge). A bad value gives a record of None and the error."""
    try:
        subnet = parse_subnet_key_name(name)
    except LeaseFormatError:
        return None
    record: LeaseRecord | None = None
    error: str | None = None
    try:
        record = decode_lease(subnet, value)
    except LeaseFormatError as exc:
        error = str(exc)
    return StoredLease(subnet, record, error, lease_id, mod_revision, create_revision)


def decode_reservation(name: str, value: bytes) -> tuple[IPv4Network, str] | None:
    """The reservation under key ``reservations/<name>``; None if it is malformed (a
    malformed reservation reserves nothing)."""
    try:
        subnet = parse_subnet_key_name(name)
        node = json.loads(value)["Node"]
    except (LeaseFormatError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(node, str) or not node:
        return None
    return subnet, node


def reservation_value(node: str) -> str:
    return json.dumps({"Node": node})


# -- protocols ------------------------------------------------------------------------


class Connection(Protocol):
    def endpoint_addresses(self) -> frozenset[IPv4Address]:
        """The addresses of the store's servers (never a guessed peer path); may resolve
        names, so the daemon calls it in a thread."""
        ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...


class EtcdLeases(Protocol):
    """etcd leases: TTL-bound handles that keys are attached to (vanish with them)."""

    async def grant(self, ttl: int) -> int: ...

    async def keepalive(self, lease_id: int) -> int:
        """Renew once; the TTL left (<= 0: the lease is gone)."""
        ...

    async def ttl_left(self, lease_id: int) -> int: ...

    async def revoke(self, lease_id: int) -> None: ...


class ConfigStore(Protocol):
    @property
    def prefix(self) -> str: ...

    async def get_config_text(self) -> str:
        """The raw config; ``ConfigMissingError`` if there is none."""
        ...

    async def get_config(self) -> NetworkConfig: ...

    async def put_config(self, cfg: NetworkConfig) -> None: ...


class LeaseStore(Protocol):
    """Subnet leases: one atomic transaction per claim. The writes return the store
    revision of the write, 0 when its guard failed (nothing written)."""

    async def list_leases(self) -> Snapshot: ...

    async def create_lease(self, record: LeaseRecord, lease_id: int) -> int:
        """Write ``record`` if its key does not exist (version == 0)."""
        ...

    async def rebind_lease(self, record: LeaseRecord, lease_id: int, mod_revision: int) -> int:
        """Overwrite the key if its mod revision is still ``mod_revision``."""
        ...

    async def replace_lease(self, old: LeaseRecord, new: LeaseRecord, lease_id: int) -> int:
        """Overwrite the key if it still holds exactly ``old``."""
        ...

    async def delete_lease(self, subnet: IPv4Network) -> bool: ...

    def watch_leases(self, first: Snapshot | None = None) -> AsyncIterator[WatchBatch]:
        """A snapshot (``first`` if given), then changes; a fresh snapshot after compaction."""
        ...


class ReservationStore(Protocol):
    async def list_reservations(self) -> dict[IPv4Network, str]: ...

    async def put_reservation(self, subnet: IPv4Network, node: str) -> None: ...

    async def delete_reservation(self, subnet: IPv4Network) -> bool: ...


class GatewayStore(Protocol):
    async def claim_gateway(self, site: str, claim: GatewayClaim, lease_id: int) -> bool: ...

    async def resign_gateway(self, site: str, claim: GatewayClaim) -> bool: ...

    async def report_gateway(self, site: str, report: HealthReport, lease_id: int) -> None: ...

    async def list_gateways(self) -> GatewayState: ...

    def watch_gateways(self) -> AsyncIterator[GatewayState]: ...


class ControlStore(Protocol):
    """Requests to one node's daemon (``control/<node>/<verb>``; overlayd/agent/rotation.py)."""

    async def get_control(self, node: str, verb: str) -> ControlValue | None: ...

    async def put_control(self, node: str, verb: str, value: str) -> None: ...

    async def delete_control(self, node: str, verb: str, mod_revision: int) -> bool: ...

    def watch_control(self, node: str, verb: str) -> AsyncIterator[ControlValue | None]: ...


class NameStore(Protocol):
    """Container names (overlayd/agent/names.py), each bound to its node's etcd lease."""

    async def put_name(self, name: ContainerName, lease_id: int) -> None: ...

    async def delete_name(self, subnet: IPv4Network, container_id: str) -> bool: ...

    async def list_names(self) -> NameTable: ...

    def watch_names(self) -> AsyncIterator[NameTable]:
        """The whole table now, then again after each change."""
        ...


class StatusStore(Protocol):
    """The nodes' reports of what they observe (overlayd/agent/reporting.py), each bound
    to its writer's own short etcd lease."""

    async def put_status_report(self, report: NodeReport, lease_id: int) -> None: ...

    async def list_status_reports(self) -> StatusTable: ...

    def watch_status_reports(self) -> AsyncIterator[StatusTable]:
        """Every report now, then the whole table again after each change."""
        ...


class KeeperStore(EtcdLeases, LeaseStore, ReservationStore, Protocol):
    """What the lease keeper (overlayd/store/lease_keeper.py) needs: etcd leases to bind
    its key to, the lease transactions, and the reservations it must respect."""


class Store(
    Connection,
    EtcdLeases,
    ConfigStore,
    LeaseStore,
    ReservationStore,
    GatewayStore,
    ControlStore,
    NameStore,
    StatusStore,
    Protocol,
):
    """Everything overlayd and overlayctl use; what ``EtcdStore`` and ``MemStore`` are."""
