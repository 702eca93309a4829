"""A node's report of what it observes (pure): ``NodeReport`` and its JSON codec.

Every daemon publishes one under ``<prefix>/status/<node>`` (docs/etcd-schema.md), bound to
a short etcd lease of its own, so a dead node's report vanishes with it. ``overlayctl
status``, ``overlayctl graph`` and the console read them. The value is compact and its
size does not grow with the network except through bounded lists: path counts by kind,
the median RTT per peer site (at most ``MAX_SITES``), and the peers it cannot reach (at
most ``MAX_UNREACHABLE`` names, plus their total count).

A report comes from another host, so decoding checks what a lease's decoding checks: a
bounded value (checked before it is parsed), DNS labels for names, bounded lists and
numbers; ``ReportFormatError`` says what is wrong, quoting at most a few characters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any, TypeVar

from overlayd.values.errors import LeaseFormatError, ReportFormatError
from overlayd.values.lease import parse_subnet_key_name, subnet_key_name
from overlayd.values.lease_rules import is_label, is_node_id
from overlayd.values.text import json_object, quote

T = TypeVar("T")

MAX_REPORT_BYTES = 16384
"""A report's size limit, checked before parsing (the largest one the planner can write,
32 sites of 63-character names with every kind, is ~11 KiB; a usual one ~0.5 KiB)."""
MAX_SITES = 32
"""Sites a report describes (median RTT, paths by kind): the first ones by name (a
network rarely has more; ``paths`` still counts every peer)."""
MAX_UNREACHABLE = 16
"""Names of unreachable peers a report lists; ``unreachable_total`` counts them all."""
MAX_KINDS = 16
MAX_VERSIONS = 8
MAX_VERSION_TEXT = 64
MAX_COUNT = 1_000_000
"""Largest peer count a report may claim (per kind, and in total)."""
MAX_RTT_MS = 600_000.0
MAX_TIME = 2**40
"""Largest wall-clock time (UNIX seconds) a report may carry: far in the future, finite."""

# the path kinds a report counts (overlayd/planning/report.py decides which is which)
PRIVATE, PUBLIC, PUNCHED = "private", "public", "punched"
GATEWAY, RELAY, UNVERIFIED, NO_PATH = "gateway", "relay", "unverified", "none"
PATH_KINDS = (PRIVATE, PUBLIC, PUNCHED, GATEWAY, RELAY, UNVERIFIED, NO_PATH)
BROKEN_KINDS = frozenset({UNVERIFIED, NO_PATH})
"""Kinds whose peers the reporter cannot reach (no verified path)."""


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What one node observes of the network, as it publishes it.

    ``paths``: peers per path kind (``PATH_KINDS``; only kinds with peers, sorted);
    ``site_paths``: the same per peer site (sorted by site); ``site_rtts``: the median
    round trip (ms) to the reachable peers of each site that has one (sorted by site);
    ``unreachable``: the first ``MAX_UNREACHABLE`` peers it
    cannot reach, by name, and ``unreachable_total`` all of them. Times are wall-clock
    UNIX seconds of the reporter (``last_reconcile`` None: no pass yet).
    """

    node: str
    node_id: str
    site: str
    subnet: IPv4Network
    role: str  # "mesh", or the gateway topology's ("gateway", "member", "waiting")
    versions: tuple[tuple[str, str], ...]  # (component, version), sorted
    last_reconcile: float | None
    paths: tuple[tuple[str, int], ...]
    site_rtts: tuple[tuple[str, float], ...]
    unreachable: tuple[str, ...]
    unreachable_total: int
    written_at: float
    # last, with a default: added after the first version of this value
    site_paths: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()

    @property
    def peers(self) -> int:
        """How many peers the reporter has."""
        return sum(n for _, n in self.paths)

    def count(self, kind: str) -> int:
        """Peers reached by path ``kind`` (0 if none)."""
        return dict(self.paths).get(kind, 0)

    def to_json(self) -> str:
        """The stored value (compact, keys sorted: the same report is the same bytes)."""
        return json.dumps(
            {
                "Node": self.node,
                "NodeID": self.node_id,
                "Site": self.site,
                "Subnet": subnet_key_name(self.subnet),
                "Role": self.role,
                "Versions": dict(self.versions),
                "LastReconcile": self.last_reconcile,
                "Paths": dict(self.paths),
                "SiteRTTs": dict(self.site_rtts),
                "SitePaths": {site: dict(kinds) for site, kinds in self.site_paths},
                "Unreachable": list(self.unreachable),
                "UnreachableTotal": self.unreachable_total,
                "WrittenAt": self.written_at,
            },
            sort_keys=True,
            separators=(",", ":"),
        )


