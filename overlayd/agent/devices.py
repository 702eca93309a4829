"""The devices the daemon owns entries on, and their set-up for the lease it holds.

Owns: the VXLAN and WireGuard devices (where each is, what we want on it, the mirror of
what it has), creating or adjusting them for the held lease (device, overlay address,
MTU, WireGuard key and port), the masquerade rules, the subnet file the CNI plugin reads,
and following each device's kernel notifications. Planning and diffing are the reconcile
pass's (overlayd/agent/reconcile.py); this module only says where things go.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from typing import Protocol

from overlayd.agent.host import Host
from overlayd.agent.options import DaemonOptions
from overlayd.agent.status import HealthServer
from overlayd.agent.status_docs import Status
from overlayd.dataplane.api import DataPlaneApi, Underlay, VxlanSpec
from overlayd.dataplane.masq import MasqTable
from overlayd.dataplane.mirror import KernelMirror
from overlayd.dataplane.netlink.monitor import KernelEvent
from overlayd.disk.node_key import NodeKey
from overlayd.disk.subnet_file import SubnetFile, write_subnet_file
from overlayd.store.lease_keeper import HeldLease
from overlayd.values.config import NetworkConfig
from overlayd.values.kernel_state import KernelState
from overlayd.values.wireguard import WgDeviceConfig, interface_name

log = logging.getLogger("overlayd")


class MarkDirty(Protocol):
    """The daemon's ``mark_dirty``: what the next reconcile pass must redo."""

    def __call__(self, *, dump: bool = False, device: bool = False, full: bool = False) -> None:
        """Wake the loop; ``dump``: read back, ``device``: set up again, ``full``: replan all."""


@dataclass
class Device:
    """A device whose entries we own: where it is, what we want on it, what it has."""

    name: str
    ifindex: int = 0
    desired: KernelState = field(default_factory=KernelState)
    mirror: KernelMirror = field(default_factory=KernelMirror)
    need_dump: bool = True


class Devices:
    """The VXLAN and WireGuard devices of ``cfg``'s backend on ``underlay``.

    ``mark_dirty(full=..., device=...)`` is the daemon's: kernel notifications that
    change the mirror replan in full, a wireguard-go that died sets the devices up again.
    """

    def __init__(
        self,
        opts: DaemonOptions,
        cfg: NetworkConfig,
        underlay: Underlay,
        node_id: str,
        dataplane: DataPlaneApi,
        host: Host,
        status: Status,
        health: HealthServer | None,
        mark_dirty: MarkDirty,
    ) -> None:
        self._opts, self._cfg, self._underlay, self._node_id = opts, cfg, underlay, node_id
        self._dp, self._host, self._status, self._health = dataplane, host, status, health
        self._mark_dirty = mark_dirty
        self.vxlan = Device("vxlan")
        self.wg = Device("wireguard")
        self.vxlan_spec: VxlanSpec | None = None
        self._masq = MasqTable(host.run_nft, host.read_nft)

    def used(self) -> list[Device]:
        """The devices the backend uses."""
        backend = self._cfg.backend
        pairs = ((self.vxlan, backend.uses_vxlan), (self.wg, backend.uses_wireguard))
        return [d for d, used in pairs if used]

    def mark_dump(self) -> None:
        """Read every device back at the next pass."""
        self.vxlan.need_dump = self.wg.need_dump = True

    async def dump_stale(self) -> None:
        """Read back the devices whose mirror cannot be trusted (new, recreated, overrun)."""
        for dev in self.used():
            if dev.need_dump:
                dev.need_dump = False
                dev.mirror.replace(await self._dp.dump(dev.ifindex), dev.desired)

    def entries(self) -> int:
        """How many entries our mirrors hold (``/status``)."""
        return sum(d.mirror.state.size() for d in (self.vxlan, self.wg))

    async def configure(self, held: HeldLease, key: NodeKey) -> None:
        """Devices, masquerade, subnet file and overlay listener for ``held``; ``key``:
        the node key the WireGuard device uses."""
        cfg, underlay, backend = self._cfg, self._underlay, self._cfg.backend
        # flannel puts the subnet's .0 on the device as a /32: routes to peers are onlink
        address = IPv4Interface(f"{held.record.overlay_ip}/32")
        if backend.uses_vxlan:
            spec = VxlanSpec(
                name=f"overlay.{backend.vni}",
                vni=backend.vni,
                port=backend.port,
                local=underlay.address,
                underlay_index=underlay.link.index,
                mac=held.record.vtep_mac,
                mtu=cfg.vxlan_mtu(underlay.link.mtu),
            )
            self._attach(self.vxlan, await self._dp.ensure_device(spec, address), False)
            self.vxlan_spec = spec
        if backend.uses_wireguard:
            await self._configure_wireguard(address, key)
        masq = self._opts.ip_masq
        if masq and await asyncio.to_thread(self._masq.apply, cfg.network, held.record.subnet):
            log.info("masquerade rules for %s written", held.record.subnet)
        if self._status.subnet != held.record.subnet:
            self._write_subnet_file(held)
        if self._health is not None:  # --healthz-ip overlay: the address is on the device now
            await self._health.follow_overlay(held.record.overlay_ip, cfg.network)

    async def _configure_wireguard(self, address: IPv4Interface, key: NodeKey) -> None:
        loop = asyncio.get_running_loop()
        device = WgDeviceConfig(
            private_key=key.private,
            listen_port=self._cfg.backend.listen_port,
            mtu=self._cfg.wireguard_mtu(self._underlay.link.mtu),
        )

        def wireguard_go_died() -> None:  # called on the driver's watcher thread
            loop.call_soon_threadsafe(lambda: self._mark_dirty(device=True))

        ifindex, created = await self._dp.ensure_wireguard(
            interface_name(self._node_id),
            device,
            address,
            self._opts.state_dir / "wireguard-go.log",
            wireguard_go_died,
        )
        self._attach(self.wg, ifindex, created)

    def _write_subnet_file(self, held: HeldLease) -> None:
        cfg = self._cfg
        mtu = cfg.subnet_mtu(self._underlay.link.mtu)
        content = SubnetFile(
            network=cfg.network,
            subnet=IPv4Interface(f"{held.record.subnet.network_address + 1}/{cfg.subnet_len}"),
            mtu=mtu,
            ipmasq=self._opts.ip_masq,
        )
        write_subnet_file(self._opts.subnet_file, content)
        log.info("subnet file %s: subnet %s, mtu %d", self._opts.subnet_file, content.subnet, mtu)
        self._status.subnet = held.record.subnet

    def _attach(self, dev: Device, ifindex: int, recreated: bool) -> None:
        """Follow ``dev`` at ``ifindex``; read it back when it is new or was recreated."""
        if ifindex != dev.ifindex or recreated:
            dev.ifindex = ifindex
            dev.need_dump = True
            self._dp.start_monitor(ifindex, lambda events: self._on_kernel_events(dev, events))

    def _on_kernel_events(self, dev: Device, events: list[KernelEvent] | None) -> None:
        """Called on the event loop with kernel notifications for ``dev``.

        None means notifications were lost (socket overrun): read everything back.
        """
        if events is None:
            dev.need_dump = True
            self._mark_dirty(full=True)
            return
        changed = False
        for ev in events:
            changed |= dev.mirror.absorb(ev, dev.desired)
        if changed:
            self._mark_dirty(full=True)
