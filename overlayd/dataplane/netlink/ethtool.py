"""TX checksum offload of an interface, with the legacy SIOCETHTOOL ioctl (``ethtool -k/-K``).

``link.Links`` turns it off on the VXLAN device. OS errors become ``KernelError``.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from typing import Final

from overlayd.values.errors import KernelError

# linux/sockios.h, linux/ethtool.h: the legacy get/set of TX checksum offload. The kernel
# maps ETHTOOL_STXCSUM onto the generic feature flags (NETIF_F_CSUM_MASK), so it is the
# same switch as ``ethtool -K dev tx off``.
SIOCETHTOOL: Final = 0x8946
ETHTOOL_GTXCSUM: Final = 0x16
ETHTOOL_STXCSUM: Final = 0x17
_ETHTOOL_VALUE = struct.Struct("=II")  # struct ethtool_value { u32 cmd; u32 data; }
_IFREQ = struct.Struct("16sP16x")  # struct ifreq: name, then ifr_data pointer; 40 bytes


def _ethtool_value(ifname: str, cmd: int, data: int = 0) -> int:
    """Run a SIOCETHTOOL ``ethtool_value`` command on ``ifname``; returns ``data``."""
    value = ctypes.create_string_buffer(_ETHTOOL_VALUE.pack(cmd, data), _ETHTOOL_VALUE.size)
    ifreq = _IFREQ.pack(ifname.encode(), ctypes.addressof(value))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError as exc:
        raise KernelError(f"ethtool command {cmd:#x} on {ifname} failed: {exc.strerror}") from exc
    return int(_ETHTOOL_VALUE.unpack(value.raw)[1])


def tx_checksum_offload(ifname: str) -> bool:
    """Whether TX checksum offload is on for ``ifname`` (``ethtool -k``: tx-checksumming)."""
    return bool(_ethtool_value(ifname, ETHTOOL_GTXCSUM))


def disable_tx_checksum_offload(ifname: str) -> None:
    """Turn TX checksum offload off on ``ifname``.

    With offloaded checksums, VXLAN traffic that crosses NAT arrives with bad checksums
    on some kernels and is dropped until retransmits give up (the "63-second delay"
    seen with flannel and Calico); flannel turns TX/RX checksum offload off on its
    VXLAN device (flannel PR #1282) and so do we. Only TX matters: RX offload only
    verifies checksums.
    """
    _ethtool_value(ifname, ETHTOOL_STXCSUM, 0)
