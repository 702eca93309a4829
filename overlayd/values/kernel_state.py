"""Kernel entries overlayd owns on its overlay device, and the diff between two sets of them.

Pure values: the planner produces a desired ``KernelState``, the netlink adapter reads the
actual one back from the kernel, and ``diff`` says what to change. Keys are what the kernel
keys the entries by (route: destination, neighbour: IP, FDB: MAC), so a changed value
becomes one replace, not a delete plus an add.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V", bound=Any)

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True, order=True, slots=True)
class MacAddress:
    """An Ethernet address, normalised to lower-case colon form."""

    text: str

    def __post_init__(self) -> None:
        if not _MAC_RE.match(self.text):
            raise ValueError(f"invalid MAC address {self.text!r}")

    @classmethod
    def parse(cls, value: str) -> MacAddress:
        return cls(value.strip().lower().replace("-", ":"))

    @classmethod
    def from_bytes(cls, raw: bytes) -> MacAddress:
        if len(raw) != 6:
            raise ValueError(f"a MAC address has 6 bytes, got {len(raw)}")
        return cls(":".join(f"{b:02x}" for b in raw))

    @property
    def packed(self) -> bytes:
        return bytes(int(part, 16) for part in self.text.split(":"))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, order=True, slots=True)
class RouteEntry:
    """An onlink route for a peer's subnet via the peer's overlay address."""

    dst: IPv4Network
    via: IPv4Address


@dataclass(frozen=True, order=True, slots=True)
class NeighEntry:
    """A permanent neighbour (ARP) entry: peer overlay address -> peer VTEP MAC."""

    ip: IPv4Address
    mac: MacAddress


@dataclass(frozen=True, order=True, slots=True)
class FdbEntry:
    """A permanent FDB entry: peer VTEP MAC -> peer underlay address."""

    mac: MacAddress
    dst: IPv4Address


@dataclass(frozen=True)
class KernelState:
    """The entries on one overlay device, keyed as the kernel keys them."""

    routes: dict[IPv4Network, RouteEntry] = field(default_factory=dict)
    neighs: dict[IPv4Address, NeighEntry] = field(default_factory=dict)
    fdbs: dict[MacAddress, FdbEntry] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        routes: list[RouteEntry] | tuple[RouteEntry, ...] = (),
        neighs: list[NeighEntry] | tuple[NeighEntry, ...] = (),
        fdbs: list[FdbEntry] | tuple[FdbEntry, ...] = (),
    ) -> KernelState:
        return cls(
            routes={r.dst: r for r in routes},
            neighs={n.ip: n for n in neighs},
            fdbs={f.mac: f for f in fdbs},
        )

    def size(self) -> int:
        return len(self.routes) + len(self.neighs) + len(self.fdbs)


@dataclass(frozen=True)
class Changes:
    """What to do to turn the actual state into the desired one; sorted for determinism.

    ``set_*`` entries are created or replaced (NLM_F_CREATE|NLM_F_REPLACE); ``del_*`` are
    removed. Order of application: neighbours and FDB before routes on set (a route via a
    peer needs its neighbour), routes before neighbours on delete.
    """

    set_routes: tuple[RouteEntry, ...] = ()
    set_neighs: tuple[NeighEntry, ...] = ()
    set_fdbs: tuple[FdbEntry, ...] = ()
    del_routes: tuple[RouteEntry, ...] = ()
    del_neighs: tuple[NeighEntry, ...] = ()
    del_fdbs: tuple[FdbEntry, ...] = ()

    def __len__(self) -> int:
        return (
            len(self.set_routes)
            + len(self.set_neighs)
            + len(self.set_fdbs)
            + len(self.del_routes)
            + len(self.del_neighs)
            + len(self.del_fdbs)
        )

    def summary(self) -> str:
        return (
            f"+{len(self.set_routes)}/-{len(self.del_routes)} routes, "
            f"+{len(self.set_neighs)}/-{len(self.del_neighs)} neigh, "
            f"+{len(self.set_fdbs)}/-{len(self.del_fdbs)} fdb"
        )


def _split(desired: dict[K, V], actual: dict[K, V]) -> tuple[tuple[V, ...], tuple[V, ...]]:
    # identity first: unchanged entries are the very objects the planner memoised
    to_set = [v for k, v in desired.items() if (a := actual.get(k)) is not v and a != v]
    to_del = [v for k, v in actual.items() if k not in desired]
    return tuple(sorted(to_set)), tuple(sorted(to_del))


def diff(desired: KernelState, actual: KernelState, *, allow_delete: bool = True) -> Changes:
    """Changes that turn ``actual`` into ``desired``.

    With ``allow_delete=False`` nothing is removed: used until the first full snapshot of
    the store has loaded, so a restart never flushes live entries.
    """
    set_routes, del_routes = _split(desired.routes, actual.routes)
    set_neighs, del_neighs = _split(desired.neighs, actual.neighs)
    set_fdbs, del_fdbs = _split(desired.fdbs, actual.fdbs)
    if not allow_delete:
        del_routes, del_neighs, del_fdbs = (), (), ()
    return Changes(set_routes, set_neighs, set_fdbs, del_routes, del_neighs, del_fdbs)


def diff_keys(
    desired: KernelState,
    actual: KernelState,
    routes: frozenset[IPv4Network],
    neighs: frozenset[IPv4Address],
    fdbs: frozenset[MacAddress],
) -> Changes:
    """``diff`` restricted to the given keys (what an incremental replan may have changed)."""

    def split(want: dict[Any, Any], have: dict[Any, Any], keys: frozenset[Any]) -> tuple[Any, Any]:
        return _split(
            {k: want[k] for k in keys if k in want}, {k: have[k] for k in keys if k in have}
        )

    set_routes, del_routes = split(desired.routes, actual.routes, routes)
    set_neighs, del_neighs = split(desired.neighs, actual.neighs, neighs)
    set_fdbs, del_fdbs = split(desired.fdbs, actual.fdbs, fdbs)
    return Changes(set_routes, set_neighs, set_fdbs, del_routes, del_neighs, del_fdbs)