def decode_report(node: str, value: bytes | str) -> NodeReport:
    """The report under ``status/<node>``; ``ReportFormatError`` says what is wrong.

    The value must name ``node`` itself: a report filed under another node's key is refused.
    """
    data = value.encode() if isinstance(value, str) else value
    try:
        raw = json_object(data, MAX_REPORT_BYTES, f"report {quote(node)}")
    except ValueError as exc:
        raise ReportFormatError(str(exc)) from None
    try:
        report = _report(raw)
    except _Bad as exc:
        raise ReportFormatError(f"report {quote(node)}: {exc}") from None
    if report.node != node:
        raise ReportFormatError(f"report {quote(node)} names node {quote(report.node)}")
    return report


class _Bad(Exception):
    """A field is wrong (the message names it); becomes a ``ReportFormatError``."""


def _report(raw: dict[str, Any]) -> NodeReport:
    paths = _mapping(raw.get("Paths", {}), "Paths", MAX_KINDS, _count)
    unreachable = _labels(raw.get("Unreachable", []), "Unreachable")
    total = _count(raw.get("UnreachableTotal", len(unreachable)), "UnreachableTotal")
    if total < len(unreachable):
        raise _Bad(f"UnreachableTotal {total} is below the {len(unreachable)} names listed")
    return NodeReport(
        node=_label(raw.get("Node"), "Node"),
        node_id=_node_id(raw.get("NodeID", "")),
        site=_label(raw.get("Site"), "Site"),
        subnet=_subnet(raw.get("Subnet")),
        role=_label(raw.get("Role"), "Role"),
        versions=_mapping(raw.get("Versions", {}), "Versions", MAX_VERSIONS, _version),
        last_reconcile=_time(raw.get("LastReconcile"), "LastReconcile", optional=True),
        paths=paths,
        site_rtts=_mapping(raw.get("SiteRTTs", {}), "SiteRTTs", MAX_SITES, _rtt),
        site_paths=_mapping(raw.get("SitePaths", {}), "SitePaths", MAX_SITES, _kinds),
        unreachable=unreachable,
        unreachable_total=total,
        written_at=_time(raw.get("WrittenAt"), "WrittenAt") or 0.0,
    )


def _label(value: object, what: str) -> str:
    if not isinstance(value, str) or not is_label(value):
        raise _Bad(f"{what} {quote(value)} is not a DNS label")
    return value


def _labels(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_UNREACHABLE:
        raise _Bad(f"{what} {quote(value)} is not a list of at most {MAX_UNREACHABLE} names")
    return tuple(_label(v, what) for v in value)


def _node_id(value: object) -> str:
    if not isinstance(value, str) or not is_node_id(value):
        raise _Bad(f"NodeID {quote(value)} is not a node id")
    return value


def _subnet(value: object) -> IPv4Network:
    try:
        if isinstance(value, str):
            return parse_subnet_key_name(value)
    except LeaseFormatError:
        pass
    raise _Bad(f"Subnet {quote(value)} is not a subnet key (a.b.c.d-len)")


def _number(value: object) -> float | None:
    """``value`` as a finite number (JSON ints and floats, not booleans), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _Bad(f"{what} {quote(value)} is not a count (0-{MAX_COUNT})")
    return value


def _rtt(value: object, what: str) -> float:
    number = _number(value)
    if number is None or not 0 <= number <= MAX_RTT_MS:
        raise _Bad(f"{what} {quote(value)} is not a round trip in ms (0-{MAX_RTT_MS:.0f})")
    return number


def _time(value: object, what: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    number = _number(value)
    if number is None or not 0 <= number <= MAX_TIME:
        raise _Bad(f"{what} {quote(value)} is not a time (UNIX seconds)")
    return number


def _version(value: object, what: str) -> str:
    ok = isinstance(value, str) and 0 < len(value) <= MAX_VERSION_TEXT
    if not ok or not all(c.isascii() and (c.isalnum() or c in "+-._~") for c in str(value)):
        raise _Bad(
            f"{what} {quote(value)} is not a version (up to {MAX_VERSION_TEXT} of A-Z 0-9 +-._~)"
        )
    return str(value)


def _kinds(value: object, what: str) -> tuple[tuple[str, int], ...]:
    return _mapping(value, what, MAX_KINDS, _count)


def _mapping(
    value: object, what: str, limit: int, item: Callable[[object, str], T]
) -> tuple[tuple[str, T], ...]:
    """``value`` as a sorted tuple of (label, ``item(value)``): an object of at most
    ``limit`` entries keyed by DNS labels."""
    if not isinstance(value, dict) or len(value) > limit:
        raise _Bad(f"{what} {quote(value)} is not an object of at most {limit} entries")
    return tuple(
        sorted((_label(k, f"{what} key"), item(v, f"{what}[{quote(k)}]")) for k, v in value.items())
    )
