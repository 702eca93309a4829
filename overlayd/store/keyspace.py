"""The raw key-value service under both stores (``RawKV``), and its keys read as the
store's values, once for both.

``EtcdStore`` and ``MemStore`` are one ``KeyedStore`` (overlayd/store/keyed.py) over a
``RawKV``: etcd's (overlayd/store/etcd.py) or the in-memory one (overlayd/store/memory_kv.py).
Both keep the same key layout (``StoreKeys``, overlayd/store/api.py) and hand what they list
or watch here as ``KeyValue``; this module turns it into leases, gateway state, control
requests and reservations. A watch arrives as a ``RawWatch``: a listing with no events (at
start and after a compaction), then ``(None, events)``.

A gateway record that cannot be read counts as absent and is logged here
(``overlayd.gateway``); malformed leases and reservations are values (``decode_stored``,
``decode_reservation``). Must not import the etcd client, asyncio or sockets.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Protocol, TypeVar

from overlayd.store.api import (
    ControlValue,
    EventKind,
    LeaseEvent,
    NameTable,
    Snapshot,
    StatusTable,
    StoredLease,
    StoreKeys,
    WatchBatch,
    decode_reservation,
    decode_stored,
)
from overlayd.values.errors import LeaseFormatError, ReportFormatError
from overlayd.values.gateway_state import GatewayState
from overlayd.values.names import ContainerName, decode_container
from overlayd.values.report import NodeReport, decode_report

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")

_gateway_log = logging.getLogger("overlayd.gateway")


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd keeps it (for a delete event: only the key and the delete's revision,
    as etcd sends it)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


RawEvent = tuple[EventKind, KeyValue]
RawWatch = AsyncIterator[tuple[T | None, Sequence[RawEvent]]]


@dataclass(frozen=True)
class Guard:
    """A transaction's compare on its key: it holds ``value``, or is at ``mod_revision``
    (an absent key is at 0), or (neither given) does not exist (etcd's version == 0)."""

    mod_revision: int | None = None
    value: str | None = None

    def holds(self, kv: KeyValue | None) -> bool:
        """Whether the compare holds on ``kv`` (None: absent), as etcd evaluates it."""
        if self.value is not None:
            return kv is not None and kv.value == self.value.encode()
        if self.mod_revision is not None:
            return (kv.mod_revision if kv is not None else 0) == self.mod_revision
        return kv is None


ABSENT = Guard()


class RawKV(Protocol):
    """Keys, guarded transactions, etcd leases and range watches: what ``KeyedStore``
    needs of etcd. ``what`` names the operation in a ``StoreError``."""

    async def get(self, what: str, key: str) -> tuple[int, KeyValue | None]:
        """The store revision and ``key``'s value (None: absent)."""
        ...

    async def range(self, what: str, prefix: str) -> tuple[int, list[KeyValue]]:
        """The keys starting with ``prefix``, sorted, at one revision (returned)."""
        ...

    async def put(self, what: str, key: str, value: str, lease: int = 0) -> None: ...

    async def delete(self, what: str, key: str) -> bool: ...

    async def txn_put(self, what: str, key: str, value: str, lease: int, guard: Guard) -> int:
        """Put if ``guard`` holds: the revision written, 0 if it does not."""
        ...

    async def txn_delete(self, what: str, key: str, guard: Guard) -> bool: ...

    def watch(
        self,
        prefix: str,
        relist: Callable[[], Awaitable[tuple[int, T]]],
        first: tuple[int, T] | None = None,
    ) -> RawWatch[T]:
        """(listing, []) from ``relist`` (or ``first``), then (None, events) after its
        revision; a fresh listing when that history was compacted."""
        ...

    async def grant(self, ttl: int) -> int: ...

    async def keepalive(self, lease_id: int) -> int: ...

    async def ttl_left(self, lease_id: int) -> int: ...

    async def revoke(self, lease_id: int) -> None: ...


def stored_lease(keys: StoreKeys, kv: KeyValue) -> StoredLease | None:
    """The lease under ``kv``'s key (None for a stray key under ``subnets/``)."""
    name = kv.key[len(keys.subnets) :]
    return decode_stored(name, kv.value, kv.lease, kv.mod_revision, kv.create_revision)


def stored_leases(keys: StoreKeys, kvs: Iterable[KeyValue]) -> list[StoredLease]:
    return [s for kv in kvs if (s := stored_lease(keys, kv)) is not None]


async def lease_batches(keys: StoreKeys, raw: RawWatch[Snapshot]) -> AsyncIterator[WatchBatch]:
    """``watch_leases`` from a raw watch of ``subnets/``: snapshots, then lease events."""
    async for listing, events in raw:
        if listing is not None:
            yield WatchBatch(listing, ())
            continue
        batch = tuple(
            LeaseEvent(kind, stored)
            for kind, kv in events
            if (stored := stored_lease(keys, kv)) is not None
        )
        if batch:
            yield WatchBatch(None, batch)


def gateway_state(keys: StoreKeys, kvs: Iterable[KeyValue], revision: int) -> GatewayState:
    """The gateways and health reports of every site, from the keys under ``gw/``."""
    state = GatewayState()
    for kv in kvs:
        _log_malformed(state.absorb(kv.key[len(keys.gw) :], kv.value))
    state.revision = revision
    return state


async def gateway_states(
    keys: StoreKeys, raw: RawWatch[GatewayState]
) -> AsyncIterator[GatewayState]:
    """``watch_gateways`` from a raw watch of ``gw/``: the whole state after each change."""
    current = GatewayState()
    async for listing, events in raw:
        if listing is not None:
            current = listing
        for kind, kv in events:
            name = kv.key[len(keys.gw) :]
            _log_malformed(current.absorb(name, None if kind is EventKind.DELETE else kv.value))
        yield current


def control_value(kv: KeyValue) -> ControlValue:
    return ControlValue(kv.mod_revision, kv.value.decode("utf-8", "replace"))


async def control_values(
    key: str, raw: RawWatch[ControlValue | None]
) -> AsyncIterator[ControlValue | None]:
    """``watch_control`` from a raw watch of the control ``key``: its value (None: no
    request) at each listing, then after each change."""
    async for listing, events in raw:
        if not events:  # a (re)listing: the value now, None when no request is pending
            yield listing
        for kind, kv in events:
            if kv.key != key:
                continue  # the watched range also holds longer keys: not ours
            yield None if kind is EventKind.DELETE else control_value(kv)


def _name(keys: StoreKeys, kv: KeyValue) -> ContainerName | str:
    """The container name under ``kv``'s key, or why it is refused."""
    try:
        return decode_container(kv.key[len(keys.names) :], kv.value)
    except LeaseFormatError as exc:
        return str(exc)


def _table(revision: int, found: dict[str, ContainerName | str]) -> NameTable:
    names = tuple(sorted(v for v in found.values() if isinstance(v, ContainerName)))
    errors = tuple(sorted((k, v) for k, v in found.items() if isinstance(v, str)))
    return NameTable(revision, names, errors)


def name_table(keys: StoreKeys, kvs: Iterable[KeyValue], revision: int) -> NameTable:
    """The container names among the keys under ``names/``."""
    return _table(revision, {kv.key[len(keys.names) :]: _name(keys, kv) for kv in kvs})


def name_tables(keys: StoreKeys, raw: RawWatch[NameTable]) -> AsyncIterator[NameTable]:
    """``watch_names`` from a raw watch of ``names/``: the whole table after each change."""

    def split(listing: NameTable) -> tuple[int, dict[str, ContainerName | str]]:
        return listing.revision, {n.key_part(): n for n in listing.names} | dict(listing.errors)

    return _tables(len(keys.names), raw, split, lambda kv: _name(keys, kv), _table)


def _status(keys: StoreKeys, kv: KeyValue) -> NodeReport | str:
    """The report under ``kv``'s key, or why it is refused."""
    try:
        return decode_report(kv.key[len(keys.statuses) :], kv.value)
    except ReportFormatError as exc:
        return str(exc)


def _status_table(revision: int, found: dict[str, NodeReport | str]) -> StatusTable:
    reports = tuple(v for _, v in sorted(found.items()) if isinstance(v, NodeReport))
    errors = tuple(sorted((k, v) for k, v in found.items() if isinstance(v, str)))
    return StatusTable(revision, reports, errors)


def status_table(keys: StoreKeys, kvs: Iterable[KeyValue], revision: int) -> StatusTable:
    """The reports among the keys under ``status/``."""
    return _status_table(revision, {kv.key[len(keys.statuses) :]: _status(keys, kv) for kv in kvs})


def status_tables(keys: StoreKeys, raw: RawWatch[StatusTable]) -> AsyncIterator[StatusTable]:
    """``watch_status_reports`` from a raw watch of ``status/``: the whole table after each
    change."""

    def split(listing: StatusTable) -> tuple[int, dict[str, NodeReport | str]]:
        return listing.revision, {r.node: r for r in listing.reports} | dict(listing.errors)

    return _tables(len(keys.statuses), raw, split, lambda kv: _status(keys, kv), _status_table)


async def _tables(
    skip: int,
    raw: RawWatch[U],
    split: Callable[[U], tuple[int, dict[str, V | str]]],
    decode: Callable[[KeyValue], V | str],
    build: Callable[[int, dict[str, V | str]], U],
) -> AsyncIterator[U]:
    """A whole table after each change of a raw watch of keys ``skip`` characters long
    before their name: ``split`` a listing into its revision and items by name (an error
    text for a refused one), ``decode`` a key, ``build`` the table again."""
    current: dict[str, V | str] = {}
    revision = 0
    async for listing, events in raw:
        if listing is not None:
            revision, current = split(listing)
        for kind, kv in events:
            revision = max(revision, kv.mod_revision)
            if kind is EventKind.DELETE:
                current.pop(kv.key[skip:], None)
            else:
                current[kv.key[skip:]] = decode(kv)
        yield build(revision, current)


def reservations(keys: StoreKeys, kvs: Iterable[KeyValue]) -> dict[IPv4Network, str]:
    """The well-formed reservations among the keys under ``reservations/``."""
    skip = len(keys.reservations)
    found = (decode_reservation(kv.key[skip:], kv.value) for kv in kvs)
    return dict(r for r in found if r is not None)


def _log_malformed(problem: str | None) -> None:
    """One line for a gateway record that could not be read (it counts as absent)."""
    if problem is not None:
        _gateway_log.error("%s", problem)
