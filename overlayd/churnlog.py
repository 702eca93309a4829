"""The daemon's churn lines: leases joining/leaving/changing, kernel passes, WireGuard peers.

One line per change on a quiet network; under churn one summary per second with counts
(``logs.Churn``), so 200 lease events a second add about one line a second, not 600.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from overlayd.kernel_state import Changes
from overlayd.logs import Churn

INTERVAL = 1.0  # seconds: at most one summary line per churn per interval


def _call_later(delay: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


def lease_churn(log: logging.Logger) -> Churn:
    """Peers joining, leaving or changing their lease: ``note({"joined": 1}, line)`` etc."""

    def summary(counts: Mapping[str, int], seconds: float) -> str:
        return (
            f"leases: +{counts.get('joined', 0)} joined, -{counts.get('left', 0)} left, "
            f"~{counts.get('changed', 0)} changed in the last {seconds:.1f} s"
        )

    return Churn(log.info, summary, INTERVAL, schedule=_call_later)


def change_counts(changes: Changes) -> dict[str, int]:
    """What one applied ``Changes`` adds to a kernel churn summary."""
    return {
        "passes": 1,
        "+routes": len(changes.set_routes),
        "-routes": len(changes.del_routes),
        "+neigh": len(changes.set_neighs),
        "-neigh": len(changes.del_neighs),
        "+fdb": len(changes.set_fdbs),
        "-fdb": len(changes.del_fdbs),
    }


def kernel_churn(log: logging.Logger, device: str) -> Churn:
    """Reconcile passes that changed ``device``: ``note(change_counts(changes), line)``."""

    def summary(c: Mapping[str, int], seconds: float) -> str:
        return (
            f"reconciled {device} {c.get('passes', 0)} times in the last {seconds:.1f} s: "
            f"+{c.get('+routes', 0)}/-{c.get('-routes', 0)} routes, "
            f"+{c.get('+neigh', 0)}/-{c.get('-neigh', 0)} neigh, "
            f"+{c.get('+fdb', 0)}/-{c.get('-fdb', 0)} fdb"
            + (f", {c['failed']} failed" if c.get("failed") else "")
        )

    return Churn(log.info, summary, INTERVAL, schedule=_call_later)


def wireguard_churn(log: logging.Logger) -> Churn:
    """WireGuard peer updates: ``note({"+": added, "~": updated, "-": removed}, line)``."""

    def summary(c: Mapping[str, int], seconds: float) -> str:
        return (
            f"WireGuard peers: +{c.get('+', 0)} ~{c.get('~', 0)} -{c.get('-', 0)} "
            f"in the last {seconds:.1f} s"
        )

    return Churn(log.info, summary, INTERVAL, schedule=_call_later)
