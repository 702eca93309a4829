"""The VXLAN data plane as the daemon sees it: async calls run on one netlink thread.

Netlink sockets are not thread-safe and their calls block, so every
link/route/neighbour operation runs on a single dedicated worker thread; the
notification monitor has its own thread and hands batches back to the event loop.

The WireGuard drivers (overlayd/dataplane/wireguard) are imported when the first WireGuard
device is set up: a plain VXLAN daemon never loads them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Interface
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from overlayd.dataplane.netlink.link import LinkAction, Links, Underlay, VxlanSpec
from overlayd.dataplane.netlink.monitor import KernelEvent, Monitor, MonitorEvent
from overlayd.dataplane.netlink.rtnl import ApplyResult, Rtnl
from overlayd.values.errors import WireGuardError
from overlayd.values.kernel_state import Changes, KernelState, MacAddress
from overlayd.values.keys import PublicKey
from overlayd.values.wireguard import (
    PeerChanges,
    WgDeviceConfig,
    WgPeerConfig,
    WgPeerState,
)

if TYPE_CHECKING:
    from overlayd.dataplane.wireguard.driver import Driver

log = logging.getLogger("overlayd.dataplane")
T = TypeVar("T")

__all__ = ["DataPlane", "DataPlaneApi", "Underlay", "VxlanSpec"]


class DataPlaneApi(Protocol):
    """Exactly what the daemon calls on its data plane: ``DataPlane`` below, or a fake in
    component tests (tests/component/fake_dataplane.py). Closing is the owner's business
    (the composition root), not the daemon's."""

    async def underlay(self, iface: str | None) -> Underlay:
        """The underlay interface (name or address; None: the default route's)."""
        ...

    async def ensure_device(self, spec: VxlanSpec, address: IPv4Interface) -> int: ...

    async def ensure_wireguard(
        self,
        ifname: str,
        device: WgDeviceConfig,
        address: IPv4Interface,
        log_path: Path,
        on_exit: Callable[[], None],
    ) -> tuple[int, bool]: ...

    async def apply_wireguard_peers(
        self, peers: Iterable[WgPeerConfig], *, allow_delete: bool
    ) -> PeerChanges: ...

    async def dump(self, ifindex: int) -> KernelState:
        """What the device ``ifindex`` holds of the kinds we own."""
        ...

    async def apply(self, ifindex: int, changes: Changes) -> ApplyResult: ...

    async def fdb_idle(self, ifindex: int) -> Mapping[MacAddress, float]:
        """Per FDB entry of ours on ``ifindex``, seconds since it last forwarded a frame."""
        ...

    async def wireguard_peers(self) -> Mapping[PublicKey, WgPeerState]:
        """The WireGuard device's peers as read back: counters, handshake, endpoint."""
        ...

    def start_monitor(
        self, ifindex: int, on_events: Callable[[list[KernelEvent] | None], None]
    ) -> None: ...


class DataPlane:
    """Owns the netlink sockets of one daemon (in the process's network namespace)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._links: Links | None = None
        self._rtnl: Rtnl | None = None
        self._monitors: dict[int, Monitor] = {}
        self._wireguard: Driver | None = None

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _l(self) -> Links:
        if self._links is None:
            self._links = Links()
        return self._links

    def _r(self) -> Rtnl:
        if self._rtnl is None:
            self._rtnl = Rtnl()
        return self._rtnl

    async def underlay(self, iface: str | None) -> Underlay:
        return await self._on_thread(lambda: self._l().resolve_underlay(iface))

    async def ensure_device(self, spec: VxlanSpec, address: IPv4Interface) -> int:
        """Create or fix the VXLAN device and its address; returns its ifindex."""

        def work() -> int:
            links = self._l()
            ensured = links.ensure_vxlan(spec)
            if ensured.action is not LinkAction.UNCHANGED:
                fixed = f" ({', '.join(ensured.fixed)})" if ensured.fixed else ""
                log.info("device %s %s%s", spec.name, ensured.action.value, fixed)
            if links.set_address(ensured.link.index, address):
                log.info("device %s address %s", spec.name, address)
            return ensured.link.index

        return await self._on_thread(work)

    async def ensure_wireguard(
        self,
        ifname: str,
        device: WgDeviceConfig,
        address: IPv4Interface,
        log_path: Path,
        on_exit: Callable[[], None],
    ) -> tuple[int, bool]:
        """Create or adopt the WireGuard device (kernel, else wireguard-go) with its address.

        Returns its ifindex and whether it was (re)created, which drops its routes.
        ``on_exit`` is called (on another thread) when wireguard-go dies.
        """

        def work() -> tuple[int, bool]:
            if self._wireguard is None:
                from overlayd.dataplane.wireguard.driver import open_driver  # see the docstring

                self._wireguard = open_driver(ifname, self._l(), log_path=log_path, on_exit=on_exit)
                log.info("WireGuard device %s: %s driver", ifname, self._wireguard.kind)
            created = self._wireguard.ensure_device(device)
            if created:
                log.info("WireGuard device %s (re)created", ifname)
            links = self._l()
            index = links.get(ifname).index
            if links.set_address(index, address):
                log.info("device %s address %s", ifname, address)
            return index, created

        return await self._on_thread(work)

    async def apply_wireguard_peers(
        self, peers: Iterable[WgPeerConfig], *, allow_delete: bool
    ) -> PeerChanges:
        """Make the WireGuard device's peers ``peers``, per peer (others stay untouched)."""
        driver = self._wireguard
        if driver is None:
            raise WireGuardError("the WireGuard device is not set up yet")
        return await self._on_thread(lambda: driver.apply(peers, allow_delete=allow_delete))

    async def dump(self, ifindex: int) -> KernelState:
        return await self._on_thread(lambda: self._r().dump(ifindex))

    async def apply(self, ifindex: int, changes: Changes) -> ApplyResult:
        return await self._on_thread(lambda: self._r().apply(ifindex, changes))

    async def fdb_idle(self, ifindex: int) -> Mapping[MacAddress, float]:
        return await self._on_thread(lambda: self._r().fdb_idle(ifindex))

    async def wireguard_peers(self) -> Mapping[PublicKey, WgPeerState]:
        driver = self._wireguard
        if driver is None:
            return {}
        return await self._on_thread(lambda: driver.read().peers)

    def start_monitor(
        self, ifindex: int, on_events: Callable[[list[KernelEvent] | None], None]
    ) -> None:
        """Follow notifications for ``ifindex``; ``on_events`` runs on the event loop.

        It gets each burst of events, or None when notifications were lost.
        """
        loop = asyncio.get_running_loop()

        def deliver(events: list[MonitorEvent]) -> None:
            mine = [e for e in events if isinstance(e, KernelEvent)]
            lost = len(mine) != len(events)
            loop.call_soon_threadsafe(on_events, None if lost else mine)

        if ifindex in self._monitors:
            return
        self._monitors[ifindex] = Monitor(ifindex, deliver)
        self._monitors[ifindex].start()

    def close(self) -> None:
        for monitor in self._monitors.values():
            monitor.stop()
        self._pool.shutdown(wait=True)
        if self._wireguard is not None:
            self._wireguard.close()  # wireguard-go keeps running: the data plane stays up
        for sock in (self._links, self._rtnl):
            if sock is not None:
                sock.close()
