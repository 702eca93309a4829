"""The daemon's churn lines: peers joining, leaving or changing, kernel passes, the VXLAN
ingress filter, WireGuard peers.

One line per change on a quiet network (a lease change and the kernel pass it causes);
under churn one summary line per second with counts (``logs.Churn``), e.g.
``leases: +120 joined, -80 left, ~40 changed; vxlan: 37 passes, +120/-80 routes, …
in the last 1.0 s`` — 200 lease events a second add one line a second, not 600.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from overlayd.runtime.logs import Churn
from overlayd.values.kernel_state import Changes

INTERVAL = 1.0  # seconds: at most one summary line per interval
DEVICES = ("vxlan", "wireguard")
_ENTRIES = ("routes", "neigh", "fdb")


def _call_later(delay: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


def activity_churn(log: logging.Logger) -> Churn:
    """The daemon's one churn log: ``note`` it with ``lease_counts``, ``change_counts`` or
    ``wireguard_counts`` and the event's own line."""
    return Churn(log.info, summary, INTERVAL, schedule=_call_later)


def lease_counts(kind: str) -> dict[str, int]:
    """A peer ``joined``, ``left`` or ``changed`` its lease."""
    return {kind: 1}


def key_counts() -> dict[str, int]:
    """A peer's lease came with a new public key (a rotation)."""
    return {"new keys": 1}


def change_counts(device: str, changes: Changes, failed: int = 0) -> dict[str, int]:
    """One kernel pass that applied ``changes`` to ``device``."""
    return {
        f"{device} passes": 1,
        f"{device} +routes": len(changes.set_routes),
        f"{device} -routes": len(changes.del_routes),
        f"{device} +neigh": len(changes.set_neighs),
        f"{device} -neigh": len(changes.del_neighs),
        f"{device} +fdb": len(changes.set_fdbs),
        f"{device} -fdb": len(changes.del_fdbs),
        f"{device} failed": failed,
    }


def wireguard_counts(added: int, updated: int, removed: int) -> dict[str, int]:
    """One update of the WireGuard peers."""
    return {"wg +": added, "wg ~": updated, "wg -": removed, "wg passes": 1}


def summary(c: Mapping[str, int], seconds: float) -> str:
    """One line for everything counted in the last ``seconds``."""
    parts = []
    if c.get("joined") or c.get("left") or c.get("changed"):
        parts.append(
            f"leases: +{c.get('joined', 0)} joined, -{c.get('left', 0)} left, "
            f"~{c.get('changed', 0)} changed"
        )
    for dev in DEVICES:
        if c.get(f"{dev} passes"):
            entries = ", ".join(
                f"+{c.get(f'{dev} +{e}', 0)}/-{c.get(f'{dev} -{e}', 0)} {e}" for e in _ENTRIES
            )
            failed = c.get(f"{dev} failed", 0)
            parts.append(
                f"{dev}: {c[f'{dev} passes']} passes, {entries}"
                + (f", {failed} failed" if failed else "")
            )
    if c.get("new keys"):
        parts.append(f"public keys: {c['new keys']} peers changed theirs")
    if c.get("ingress passes"):
        parts.append(f"ingress filter: {c['ingress passes']} updates")
    if c.get("wg passes"):
        parts.append(
            f"WireGuard peers: +{c.get('wg +', 0)} ~{c.get('wg ~', 0)} -{c.get('wg -', 0)}"
        )
    return "; ".join(parts or ["nothing"]) + f" in the last {seconds:.1f} s"
