"""WireGuard for overlayd: pure config/state model and per-peer diff, and two drivers
(kernel over generic netlink, userspace wireguard-go over its UAPI socket) behind one
``Driver`` interface chosen by ``open_driver``."""

from overlayd.wireguard.driver import Driver, SyncResult, open_driver, sync
from overlayd.wireguard.kernel import KernelWireGuard
from overlayd.wireguard.model import (
    DEFAULT_LISTEN_PORT,
    DeviceUpdate,
    Endpoint,
    PeerChanges,
    PresharedKey,
    WgDeviceConfig,
    WgPeerConfig,
    WgPeerState,
    WgState,
    device_update,
    diff_peers,
    interface_name,
)
from overlayd.wireguard.userspace import WireGuardGo

__all__ = [
    "DEFAULT_LISTEN_PORT",
    "DeviceUpdate",
    "Driver",
    "Endpoint",
    "KernelWireGuard",
    "PeerChanges",
    "PresharedKey",
    "SyncResult",
    "WgDeviceConfig",
    "WgPeerConfig",
    "WgPeerState",
    "WgState",
    "WireGuardGo",
    "device_update",
    "diff_peers",
    "interface_name",
    "open_driver",
    "sync",
]
