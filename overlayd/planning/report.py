"""What a node reports of the network (pure): its peers' paths → ``NodeReport``, and when
a new report is worth writing.

The daemon's status reporter (overlayd/agent/reporting.py) calls ``node_report`` with the
peer reports of its path keeper (what ``/peers`` shows) and ``due`` to decide whether to
write. A report's size does not grow with the network: counts per path kind, the median
RTT and the path counts per site (at most ``MAX_SITES``), and at most ``MAX_UNREACHABLE``
names. Writes happen on change, at most every ``min_interval``, and every ``refresh``
seconds regardless (so a report older than a few refreshes is stale: its writer is
stuck). RTTs that wobble within a tolerance are not a change, nor is a later pass.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from overlayd.values.paths import PeerPath
from overlayd.values.report import (
    BROKEN_KINDS,
    GATEWAY,
    MAX_SITES,
    MAX_UNREACHABLE,
    NO_PATH,
    RELAY,
    UNVERIFIED,
    NodeReport,
)


class PeerView(Protocol):
    """What a report needs of one peer: the path keeper's ``PeerReport`` has it."""

    @property
    def node(self) -> str: ...

    @property
    def site(self) -> str: ...

    @property
    def path(self) -> PeerPath | None: ...

    @property
    def rtt_ms(self) -> float | None: ...

    @property
    def verified(self) -> tuple[IPv4Address, ...]: ...

    @property
    def via(self) -> str | None: ...

    @property
    def relay(self) -> str | None: ...


@dataclass(frozen=True)
class Reporter:
    """Who reports: the node's identity from its lease, its role and versions."""

    node: str
    node_id: str
    site: str
    subnet: IPv4Network
    role: str
    versions: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ReportParams:
    """When reports are written, and the etcd lease they are bound to."""

    min_interval: float = 5.0  # seconds between two writes at the most
    refresh: float = 120.0  # rewritten at least this often, changed or not
    ttl: int = 20  # seconds of the report's own etcd lease: a dead node's report vanishes
    rtt_floor_ms: float = 1.0  # an RTT moving by less than this (or ...
    rtt_share: float = 0.2  # ... this share of it) is not a change

    @property
    def stale_after(self) -> float:
        """Seconds after which a report not rewritten is stale (three refreshes)."""
        return 3 * self.refresh


def path_kind(peer: PeerView) -> str:
    """The kind of ``peer``'s path as reports count it: through a relay or a gateway, the
    chosen path's kind once probes verified its address, else ``unverified`` (a guess) or
    ``none``."""
    if peer.relay:
        return RELAY
    if peer.via:
        return GATEWAY
    if peer.path is None:
        return NO_PATH
    return peer.path.kind if peer.path.address in peer.verified else UNVERIFIED


def node_report(
    me: Reporter, peers: Iterable[PeerView], last_reconcile: float | None, now: float
) -> NodeReport:
    """``me``'s report of ``peers`` at wall-clock time ``now`` (deterministic: the same
    peers in any order give the same report)."""
    kinds: dict[str, int] = defaultdict(int)
    by_site: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    rtts: dict[str, list[float]] = defaultdict(list)
    broken: list[str] = []
    for peer in peers:
        kind = path_kind(peer)
        kinds[kind] += 1
        by_site[peer.site][kind] += 1
        if kind in BROKEN_KINDS:
            broken.append(peer.node)
        elif peer.rtt_ms is not None:
            rtts[peer.site].append(peer.rtt_ms)
    sites = sorted(by_site)[:MAX_SITES]
    return NodeReport(
        node=me.node,
        node_id=me.node_id,
        site=me.site,
        subnet=me.subnet,
        role=me.role,
        versions=tuple(sorted(me.versions)),
        last_reconcile=last_reconcile,
        paths=tuple(sorted(kinds.items())),
        site_rtts=tuple((s, round(statistics.median(rtts[s]), 2)) for s in sites if rtts[s]),
        site_paths=tuple((s, tuple(sorted(by_site[s].items()))) for s in sites),
        unreachable=tuple(sorted(broken)[:MAX_UNREACHABLE]),
        unreachable_total=len(broken),
        written_at=now,
    )


def differs(old: NodeReport, new: NodeReport, params: ReportParams) -> bool:
    """Whether ``new`` says something ``old`` did not: anything but the times, or an RTT
    that moved by more than the tolerance (or a site that came or went)."""
    if _without_times(old) != _without_times(new):
        return True
    before, after = dict(old.site_rtts), dict(new.site_rtts)
    if before.keys() != after.keys():
        return True
    return any(
        abs(after[s] - was) > max(params.rtt_floor_ms, params.rtt_share * was)
        for s, was in before.items()
    )


def _without_times(report: NodeReport) -> NodeReport:
    return replace(report, written_at=0.0, last_reconcile=None, site_rtts=())


def due(
    written: NodeReport | None,
    written_when: float,
    new: NodeReport,
    now: float,
    params: ReportParams,
) -> bool:
    """Whether to write ``new`` at ``now`` (monotonic seconds) when ``written`` (None:
    nothing yet) was written at ``written_when``: never sooner than ``min_interval`` after
    the last write; then if it changed, or the last write is ``refresh`` seconds old."""
    if written is None:
        return True
    age = now - written_when
    if age < params.min_interval:
        return False
    return age >= params.refresh or differs(written, new, params)


def is_stale(report: NodeReport, now: float, params: ReportParams | None = None) -> bool:
    """Whether ``report`` was last written longer ago than ``stale_after`` at wall-clock
    ``now`` (its writer's clock may be off: then too it is worth a look)."""
    return now - report.written_at > (params or ReportParams()).stale_after
