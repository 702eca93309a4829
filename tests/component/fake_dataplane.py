"""A stateful in-memory data plane for component tests of the daemon (no root, no netlink).

It implements overlayd.dataplane.DataPlaneApi: each device (by ifindex) keeps its routes,
neighbours and FDB entries; ``dump`` answers from that state, ``apply`` changes it and is
recorded. Tests may put entries in beforehand (what a previous run left) with ``preload``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from overlayd.dataplane import Underlay, VxlanSpec
from overlayd.kernel_state import Changes, KernelState
from overlayd.keys import PublicKey
from overlayd.netlink.link import LinkInfo
from overlayd.netlink.rtnl import ApplyResult, KernelEvent
from overlayd.wireguard import PeerChanges, WgDeviceConfig, WgPeerConfig

UNDERLAY_INDEX = 2
VXLAN_INDEX = 10
WIREGUARD_INDEX = 11
UNDERLAY_ADDRESS = IPv4Address("192.0.2.1")


@dataclass
class FakeDataPlane:
    """Devices as dicts; ``applied`` lists every (ifindex, changes) the daemon applied."""

    underlay_address: IPv4Address = UNDERLAY_ADDRESS
    mtu: int = 1500
    devices: dict[int, KernelState] = field(default_factory=dict)
    addresses: dict[int, IPv4Interface] = field(default_factory=dict)
    specs: dict[int, VxlanSpec] = field(default_factory=dict)
    wg_peers: dict[PublicKey, WgPeerConfig] = field(default_factory=dict)
    applied: list[tuple[int, Changes]] = field(default_factory=list)
    monitored: set[int] = field(default_factory=set)

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
        return PeerChanges(add=add, update=update, remove=remove)

    async def dump(self, ifindex: int) -> KernelState:
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
        return ApplyResult(ok=len(changes))

    def start_monitor(
        self, ifindex: int, on_events: Callable[[list[KernelEvent] | None], None]
    ) -> None:
        self.monitored.add(ifindex)
