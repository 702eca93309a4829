"""A stateful in-memory data plane for component tests of the daemon (no root, no netlink).

It implements overlayd.dataplane.api.DataPlaneApi: each device (by ifindex) keeps its routes,
neighbours and FDB entries; ``dump`` answers from that state, ``apply`` changes it, is
recorded, and notifies the device's monitor as the kernel does (the daemon's mirror is
kept from notifications, not from what it asked for). Tests may put entries in beforehand
(what a previous run left) with ``preload``. ``writes`` names every call that changed
something (what the real data plane would have written), ``dumps`` counts read-backs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from overlayd.dataplane.api import Underlay, VxlanSpec
from overlayd.dataplane.netlink.link import LinkInfo
from overlayd.dataplane.netlink.monitor import KernelEvent
from overlayd.dataplane.netlink.rtnl import ApplyResult
from overlayd.dataplane.netlink.rtnl_messages import Action, FdbMessage, NeighMessage, RouteMessage
from overlayd.values.kernel_state import (
    Changes,
    FdbEntry,
    KernelState,
    MacAddress,
    NeighEntry,
    RouteEntry,
)
from overlayd.values.keys import PublicKey
from overlayd.values.wireguard import (
    Endpoint,
    PeerChanges,
    WgDeviceConfig,
    WgPeerConfig,
    WgPeerState,
)

UNDERLAY_INDEX = 2
VXLAN_INDEX = 10
WIREGUARD_INDEX = 11
UNDERLAY_ADDRESS = IPv4Address("192.0.2.1")


@dataclass
class FakeDataPlane:
    """Devices as dicts; ``applied`` lists every (ifindex, changes) the daemon applied,
    ``writes`` every call that changed a device, its address or its peers."""

    underlay_address: IPv4Address = UNDERLAY_ADDRESS
    mtu: int = 1500
    devices: dict[int, KernelState] = field(default_factory=dict)
    addresses: dict[int, IPv4Interface] = field(default_factory=dict)
    specs: dict[int, VxlanSpec] = field(default_factory=dict)
    wg_peers: dict[PublicKey, WgPeerConfig] = field(default_factory=dict)
    wg_bytes: dict[PublicKey, int] = field(default_factory=dict)  # rx + tx of each peer
    fdb_used: dict[MacAddress, float] = field(default_factory=dict)  # when each FDB entry sent
    # endpoints "learned from handshakes", as the device reports them beside configured ones
    wg_learned: dict[PublicKey, Endpoint] = field(default_factory=dict)
    wg_handshakes: dict[PublicKey, float] = field(default_factory=dict)  # UNIX time of the last
    applied: list[tuple[int, Changes]] = field(default_factory=list)
    monitors: dict[int, Callable[[list[KernelEvent] | None], None]] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    dumps: int = 0
    peer_reads: int = 0  # reads of the WireGuard device's peers

    def preload(self, ifindex: int, state: KernelState) -> None:
        """Entries a device holds before the daemon starts (a previous run's)."""
        self.devices[ifindex] = KernelState(
            routes=dict(state.routes), neighs=dict(state.neighs), fdbs=dict(state.fdbs)
        )

    def state(self, ifindex: int = VXLAN_INDEX) -> KernelState:
        return self.devices.setdefault(ifindex, KernelState())

    async def underlay(self, iface: str | None) -> Underlay:
        link = LinkInfo(
            name=iface or "eth0",
            index=UNDERLAY_INDEX,
            mtu=self.mtu,
            mac=None,
            up=True,
            addresses=(IPv4Interface(f"{self.underlay_address}/24"),),
        )
        return Underlay(link, self.underlay_address)

    async def ensure_device(self, spec: VxlanSpec, address: IPv4Interface) -> int:
        if (self.specs.get(VXLAN_INDEX), self.addresses.get(VXLAN_INDEX)) != (spec, address):
            self.writes.append("vxlan device")
        self.specs[VXLAN_INDEX] = spec
        self.addresses[VXLAN_INDEX] = address
        self.state(VXLAN_INDEX)
        return VXLAN_INDEX

    async def ensure_wireguard(
        self,
        ifname: str,
        device: WgDeviceConfig,
        address: IPv4Interface,
        log_path: Path,
        on_exit: Callable[[], None],
    ) -> tuple[int, bool]:
        created = WIREGUARD_INDEX not in self.devices
        if created or self.addresses.get(WIREGUARD_INDEX) != address:
            self.writes.append("wireguard device")
        self.addresses[WIREGUARD_INDEX] = address
        self.state(WIREGUARD_INDEX)
        return WIREGUARD_INDEX, created

    async def apply_wireguard_peers(
        self, peers: Iterable[WgPeerConfig], *, allow_delete: bool
    ) -> PeerChanges:
        wanted = {p.public_key: p for p in peers}
        add = tuple(p for k, p in sorted(wanted.items()) if k not in self.wg_peers)
        update = tuple(
            p for k, p in sorted(wanted.items()) if k in self.wg_peers and self.wg_peers[k] != p
        )
        remove = tuple(sorted(k for k in self.wg_peers if k not in wanted)) if allow_delete else ()
        for k in remove:
            del self.wg_peers[k]
        self.wg_peers.update(wanted)
        changes = PeerChanges(add=add, update=update, remove=remove)
        if changes:
            self.writes.append("wireguard peers")
        return changes

    async def dump(self, ifindex: int) -> KernelState:
        self.dumps += 1
        s = self.state(ifindex)
        return KernelState(routes=dict(s.routes), neighs=dict(s.neighs), fdbs=dict(s.fdbs))

    async def apply(self, ifindex: int, changes: Changes) -> ApplyResult:
        s = self.state(ifindex)
        for r in changes.del_routes:
            s.routes.pop(r.dst, None)
        for n in changes.del_neighs:
            s.neighs.pop(n.ip, None)
        for f in changes.del_fdbs:
            s.fdbs.pop(f.mac, None)
        s.routes.update((r.dst, r) for r in changes.set_routes)
        s.neighs.update((n.ip, n) for n in changes.set_neighs)
        s.fdbs.update((f.mac, f) for f in changes.set_fdbs)
        self.applied.append((ifindex, changes))
        if changes:
            self.writes.append(f"entries on {ifindex}")
        self._notify(ifindex, changes)
        return ApplyResult(ok=len(changes))

    def _notify(self, ifindex: int, changes: Changes) -> None:
        on_events = self.monitors.get(ifindex)
        if on_events is None:
            return
        events = [
            *(_event(ifindex, Action.DEL, e) for e in changes.del_routes),
            *(_event(ifindex, Action.DEL, e) for e in changes.del_neighs),
            *(_event(ifindex, Action.DEL, e) for e in changes.del_fdbs),
            *(_event(ifindex, Action.NEW, e) for e in changes.set_routes),
            *(_event(ifindex, Action.NEW, e) for e in changes.set_neighs),
            *(_event(ifindex, Action.NEW, e) for e in changes.set_fdbs),
        ]
        if events:  # delivered later on the loop, as the monitor thread's bursts are
            asyncio.get_running_loop().call_soon(on_events, events)

    async def fdb_idle(self, ifindex: int) -> dict[MacAddress, float]:
        """Seconds since each FDB entry sent (``fdb_used``: monotonic times; never: 300 s)."""
        now = time.monotonic()
        return {
            mac: now - self.fdb_used[mac] if mac in self.fdb_used else 300.0
            for mac in self.state(ifindex).fdbs
        }

    async def wireguard_peers(self) -> dict[PublicKey, WgPeerState]:
        self.peer_reads += 1
        return {
            k: WgPeerState(
                replace(p, endpoint=self.wg_learned.get(k, p.endpoint)),
                last_handshake=self.wg_handshakes.get(k),
                rx_bytes=self.wg_bytes.get(k, 0),
            )
            for k, p in self.wg_peers.items()
        }

    def start_monitor(
        self, ifindex: int, on_events: Callable[[list[KernelEvent] | None], None]
    ) -> None:
        self.monitors[ifindex] = on_events


def _event(ifindex: int, action: Action, entry: RouteEntry | NeighEntry | FdbEntry) -> KernelEvent:
    """The notification the kernel sends for one of our entries."""
    if isinstance(entry, RouteEntry):
        msg: RouteMessage | NeighMessage | FdbMessage = RouteMessage(
            action, entry.dst, entry.via, ifindex, table=254, protocol=0, scope=0, type=1,
            flags=0, priority=0,
        )  # fmt: skip
    elif isinstance(entry, NeighEntry):
        msg = NeighMessage(action, ifindex, entry.ip, entry.mac, state=0x80, flags=0)
    else:
        msg = FdbMessage(action, ifindex, entry.mac, entry.dst, state=0x80, flags=0x02)
    return KernelEvent(msg, owned=True)
