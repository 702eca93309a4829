"""The facts the daemon reports and the documents of its status port.

Owns ``Status`` (mutated only by the daemon's own loop) and the bodies of ``/healthz``,
``/readyz``, ``/status`` and ``/peers``; overlayd/agent/status.py serves them. Pure
functions of what they are given: no clock, store or kernel of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlayd.agent.path_keeper import PeerReport


@dataclass
class Status:
    """Facts the health endpoints report; mutated only by the daemon's own loop."""

    started: float = 0.0  # the clock's monotonic time at start
    subnet: IPv4Network | None = None
    reconciles: int = 0
    last_reconcile: float | None = None
    last_error: str | None = None
    peers: int = 0
    snapshot_loaded: bool = False
    role: str | None = None  # gateway topology: the role of the last plan


def healthz(status: Status, now: float) -> tuple[int, Any]:
    """``/healthz``: alive, and since when (``now``: the clock's monotonic time)."""
    return 200, {"status": "ok", "uptime": round(now - status.started, 1)}


def readyz(ready: bool) -> tuple[int, Any]:
    """``/readyz``: 200 once a lease is held and a pass has run."""
    if ready:
        return 200, {"ready": True}
    return 503, {"ready": False}


def peersz(reports: Iterable[PeerReport] | None) -> tuple[int, Any]:
    """``/peers``: each peer's chosen path (None: the path keeper has not started)."""
    if reports is None:
        return 503, {"error": "not started"}
    return 200, {"peers": [r.to_json() for r in reports]}


def statusz(
    node: str,
    status: Status,
    public_ips: Iterable[IPv4Address],
    entries: int,
    discovery: str | None = None,
    dns: Mapping[str, int] | None = None,
) -> tuple[int, Any]:
    """``/status``: the facts, our published public addresses, how many entries we own,
    what we learned of our public address ourselves (None: ``--public-ip`` given) and the
    DNS responder's counters (None: no responder; docs/dns.md)."""
    s = status
    return 200, {
        "node": node,
        "subnet": str(s.subnet) if s.subnet else None,
        "peers": s.peers,
        "reconciles": s.reconciles,
        "last_reconcile": s.last_reconcile,
        "last_error": s.last_error,
        "snapshot_loaded": s.snapshot_loaded,
        "public_ips": [str(a) for a in public_ips],
        "role": s.role,
        "entries": entries,
        "discovery": discovery,
        "dns": dict(dns) if dns is not None else None,
    }
