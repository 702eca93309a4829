"""The daemon's picture of the kernel state it owns, kept current from the kernel itself.

It is replaced by a full dump (at start, periodically, after lost notifications) and
updated from netlink notifications in between; never from what we merely asked for.
Entries equal to desired ones are stored as the desired objects ("interned") so the
diff's identity short-cut holds for everything already in place, under the desired
entries' own key objects: the decoded copies of each peer's addresses are not kept (at
5,000 peers they were ~3 MB).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

from overlayd.dataplane.netlink.monitor import KernelEvent
from overlayd.dataplane.netlink.rtnl_messages import NeighMessage, RouteMessage
from overlayd.values.kernel_state import KernelState

_KEY_OF: dict[str, Callable[[Any], Any]] = {
    "routes": attrgetter("dst"),
    "neighs": attrgetter("ip"),
    "fdbs": attrgetter("mac"),
}
"""Per table of ``KernelState``: the field of an entry that is its key."""


def _interned(dumped: dict[Any, Any], desired: dict[Any, Any], field: str) -> dict[Any, Any]:
    out = {}
    key_of = _KEY_OF[field]
    for key, have in dumped.items():
        want = desired.get(key)
        if want is not None and want == have:
            out[key_of(want)] = want
        else:
            out[key] = have
    return out


class KernelMirror:
    """Holder of the actual ``KernelState`` (its dicts are updated in place by events)."""

    def __init__(self) -> None:
        self.state = KernelState()

    def replace(self, dumped: KernelState, desired: KernelState) -> None:
        """Take a full dump as the new truth."""
        self.state = KernelState(
            routes=_interned(dumped.routes, desired.routes, "routes"),
            neighs=_interned(dumped.neighs, desired.neighs, "neighs"),
            fdbs=_interned(dumped.fdbs, desired.fdbs, "fdbs"),
        )

    def absorb(self, event: KernelEvent, desired: KernelState) -> bool:
        """Apply one notification; True if the entry it touched now differs from ``desired``."""
        if not event.apply_to(self.state):
            return False
        msg = event.message
        key: object
        if isinstance(msg, RouteMessage):
            field, key = "routes", msg.dst
        elif isinstance(msg, NeighMessage):
            field, key = "neighs", msg.ip
        else:
            field, key = "fdbs", msg.mac
        table: dict[Any, Any] = getattr(self.state, field)
        want: dict[Any, Any] = getattr(desired, field)
        have, wanted = table.get(key), want.get(key)
        if have is not None and wanted is not None and have == wanted:
            del table[key]  # (assigning would keep the decoded key object)
            table[_KEY_OF[field](wanted)] = wanted
            return False
        return have is not wanted
