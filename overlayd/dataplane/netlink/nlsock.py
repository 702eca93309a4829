"""Opening overlayd's raw rtnetlink sockets, and the SOL_NETLINK options they turn on.

Shared by ``rtnl.Rtnl`` (requests and dumps) and ``monitor.Monitor`` (notifications). The
option numbers are netlink(7)'s, for any netlink family. Errors become ``KernelError``.
"""

from __future__ import annotations

import socket
from typing import Final

from overlayd.values.errors import KernelError

# Not exported by Python's socket module (linux/socket.h, linux/netlink.h, rtnetlink.h).
SOL_NETLINK: Final = 270
NETLINK_ADD_MEMBERSHIP: Final = 1
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
NETLINK_GET_STRICT_CHK: Final = 12
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33
RTNLGRP_NEIGH: Final = 3
RTNLGRP_IPV4_ROUTE: Final = 7

RECV_SIZE: Final = 1 << 20
"""Bytes of the receive buffer each reader keeps: the largest read the kernel hands over."""


def open_socket(rcvbuf: int, sndbuf: int) -> socket.socket:
    """A bound NETLINK_ROUTE socket with the given buffer sizes; ``KernelError`` if not."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        # FORCE variants ignore net.core.[rw]mem_max but need CAP_NET_ADMIN; fall back
        # to the capped ones so an unprivileged dump still works.
        for force, plain, size in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
        sock.bind((0, 0))
    except OSError as exc:
        sock.close()
        raise KernelError(f"cannot open rtnetlink socket: {exc.strerror}") from exc
    return sock


def setopt(sock: socket.socket, opt: int) -> bool:
    """Turn on a SOL_NETLINK option; False if this kernel does not know it."""
    try:
        sock.setsockopt(SOL_NETLINK, opt, 1)
    except OSError:
        return False
    return True
