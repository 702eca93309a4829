"""Raw keys into the store's values, once for both stores.

``EtcdStore`` and ``MemStore`` keep the same key layout (``StoreKeys``, overlayd/store/api.py);
each hands the key-values it lists or watches here as ``KeyValue`` and gets back leases,
gateway state, control requests and reservations. A watch arrives as a ``RawWatch``: a
listing with no events (at start and after a compaction), then ``(None, events)``.

A gateway record that cannot be read counts as absent and is logged here
(``overlayd.gateway``); malformed leases and reservations are values (``decode_stored``,
``decode_reservation``). Must not import the etcd client, asyncio or sockets.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TypeVar

from overlayd.store.api import (
    ControlValue,
    EventKind,
    LeaseEvent,
    Snapshot,
    StoredLease,
    StoreKeys,
    WatchBatch,
    decode_reservation,
    decode_stored,
)
from overlayd.values.gateway_state import GatewayState

T = TypeVar("T")

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


def reservations(keys: StoreKeys, kvs: Iterable[KeyValue]) -> dict[IPv4Network, str]:
    """The well-formed reservations among the keys under ``reservations/``."""
    skip = len(keys.reservations)
    found = (decode_reservation(kv.key[skip:], kv.value) for kv in kvs)
    return dict(r for r in found if r is not None)


def _log_malformed(problem: str | None) -> None:
    """One line for a gateway record that could not be read (it counts as absent)."""
    if problem is not None:
        _gateway_log.error("%s", problem)
