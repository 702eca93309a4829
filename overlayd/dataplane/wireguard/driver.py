"""The interface both WireGuard drivers implement, and the factory choosing one."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from overlayd.dataplane.netlink.link import Links
from overlayd.dataplane.wireguard.device_link import DeviceLink
from overlayd.dataplane.wireguard.genl import GenericNetlink
from overlayd.dataplane.wireguard.kernel import WG_GENL_NAME, KernelWireGuard
from overlayd.dataplane.wireguard.uapi import UAPI_DIR
from overlayd.dataplane.wireguard.userspace import WireGuardGo
from overlayd.values.wireguard import PeerChanges, WgDeviceConfig, WgPeerConfig, WgState


class Driver(Protocol):
    """One WireGuard device in the caller's network namespace.

    Every method raises ``WireGuardError`` on failure; the reconcile loop retries later.
    """

    ifname: str
    kind: str  # "kernel" or "userspace"

    def ensure_device(self, device: WgDeviceConfig) -> bool:
        """Make the device exist and carry ``device``'s settings; True if (re)created."""
        ...

    def read(self) -> WgState:
        """The device's actual configuration and peers, read back from it."""
        ...

    def apply(self, peers: Iterable[WgPeerConfig], *, allow_delete: bool = True) -> PeerChanges:
        """Make the device's peers equal ``peers``, per peer; return what was changed."""
        ...

    def close(self, *, stop: bool = False) -> None:
        """Release the driver; the device stays up unless ``stop``."""
        ...


@dataclass(frozen=True)
class SyncResult:
    """What one ``sync`` did: whether the device is new, and the peer changes applied."""

    recreated: bool
    changes: PeerChanges


def sync(
    driver: Driver,
    device: WgDeviceConfig,
    peers: Iterable[WgPeerConfig],
    *,
    allow_delete: bool = True,
) -> SyncResult:
    """One reconcile pass: ensure the device (restarting wireguard-go if it died), then
    apply the peers. When ``recreated``, the caller re-adds addresses and routes."""
    recreated = driver.ensure_device(device)
    return SyncResult(recreated, driver.apply(peers, allow_delete=allow_delete))


def open_driver(
    ifname: str,
    links: Links,
    *,
    prefer_kernel: bool = True,
    socket_dir: Path = UAPI_DIR,
    log_path: Path | None = None,
    on_exit: Callable[[], None] | None = None,
) -> Driver:
    """The driver for ``ifname``: kernel WireGuard when the kernel has it, else wireguard-go.

    What already runs wins, so a restarted daemon keeps its data plane: a wireguard-go
    answering on the device's socket is adopted, an existing kernel device is used. Else
    kernel support is detected by creating the device (the kernel loads the module on
    demand; EOPNOTSUPP means there is none). ``links`` is the data plane's link manager,
    used from the calling thread only. ``on_exit`` and ``log_path`` concern wireguard-go
    only.
    """
    device = DeviceLink(links, ifname)
    candidate = WireGuardGo(device, socket_dir=socket_dir, log_path=log_path, on_exit=on_exit)
    if candidate.running():
        return candidate
    link = device.find()
    if link is not None and link.kind == "wireguard":
        return KernelWireGuard(device, GenericNetlink(WG_GENL_NAME))
    if link is None and prefer_kernel and device.create_kernel():
        return KernelWireGuard(device, GenericNetlink(WG_GENL_NAME), created=True)
    return candidate
